"""A call as the runner sees it, decoded from TryCall.models_call_json.

The JSON uses fn's field names (``id``, ``fn_id``, ``app_id``, ``image``,
``type``, ``timeout``, ``memory``, ``config``, ``headers``, ...); fields the
stub has no use for are ignored, as fn's runner ignores unknown ones.
``TryCall.extensions`` may carry what the LB asks of every call; the stub
reads ``fnlb.max_response_bytes`` (protos/fnlb/v1/runner.proto).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner_stub.errors import BadCall
from runner_stub.functions import FunctionSpec

__all__ = ["Call", "parse_call", "DEFAULT_MEMORY_MB", "MAX_RESPONSE_BYTES_KEY"]

DEFAULT_MEMORY_MB = 128  # fn's default when a function does not say
# TryCall.extensions key: the most response body bytes the LB will carry.
MAX_RESPONSE_BYTES_KEY = "fnlb.max_response_bytes"


@dataclass(frozen=True)
class Call:
    id: str
    fn_id: str = ""
    app_id: str = ""
    image: str = ""
    type: str = "sync"
    timeout_s: float = 0.0  # 0 = no limit
    memory_mb: int = DEFAULT_MEMORY_MB
    slot_key: str = ""  # what the warm cache is keyed by
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    spec: FunctionSpec = field(default_factory=FunctionSpec)
    max_response_bytes: int = 0  # 0 = the LB set no limit

    @property
    def detached(self) -> bool:
        return self.type == "detached"

    def header(self, name: str) -> str:
        """First value of a request header, matched case-insensitively ("" if absent)."""
        lname = name.lower()
        for key, values in self.headers.items():
            if key.lower() == lname and values:
                return values[0]
        return ""


def _str_field(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadCall(f"models_call_json: {key} must be a string, got {type(value).__name__}")
    return value


def _number_field(obj: Mapping[str, Any], key: str) -> float:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadCall(f"models_call_json: {key} must be a number >= 0, got {value!r}")
    return float(value)


def _config(obj: Mapping[str, Any]) -> dict[str, str]:
    raw = obj.get("config") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise BadCall("models_call_json: config must be an object of strings")
    return raw


def _headers(obj: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    raw = obj.get("headers") or {}
    if not isinstance(raw, dict):
        raise BadCall("models_call_json: headers must be an object")
    headers: dict[str, tuple[str, ...]] = {}
    for key, values in raw.items():
        # fn sends Go's http.Header (lists); a bare string is accepted too.
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise BadCall(f"models_call_json: headers.{key} must be a list of strings")
        headers[key] = tuple(values)
    return headers


def _max_response_bytes(extensions: Mapping[str, str]) -> int:
    raw = extensions.get(MAX_RESPONSE_BYTES_KEY, "")
    if raw == "":
        return 0
    if not (raw.isascii() and raw.isdigit()) or int(raw) == 0:
        raise BadCall(f"extensions: {MAX_RESPONSE_BYTES_KEY} must be a whole number of "
                      f"bytes > 0, got {raw!r}")
    return int(raw)


def parse_call(models_call_json: str, slot_hash_id: str = "",
               extensions: Mapping[str, str] | None = None) -> Call:
    """Decode and check one call; BadCall says which field is wrong.

    >>> parse_call('{"id": "c1", "fn_id": "f", "memory": 64}').memory_mb
    64
    """
    try:
        obj = json.loads(models_call_json)
    except ValueError as e:
        raise BadCall(f"models_call_json: invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadCall(f"models_call_json: must be a JSON object, got {type(obj).__name__}")
    call_type = _str_field(obj, "type") or "sync"
    if call_type not in ("sync", "detached"):
        raise BadCall(f"models_call_json: type must be sync or detached, got {call_type!r}")
    memory = obj.get("memory")
    if memory is None or memory == 0:
        memory = DEFAULT_MEMORY_MB
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 0:
        raise BadCall(f"models_call_json: memory must be a whole number of MiB, got {memory!r}")
    config = _config(obj)
    try:
        spec = FunctionSpec.from_config(config)
    except ValueError as e:
        raise BadCall(f"models_call_json: {e}") from None
    fn_id = _str_field(obj, "fn_id")
    image = _str_field(obj, "image")
    return Call(
        # fn's LB always sends an id; a made-up one keeps the logs joinable.
        id=_str_field(obj, "id") or "stub-" + secrets.token_hex(8),
        fn_id=fn_id,
        app_id=_str_field(obj, "app_id"),
        image=image,
        type=call_type,
        timeout_s=_number_field(obj, "timeout"),
        memory_mb=memory,
        slot_key=slot_hash_id or fn_id or image or "anonymous",
        headers=_headers(obj),
        spec=spec,
        max_response_bytes=_max_response_bytes(extensions or {}),
    )
