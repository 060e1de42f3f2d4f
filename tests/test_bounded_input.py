"""Bounded input at the front door: build_call's refusals, each naming the field and limit.

The wire behaviour (malformed bytes, the receive limit, the stream header
deadline) is tested against a real `fnlb serve` in test_bounded_input_e2e.py.
"""

from __future__ import annotations

import logging
import time

import pytest

from fnlb.agent import Agent
from fnlb.config import REQUEST_OVERHEAD_BYTES, LBConfig
from fnlb.errors import ClientCanceled, ConfigError, InvalidRequest
from fnlb.front import (
    MAX_KEY_BYTES,
    MAX_MAP_ENTRIES,
    MAX_VALUE_BYTES,
    Throttled,
    build_call,
)
from fnlb.metrics import Metrics
from fnlb.v1 import lb_pb2
from tests.helpers import sample

KiB = 1024


def req(**kw: object) -> lb_pb2.InvokeRequest:
    kw.setdefault("fn_id", "f")
    return lb_pb2.InvokeRequest(**kw)  # type: ignore[arg-type]


def refusal(r: lb_pb2.InvokeRequest, body: bytes = b"", max_body: int = 1 << 20,
            max_request: int | None = None) -> str:
    with pytest.raises(InvalidRequest) as e:
        build_call(r, body, max_body, max_request_bytes=max_request)
    return str(e.value)


@pytest.mark.parametrize(("field", "value"), [
    ("fn_id", "f\x7f"),           # DEL
    ("fn_id", "\u202efn"),        # right-to-left override
    ("fn_id", "f\u200bn"),        # zero-width space
    ("fn_id", "f\x1bn"),          # escape (a terminal control sequence)
    ("fn_id", "f n"),             # inner space
    ("app_id", "a\u202e"),
    ("app_id", "a\nb"),
    ("call_id", "c\x00"),
    ("image", "img\r\nX: y"),
])
def test_ids_outside_the_pattern_are_refused_naming_the_field(field: str, value: str) -> None:
    msg = refusal(req(**{field: value}))
    assert msg.startswith(f"{field}: character U+") and "[!-~]" in msg


@pytest.mark.parametrize("fn_id", ["f", "my-fn", "01J9ZQ3X7Y", "app/fn:v1.2_x@sha=1~", "x" * 255])
def test_ids_inside_the_pattern_pass(fn_id: str) -> None:
    assert build_call(req(fn_id=fn_id, app_id="a.b-c"), b"", 1024).model.fn_id == fn_id


def test_an_overlong_id_names_the_limit() -> None:
    assert refusal(req(fn_id="x" * 256)) == "fn_id: 256 characters, at most 255"
    assert refusal(req(call_id="c" * 129)) == "call_id: 129 characters, at most 128"


def test_an_unknown_call_type_is_refused_not_run_as_sync() -> None:
    r = req()
    r.type = 7  # type: ignore[assignment]  # an open proto3 enum: the wire may carry any int
    assert refusal(r) == "type: unknown CallType 7 (SYNC=0 or DETACHED=1)"
    assert build_call(req(type=lb_pb2.DETACHED), b"", 1024).model.type == "detached"


@pytest.mark.parametrize("field", ["config", "headers"])
def test_map_bounds_name_the_field_and_the_limit(field: str) -> None:
    ok = {f"k{i}": "v" for i in range(MAX_MAP_ENTRIES)}
    build_call(req(**{field: ok}), b"", 1024)  # the limits themselves pass
    build_call(req(**{field: {"k" * MAX_KEY_BYTES: "v" * MAX_VALUE_BYTES}}), b"", 1024)

    too_many = {f"k{i}": "v" for i in range(MAX_MAP_ENTRIES + 1)}
    assert refusal(req(**{field: too_many})) == f"{field}: 65 entries, at most 64"
    msg = refusal(req(**{field: {"k" * (MAX_KEY_BYTES + 1): "v"}}))
    assert msg.startswith(f"{field}: key ") and msg.endswith("257 bytes, at most 256")
    # Bytes, not characters: 2,049 two-byte characters are 4,098 bytes.
    msg = refusal(req(**{field: {"k": "é" * 2049}}))
    assert msg == f"{field}['k']: value of 4098 bytes, at most 4096"


@pytest.mark.parametrize(("key", "value"), [("X-A", "1\r\nX-Injected: 1"), ("X\nB", "v"),
                                            ("X-C", "\x7f")])
def test_header_control_characters_are_refused(key: str, value: str) -> None:
    assert "control characters are not allowed" in refusal(req(headers={key: value}))
    build_call(req(headers={"X-Tab": "a\tb"}), b"", 1024)  # a tab is allowed in a value


def test_max_request_bytes_bounds_body_config_headers_and_ids_together() -> None:
    config = {f"c{i:02}": "v" * 4000 for i in range(10)}    # 40,030 bytes
    headers = {f"h{i:02}": "v" * 4000 for i in range(5)}    # 20,015 bytes
    body = b"b" * 5000
    r = req(fn_id="fn", app_id="app", config=config, headers=headers)
    assert build_call(r, body, 8 * KiB, max_request_bytes=65_050).model.fn_id == "fn"
    msg = refusal(r, body, 8 * KiB, max_request=65_049)
    assert msg == ("request: 65050 bytes (body 5000, config 40030, headers 20015, ids 5) "
                   "exceeds the limit of 65049 bytes (--max-request-bytes)")


def test_the_default_request_limit_is_the_body_limit_plus_one_mib() -> None:
    cfg = LBConfig(runners=("127.0.0.1:1",), max_body_bytes=1000)
    assert cfg.request_limit == 1000 + REQUEST_OVERHEAD_BYTES == 1000 + (1 << 20)
    assert LBConfig(max_body_bytes=1000, max_request_bytes=5000).request_limit == 5000
    with pytest.raises(ConfigError, match="--max-request-bytes .* at least --max-body-bytes"):
        LBConfig(max_body_bytes=1000, max_request_bytes=999)
    # 64 config + 64 header entries at their largest and 4 ids fit the default.
    assert 2 * MAX_MAP_ENTRIES * (MAX_KEY_BYTES + MAX_VALUE_BYTES) + 4 * 1024 \
        < REQUEST_OVERHEAD_BYTES


def test_the_body_limit_still_names_its_own_flag() -> None:
    msg = refusal(req(), b"x" * 11, max_body=10)
    assert msg.startswith("body: 11 bytes exceeds the limit of 10 bytes (--max-body-bytes)")


def test_throttled_logs_one_line_per_interval_with_the_count_left_out(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    throttled = Throttled(logging.getLogger("test.throttled"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.throttled"):
        logged = [throttled.warning("malformed request", error="e") for _ in range(50)]
        now[0] += 10.0
        logged.append(throttled.warning("malformed request", error="e"))
    assert logged == [True] + [False] * 49 + [True]
    records = [r for r in caplog.records if r.name == "test.throttled"]
    assert [r.levelname for r in records] == ["WARNING", "WARNING"]
    assert [r.kv["suppressed"] for r in records] == [0, 49]  # type: ignore[attr-defined]


class _CancelAfterDeadline:
    """A placer whose try saw its stream cancelled once the client deadline had passed."""

    async def place_call(self, pool: object, call: object, deadline: float | None) -> object:
        raise ClientCanceled()


async def test_a_cancel_after_the_client_deadline_counts_as_a_timeout() -> None:
    m = Metrics()
    agent = Agent(pool=None, placer=_CancelAfterDeadline(), metrics=m)  # type: ignore[arg-type]

    call = build_call(req(), b"", 1024)
    with pytest.raises(ClientCanceled):
        await agent.submit(call, deadline=time.monotonic() - 0.5)
    with pytest.raises(ClientCanceled):
        await agent.submit(build_call(req(), b"", 1024), deadline=time.monotonic() + 60)
    assert sample(m, "fnlb_calls_completed_total", {"call_status": "timeouts"}) == 1
    assert sample(m, "fnlb_calls_completed_total", {"call_status": "canceled"}) == 1
