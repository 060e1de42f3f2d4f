from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC: _ClassVar[CallType]
    DETACHED: _ClassVar[CallType]
SYNC: CallType
DETACHED: CallType

class InvokeRequest(_message.Message):
    __slots__ = ("fn_id", "app_id", "body", "type", "timeout_s", "memory_mb", "config", "headers", "image", "call_id", "idle_timeout_s", "idempotent")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FN_ID_FIELD_NUMBER: _ClassVar[int]
    APP_ID_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    fn_id: str
    app_id: str
    body: bytes
    type: CallType
    timeout_s: int
    memory_mb: int
    config: _containers.ScalarMap[str, str]
    headers: _containers.ScalarMap[str, str]
    image: str
    call_id: str
    idle_timeout_s: int
    idempotent: bool
    def __init__(self, fn_id: _Optional[str] = ..., app_id: _Optional[str] = ..., body: _Optional[bytes] = ..., type: _Optional[_Union[CallType, str]] = ..., timeout_s: _Optional[int] = ..., memory_mb: _Optional[int] = ..., config: _Optional[_Mapping[str, str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., image: _Optional[str] = ..., call_id: _Optional[str] = ..., idle_timeout_s: _Optional[int] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class InvokeResponse(_message.Message):
    __slots__ = ("call_id", "status_code", "headers", "body", "runner", "attempts")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    RUNNER_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    status_code: int
    headers: _containers.ScalarMap[str, str]
    body: bytes
    runner: str
    attempts: int
    def __init__(self, call_id: _Optional[str] = ..., status_code: _Optional[int] = ..., headers: _Optional[_Mapping[str, str]] = ..., body: _Optional[bytes] = ..., runner: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class InvokeStreamRequest(_message.Message):
    __slots__ = ("request", "data")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    request: InvokeRequest
    data: bytes
    def __init__(self, request: _Optional[_Union[InvokeRequest, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InvokeStreamResponse(_message.Message):
    __slots__ = ("response", "data")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    response: InvokeResponse
    data: bytes
    def __init__(self, response: _Optional[_Union[InvokeResponse, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RunnerInfo(_message.Message):
    __slots__ = ("address", "state", "inflight", "runner_active", "slots_total", "slots_free", "last_error", "source", "last_status_at", "placed", "consecutive_failures", "protocol")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INFLIGHT_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LAST_STATUS_AT_FIELD_NUMBER: _ClassVar[int]
    PLACED_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    address: str
    state: str
    inflight: int
    runner_active: int
    slots_total: int
    slots_free: int
    last_error: str
    source: str
    last_status_at: str
    placed: int
    consecutive_failures: int
    protocol: str
    def __init__(self, address: _Optional[str] = ..., state: _Optional[str] = ..., inflight: _Optional[int] = ..., runner_active: _Optional[int] = ..., slots_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., last_error: _Optional[str] = ..., source: _Optional[str] = ..., last_status_at: _Optional[str] = ..., placed: _Optional[int] = ..., consecutive_failures: _Optional[int] = ..., protocol: _Optional[str] = ...) -> None: ...

class ListRunnersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunnersResponse(_message.Message):
    __slots__ = ("runners", "placer")
    RUNNERS_FIELD_NUMBER: _ClassVar[int]
    PLACER_FIELD_NUMBER: _ClassVar[int]
    runners: _containers.RepeatedCompositeFieldContainer[RunnerInfo]
    placer: str
    def __init__(self, runners: _Optional[_Iterable[_Union[RunnerInfo, _Mapping]]] = ..., placer: _Optional[str] = ...) -> None: ...

class AddRunnerRequest(_message.Message):
    __slots__ = ("address", "ttl_s")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    address: str
    ttl_s: int
    def __init__(self, address: _Optional[str] = ..., ttl_s: _Optional[int] = ...) -> None: ...

class AddRunnerResponse(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: bool
    def __init__(self, added: _Optional[bool] = ...) -> None: ...

class RemoveRunnerRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class RemoveRunnerResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class DrainRunnerRequest(_message.Message):
    __slots__ = ("address",)
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    address: str
    def __init__(self, address: _Optional[str] = ...) -> None: ...

class DrainRunnerResponse(_message.Message):
    __slots__ = ("draining",)
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    draining: bool
    def __init__(self, draining: _Optional[bool] = ...) -> None: ...
