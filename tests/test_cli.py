"""``fnlb`` command line in-process: which failures are the user's (exit 2) and which are bugs."""

from __future__ import annotations

from pathlib import Path

import pytest

import fnlb.tls
from fnlb.cli import build_parser, config_from_args, main
from fnlb.config import LBConfig
from fnlb.errors import ConfigError
from fnlb.metrics import Metrics
from fnlb.placers.chbl import DEFAULT_C, BoundedLoadHashPlacer
from fnlb.server import LBServer
from tests.fakes import FakePool


def fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``fnlb argv``; it must exit 2; its stderr."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    return err


def test_config_errors_exit_2_naming_the_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # TLSConfigError is a ConfigError: the CA directory has no CA in it.
    err = fails(["certs", "issue", "--ca", str(tmp_path), "--name", "r", "--san", "r.test",
                 "--out", str(tmp_path / "out")], capsys)
    assert err == f"fnlb: error: CA file {tmp_path / 'ca.crt'}: not found\n"
    # X.509 limits a common name to 64 characters; no files are written.
    err = fails(["certs", "init", "--out", str(tmp_path / "ca"), "--name", "a" * 65], capsys)
    assert err.startswith(f"fnlb: error: CA name {'a' * 65!r}: ") and "64" in err
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize(("argv", "needle"), [
    (["invoke", "--memory-mb", "-1", "f"], "argument --memory-mb: must be >= 0, got -1"),
    (["invoke", "--memory-mb", str(1 << 64), "f"], "argument --memory-mb: too large"),
    (["invoke", "f\udcff"], "argument FN_ID: not valid UTF-8"),
    (["invoke", "--config", "k=\udcff", "f"], "argument --config: not valid UTF-8"),
    (["runners", "--add", "\udcff:1"], "argument --add: not valid UTF-8"),
    (["serve", "--listen", "\udcff:0"], "argument --listen: not valid UTF-8"),
    (["certs", "init", "--out", ".", "--name", "ca\udcff"], "argument --name: not valid UTF-8"),
])
def test_input_protobuf_grpc_or_x509_would_refuse_is_a_usage_error(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert needle in fails(argv, capsys)


def test_a_bug_is_not_reported_as_a_user_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> tuple[Path, Path]:
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(fnlb.tls, "init_ca", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["certs", "init", "--out", str(tmp_path)])


async def test_chbl_c_from_flag_or_environment_reaches_the_placer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--admin-listen", "",
            "--runners", "127.0.0.1:1", "--placer", "chbl"]
    assert config(base).chbl_c == DEFAULT_C
    assert config([*base, "--chbl-c", "1.5"]).chbl_c == 1.5
    monkeypatch.setenv("FNLB_CHBL_C", "1.25")
    cfg = config(base)
    assert cfg.chbl_c == 1.25
    assert config([*base, "--chbl-c", "3"]).chbl_c == 3  # the flag wins
    async with LBServer(cfg, metrics=Metrics(), pool=FakePool([])) as lb:
        assert isinstance(lb.placer, BoundedLoadHashPlacer) and lb.placer.c == 1.25
    monkeypatch.setenv("FNLB_CHBL_C", "lots")
    assert "argument --chbl-c: expected a number, got 'lots'" in fails(base, capsys)
    monkeypatch.delenv("FNLB_CHBL_C")
    with pytest.raises(ConfigError, match=r"^--chbl-c must be >= 1, got 0.9$"):
        config([*base, "--chbl-c", "0.9"])


def config(argv: list[str]) -> LBConfig:
    cfg = config_from_args(build_parser().parse_args(argv))
    assert isinstance(cfg, LBConfig)
    return cfg
