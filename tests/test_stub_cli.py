"""Unit tests for the runner stub's flag and environment parsing (in process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fnlb.tls import init_ca, issue_cert
from runner_stub.cli import parse_config
from runner_stub.config import StubConfig


def test_defaults() -> None:
    assert parse_config([], environ={}) == StubConfig()


def test_flags() -> None:
    cfg = parse_config(["--listen", "[::1]:0", "--slots", "8", "--memory-mb", "2048",
                        "--nack-after-ms", "0", "--cold-start-ms", "50", "--warm-cache", "0",
                        "--max-body-bytes", "100", "--log-level", "DEBUG", "--runner-id", "r1",
                        "--drain-grace", "1m30s", "--fail-rate", "0.25", "--seed", "3",
                        "--crash-after", "2", "--hang-ms", "5", "--nack-delay-ms", "7"],
                       environ={})
    assert cfg == StubConfig(listen="[::1]:0", slots=8, memory_mb=2048, nack_after_ms=0,
                             cold_start_ms=50, warm_cache=0, max_body_bytes=100,
                             log_level="debug", runner_id="r1", drain_grace=90.0,
                             fail_rate=0.25, seed=3, crash_after=2, hang_ms=5, nack_delay_ms=7)


def test_env_vars_and_flag_precedence() -> None:
    env = {"RUNNER_STUB_SLOTS": "3", "RUNNER_STUB_DRAIN_GRACE": "250ms",
           "RUNNER_STUB_MEMORY_MB": "512", "RUNNER_STUB_RUNNER_ID": ""}
    cfg = parse_config(["--memory-mb", "64"], environ=env)
    assert (cfg.slots, cfg.drain_grace, cfg.memory_mb, cfg.runner_id) == (3, 0.25, 64, "")


@pytest.mark.parametrize(("argv", "env", "expect"), [
    (["--slots", "0"], {}, "--slots must be >= 1"),
    (["--slots", "abc"], {}, "argument --slots: expected a whole number"),
    (["--fail-rate", "2"], {}, "--fail-rate must be a fraction"),
    (["--fail-rate", "lots"], {}, "argument --fail-rate"),
    (["--drain-grace", "-1s"], {}, "argument --drain-grace"),
    (["--tls-key", "k"], {}, "missing --tls-cert, --tls-ca"),
    (["--log-level", "loud"], {}, "argument --log-level"),
    ([], {"RUNNER_STUB_SLOTS": "many"}, "argument --slots (from RUNNER_STUB_SLOTS='many')"),
    ([], {"RUNNER_STUB_WARM_CACHE": "-2"}, "--warm-cache must be >= 0"),
])
def test_bad_values_exit_2_naming_the_flag(argv: list[str], env: dict[str, str], expect: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_config(argv, environ=env)
    assert info.value.code == 2
    assert expect in capsys.readouterr().err


def test_certificate_from_another_ca_is_a_clear_startup_error(tmp_path: Path) -> None:
    init_ca(tmp_path / "a", name="ca-a")
    init_ca(tmp_path / "b", name="ca-b")
    issue_cert(tmp_path / "a", "runner", ["127.0.0.1"], tmp_path)
    r = subprocess.run([sys.executable, "-m", "runner_stub", "--listen", "127.0.0.1:0",
                        "--tls-cert", str(tmp_path / "runner.crt"),
                        "--tls-key", str(tmp_path / "runner.key"),
                        "--tls-ca", str(tmp_path / "b" / "ca.crt")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "runner-stub: error: certificate file" in r.stderr
    assert "not signed by the CA" in r.stderr and "Traceback" not in r.stderr
