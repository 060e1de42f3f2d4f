"""``fnlb`` command line in-process: which failures are the user's (exit 2) and which are bugs."""

from __future__ import annotations

from pathlib import Path

import pytest

import fnlb.tls
from fnlb.cli import main


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
