"""Fake functions, steered by the call's ``config`` map (all values are strings).

==============  ==============================================================
config key      effect
==============  ==============================================================
sleep_ms        hold the call this long before answering (cancellable)
status          the HTTP-like status the function answers (default 200)
response_size   answer this many bytes (``x`` repeated) instead of the echo
fail            non-empty: the function fails with this string as its error
                (``finished{success=false, errorCode=502, errorUser=true}``,
                no ``result_start``)
crash           non-empty: the runner process dies (exit 3) right after
                sending ``result_start`` -- a runner lost mid-call, on cue
==============  ==============================================================

With none of them the function echoes the request body with status 200.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass

from runner_stub.errors import FunctionFailed

__all__ = ["FunctionSpec", "FunctionResult", "run_function", "MAX_RESPONSE_SIZE"]

# A generous cap so a typo in response_size cannot eat the runner's memory.
MAX_RESPONSE_SIZE = 256 * 1024 * 1024


def _int_key(config: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"config.{key} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise ValueError(f"config.{key} must be in {low}..{high}, got {value}")
    return value


@dataclass(frozen=True)
class FunctionSpec:
    """What the fake function will do, decoded from the call's config."""

    sleep_ms: int = 0
    status: int = 200
    response_size: int | None = None  # None: echo the request body
    fail: str = ""
    crash: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, str]) -> FunctionSpec:
        """Decode and check the steering keys; unknown keys are the function's own config.

        Raises ValueError naming the key, e.g. ``config.sleep_ms must be an integer``.
        """
        size_given = config.get("response_size", "") != ""
        return cls(
            sleep_ms=_int_key(config, "sleep_ms", 0, 0, 24 * 3600 * 1000),
            status=_int_key(config, "status", 200, 100, 599),
            response_size=(_int_key(config, "response_size", 0, 0, MAX_RESPONSE_SIZE)
                           if size_given else None),
            fail=config.get("fail", ""),
            crash=config.get("crash", "") != "",
        )


@dataclass(frozen=True)
class FunctionResult:
    status: int
    content_type: str  # "" = none
    body: bytes


async def run_function(spec: FunctionSpec, body: bytes, content_type: str = "") -> FunctionResult:
    """Run the fake function on ``body``; raises FunctionFailed for ``fail``.

    Sleeping is an ``asyncio.sleep`` so cancelling the task (client gone, call
    timed out) stops the function right there.
    """
    if spec.sleep_ms:
        await asyncio.sleep(spec.sleep_ms / 1000)
    if spec.fail:
        raise FunctionFailed(spec.fail)
    if spec.response_size is not None:
        return FunctionResult(spec.status, "application/octet-stream", b"x" * spec.response_size)
    return FunctionResult(spec.status, content_type, body)
