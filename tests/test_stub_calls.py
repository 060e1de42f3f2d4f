"""Unit tests: models_call_json decoding, fake-function steering and stub settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fnlb.tls import init_ca, issue_cert
from runner_stub.calls import DEFAULT_MEMORY_MB, parse_call
from runner_stub.config import StubConfig, split_host_port
from runner_stub.errors import BadCall, ConfigError, FunctionFailed
from runner_stub.functions import FunctionSpec, run_function


def _json(**fields: Any) -> str:
    return json.dumps({"id": "c1", "fn_id": "f1", **fields})


def test_parse_call_reads_fn_fields() -> None:
    call = parse_call(_json(app_id="a", image="img", type="detached", memory=256, timeout=30,
                            config={"sleep_ms": "5"}, headers={"Content-Type": ["text/plain"]}),
                      slot_hash_id="abcd")
    assert (call.id, call.fn_id, call.app_id, call.image) == ("c1", "f1", "a", "img")
    assert call.detached and call.memory_mb == 256 and call.timeout_s == 30
    assert call.slot_key == "abcd"
    assert call.spec.sleep_ms == 5
    assert call.header("content-type") == "text/plain"


def test_parse_call_defaults() -> None:
    call = parse_call('{"fn_id": "f1"}')
    assert call.memory_mb == DEFAULT_MEMORY_MB and call.type == "sync"
    assert call.slot_key == "f1"  # no slot_hash_id: fall back to fn_id
    assert call.id.startswith("stub-")
    assert parse_call(_json(memory=0)).memory_mb == DEFAULT_MEMORY_MB


@pytest.mark.parametrize(("text", "message"), [
    ("{oops", "models_call_json: invalid JSON"),
    ("[]", "must be a JSON object, got list"),
    ('"str"', "must be a JSON object, got str"),
    (_json(memory="lots"), "memory must be a whole number of MiB"),
    (_json(memory=-1), "memory must be a whole number of MiB"),
    (_json(type="async"), "type must be sync or detached"),
    (_json(fn_id=7), "fn_id must be a string"),
    (_json(config={"a": 1}), "config must be an object of strings"),
    (_json(headers={"X": [1]}), "headers.X must be a list of strings"),
    (_json(timeout=-5), "timeout must be a number >= 0"),
    (_json(config={"status": "99"}), "config.status must be in 100..599"),
    (_json(config={"sleep_ms": "1.5"}), "config.sleep_ms must be an integer"),
    (_json(config={"response_size": "-1"}), "config.response_size must be in"),
])
def test_parse_call_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(BadCall, match="^models_call_json: ") as info:
        parse_call(text)
    assert message in str(info.value)


def test_function_spec_from_config() -> None:
    spec = FunctionSpec.from_config({"sleep_ms": "10", "status": "201", "response_size": "3",
                                     "fail": "", "crash": "", "other": "kept for the fn"})
    assert spec == FunctionSpec(sleep_ms=10, status=201, response_size=3, fail="", crash=False)
    assert FunctionSpec.from_config({"crash": "1"}).crash


async def test_run_function_echo_size_and_fail() -> None:
    echo = await run_function(FunctionSpec(), b"abc", "text/plain")
    assert (echo.status, echo.content_type, echo.body) == (200, "text/plain", b"abc")
    sized = await run_function(FunctionSpec(status=418, response_size=4), b"abc")
    assert (sized.status, sized.body) == (418, b"xxxx")
    with pytest.raises(FunctionFailed, match="boom"):
        await run_function(FunctionSpec(fail="boom"), b"")


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_host_port("[::1]:9190") == ("::1", 9190)
    for bad in ("nohost", ":80", "h:99999", "h:x", "::1:80"):
        with pytest.raises(ValueError):
            split_host_port(bad)


@pytest.mark.parametrize(("fields", "flag"), [
    ({"slots": 0}, "--slots"),
    ({"memory_mb": 0}, "--memory-mb"),
    ({"warm_cache": -1}, "--warm-cache"),
    ({"nack_after_ms": -1}, "--nack-after-ms"),
    ({"fail_rate": 1.5}, "--fail-rate"),
    ({"drain_grace": -1.0}, "--drain-grace"),
    ({"listen": "x"}, "--listen"),
    ({"log_level": "loud"}, "--log-level"),
    ({"tls_cert": "a", "tls_ca": "c"}, "--tls-key"),
])
def test_config_errors_name_the_flag(fields: dict[str, Any], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        StubConfig(**fields)


def test_config_reads_tls_files_and_names_the_bad_one(tmp_path: Path) -> None:
    ca_cert, _ = init_ca(tmp_path / "ca")
    cert, key = issue_cert(tmp_path / "ca", "runner", ["127.0.0.1"], tmp_path / "a")
    _, other_key = issue_cert(tmp_path / "ca", "other", ["127.0.0.1"], tmp_path / "b")
    files = {"tls_cert": str(cert), "tls_key": str(key), "tls_ca": str(ca_cert)}
    tls = StubConfig(**files).read_tls()
    assert tls is not None and tls.ca == ca_cert.read_bytes()
    assert b"PRIVATE KEY" in tls.key and b"CERTIFICATE" in tls.cert
    assert StubConfig().read_tls() is None

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem")
    for field, value, message in [
        ("tls_key", str(tmp_path / "nope"), "--tls-key: cannot read"),
        ("tls_key", str(other_key), "--tls-cert/--tls-key: key file"),
        ("tls_cert", str(garbage), "--tls-cert/--tls-key: certificate file"),
        ("tls_ca", str(garbage), "--tls-ca: "),
    ]:
        with pytest.raises(ConfigError, match=message):
            StubConfig(**{**files, field: value}).read_tls()
