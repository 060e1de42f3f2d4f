"""A call as the LB holds it: the fn call model (``fnlb.runnerpool.CallModel``), the
buffered body, the response sink."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property

from fnlb.phases import CallTimings
from fnlb.runnerpool import CallModel, ResponseSink

__all__ = ["LBCall", "BufferSink", "new_call_id"]


def new_call_id() -> str:
    # fn uses ULIDs; any unique, log-friendly id does the job here.
    return uuid.uuid4().hex


class BufferSink:
    """Collects the function's response in memory (the unary front door)."""

    __slots__ = ("status_code", "headers", "chunks", "started")

    def __init__(self) -> None:
        self.status_code = 0
        self.headers: list[tuple[str, str]] = []
        self.chunks: list[bytes] = []
        self.started = False

    def start(self, status_code: int, headers: Sequence[tuple[str, str]]) -> None:
        self.status_code = status_code
        self.headers = list(headers)
        self.started = True

    def write(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)

    def body(self) -> bytes:
        return b"".join(self.chunks)


class LBCall:
    """fn's RunnerCall for the LB: everything one placement needs, built once."""

    def __init__(self, model: CallModel, body: bytes, sink: ResponseSink | None = None,
                 extensions: Mapping[str, str] | None = None) -> None:
        self._model = model
        self._body = body
        self._sink: ResponseSink = sink if sink is not None else BufferSink()
        self._extensions = dict(extensions or {})
        self._stderr: list[bytes] = []
        self._user_exec: float | None = None
        self.attempts = 0
        # Monotonic start of the call at the LB (after the body was read).
        self.started_mono = time.monotonic()
        self.timings = CallTimings(self.started_mono)

    @property
    def model(self) -> CallModel:
        return self._model

    @cached_property
    def model_json(self) -> str:
        return self._model.to_json()

    @cached_property
    def slot_hash_id(self) -> str:
        return self._model.slot_key()

    @property
    def extensions(self) -> Mapping[str, str]:
        return self._extensions

    def request_body(self) -> bytes:
        return self._body

    @property
    def response(self) -> ResponseSink:
        return self._sink

    @property
    def stderr(self) -> list[bytes]:
        return self._stderr

    def add_user_execution_time(self, seconds: float) -> None:
        self._user_exec = (self._user_exec or 0.0) + seconds

    @property
    def user_execution_time(self) -> float | None:
        return self._user_exec
