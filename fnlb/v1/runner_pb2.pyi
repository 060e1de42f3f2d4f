from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TryCall(_message.Message):
    __slots__ = ("models_call_json", "slot_hash_id", "extensions", "ack")
    class ExtensionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODELS_CALL_JSON_FIELD_NUMBER: _ClassVar[int]
    SLOT_HASH_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENSIONS_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    models_call_json: str
    slot_hash_id: str
    extensions: _containers.ScalarMap[str, str]
    ack: bool
    def __init__(self, models_call_json: _Optional[str] = ..., slot_hash_id: _Optional[str] = ..., extensions: _Optional[_Mapping[str, str]] = ..., ack: _Optional[bool] = ...) -> None: ...

class CallAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DataFrame(_message.Message):
    __slots__ = ("data", "eof")
    DATA_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    eof: bool
    def __init__(self, data: _Optional[bytes] = ..., eof: _Optional[bool] = ...) -> None: ...

class HttpHeader(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class HttpRespMeta(_message.Message):
    __slots__ = ("status_code", "headers")
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    status_code: int
    headers: _containers.RepeatedCompositeFieldContainer[HttpHeader]
    def __init__(self, status_code: _Optional[int] = ..., headers: _Optional[_Iterable[_Union[HttpHeader, _Mapping]]] = ...) -> None: ...

class CallResultStart(_message.Message):
    __slots__ = ("http",)
    HTTP_FIELD_NUMBER: _ClassVar[int]
    http: HttpRespMeta
    def __init__(self, http: _Optional[_Union[HttpRespMeta, _Mapping]] = ...) -> None: ...

class CallFinished(_message.Message):
    __slots__ = ("success", "details", "errorCode", "errorStr", "createdAt", "startedAt", "completedAt", "schedulerDuration", "executionDuration", "errorUser", "image", "imagePullWaitDuration", "ctrPrepDuration", "ctrCreateDuration", "initStartTime", "memory_mb_total", "slots_free", "memory_mb_free")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    ERRORCODE_FIELD_NUMBER: _ClassVar[int]
    ERRORSTR_FIELD_NUMBER: _ClassVar[int]
    CREATEDAT_FIELD_NUMBER: _ClassVar[int]
    STARTEDAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETEDAT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERDURATION_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONDURATION_FIELD_NUMBER: _ClassVar[int]
    ERRORUSER_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGEPULLWAITDURATION_FIELD_NUMBER: _ClassVar[int]
    CTRPREPDURATION_FIELD_NUMBER: _ClassVar[int]
    CTRCREATEDURATION_FIELD_NUMBER: _ClassVar[int]
    INITSTARTTIME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FREE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    details: str
    errorCode: int
    errorStr: str
    createdAt: str
    startedAt: str
    completedAt: str
    schedulerDuration: int
    executionDuration: int
    errorUser: bool
    image: str
    imagePullWaitDuration: int
    ctrPrepDuration: int
    ctrCreateDuration: int
    initStartTime: int
    memory_mb_total: int
    slots_free: int
    memory_mb_free: int
    def __init__(self, success: _Optional[bool] = ..., details: _Optional[str] = ..., errorCode: _Optional[int] = ..., errorStr: _Optional[str] = ..., createdAt: _Optional[str] = ..., startedAt: _Optional[str] = ..., completedAt: _Optional[str] = ..., schedulerDuration: _Optional[int] = ..., executionDuration: _Optional[int] = ..., errorUser: _Optional[bool] = ..., image: _Optional[str] = ..., imagePullWaitDuration: _Optional[int] = ..., ctrPrepDuration: _Optional[int] = ..., ctrCreateDuration: _Optional[int] = ..., initStartTime: _Optional[int] = ..., memory_mb_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., memory_mb_free: _Optional[int] = ...) -> None: ...

class ClientMsg(_message.Message):
    __slots__ = ("data",)
    TRY_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: DataFrame
    def __init__(self, data: _Optional[_Union[DataFrame, _Mapping]] = ..., **kwargs) -> None: ...

class RunnerMsg(_message.Message):
    __slots__ = ("result_start", "data", "finished", "ack")
    RESULT_START_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    result_start: CallResultStart
    data: DataFrame
    finished: CallFinished
    ack: CallAck
    def __init__(self, result_start: _Optional[_Union[CallResultStart, _Mapping]] = ..., data: _Optional[_Union[DataFrame, _Mapping]] = ..., finished: _Optional[_Union[CallFinished, _Mapping]] = ..., ack: _Optional[_Union[CallAck, _Mapping]] = ...) -> None: ...

class RunnerStatus(_message.Message):
    __slots__ = ("active", "failed", "id", "details", "errorCode", "errorStr", "createdAt", "startedAt", "completedAt", "cached", "requestsReceived", "requestsHandled", "kdumpsOnDisk", "schedulerDuration", "executionDuration", "isNetworkDisabled", "customStatus", "imagePullWaitDuration", "ctrPrepDuration", "ctrCreateDuration", "initStartTime", "draining", "drained", "slots_total", "slots_free", "memory_mb_total", "memory_mb_free", "warm_slots", "runner_id", "requestsNacked", "features", "watch_heartbeat_ms", "watch_min_interval_ms")
    class CustomStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    ERRORCODE_FIELD_NUMBER: _ClassVar[int]
    ERRORSTR_FIELD_NUMBER: _ClassVar[int]
    CREATEDAT_FIELD_NUMBER: _ClassVar[int]
    STARTEDAT_FIELD_NUMBER: _ClassVar[int]
    COMPLETEDAT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    REQUESTSRECEIVED_FIELD_NUMBER: _ClassVar[int]
    REQUESTSHANDLED_FIELD_NUMBER: _ClassVar[int]
    KDUMPSONDISK_FIELD_NUMBER: _ClassVar[int]
    SCHEDULERDURATION_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONDURATION_FIELD_NUMBER: _ClassVar[int]
    ISNETWORKDISABLED_FIELD_NUMBER: _ClassVar[int]
    CUSTOMSTATUS_FIELD_NUMBER: _ClassVar[int]
    IMAGEPULLWAITDURATION_FIELD_NUMBER: _ClassVar[int]
    CTRPREPDURATION_FIELD_NUMBER: _ClassVar[int]
    CTRCREATEDURATION_FIELD_NUMBER: _ClassVar[int]
    INITSTARTTIME_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FREE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MB_FREE_FIELD_NUMBER: _ClassVar[int]
    WARM_SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTSNACKED_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    WATCH_HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    WATCH_MIN_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    active: int
    failed: bool
    id: str
    details: str
    errorCode: int
    errorStr: str
    createdAt: str
    startedAt: str
    completedAt: str
    cached: bool
    requestsReceived: int
    requestsHandled: int
    kdumpsOnDisk: int
    schedulerDuration: int
    executionDuration: int
    isNetworkDisabled: bool
    customStatus: _containers.ScalarMap[str, str]
    imagePullWaitDuration: int
    ctrPrepDuration: int
    ctrCreateDuration: int
    initStartTime: int
    draining: bool
    drained: bool
    slots_total: int
    slots_free: int
    memory_mb_total: int
    memory_mb_free: int
    warm_slots: _containers.RepeatedScalarFieldContainer[str]
    runner_id: str
    requestsNacked: int
    features: _containers.RepeatedScalarFieldContainer[str]
    watch_heartbeat_ms: int
    watch_min_interval_ms: int
    def __init__(self, active: _Optional[int] = ..., failed: _Optional[bool] = ..., id: _Optional[str] = ..., details: _Optional[str] = ..., errorCode: _Optional[int] = ..., errorStr: _Optional[str] = ..., createdAt: _Optional[str] = ..., startedAt: _Optional[str] = ..., completedAt: _Optional[str] = ..., cached: _Optional[bool] = ..., requestsReceived: _Optional[int] = ..., requestsHandled: _Optional[int] = ..., kdumpsOnDisk: _Optional[int] = ..., schedulerDuration: _Optional[int] = ..., executionDuration: _Optional[int] = ..., isNetworkDisabled: _Optional[bool] = ..., customStatus: _Optional[_Mapping[str, str]] = ..., imagePullWaitDuration: _Optional[int] = ..., ctrPrepDuration: _Optional[int] = ..., ctrCreateDuration: _Optional[int] = ..., initStartTime: _Optional[int] = ..., draining: _Optional[bool] = ..., drained: _Optional[bool] = ..., slots_total: _Optional[int] = ..., slots_free: _Optional[int] = ..., memory_mb_total: _Optional[int] = ..., memory_mb_free: _Optional[int] = ..., warm_slots: _Optional[_Iterable[str]] = ..., runner_id: _Optional[str] = ..., requestsNacked: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., watch_heartbeat_ms: _Optional[int] = ..., watch_min_interval_ms: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("heartbeat_ms",)
    HEARTBEAT_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_ms: int
    def __init__(self, heartbeat_ms: _Optional[int] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("body", "seq")
    TRY_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    seq: int
    def __init__(self, body: _Optional[bytes] = ..., seq: _Optional[int] = ..., **kwargs) -> None: ...

class CallReply(_message.Message):
    __slots__ = ("finished", "http", "body", "seq")
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    finished: CallFinished
    http: HttpRespMeta
    body: bytes
    seq: int
    def __init__(self, finished: _Optional[_Union[CallFinished, _Mapping]] = ..., http: _Optional[_Union[HttpRespMeta, _Mapping]] = ..., body: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class CallBatch(_message.Message):
    __slots__ = ("calls", "cancel", "go")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    GO_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[CallRequest]
    cancel: _containers.RepeatedScalarFieldContainer[int]
    go: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, calls: _Optional[_Iterable[_Union[CallRequest, _Mapping]]] = ..., cancel: _Optional[_Iterable[int]] = ..., go: _Optional[_Iterable[int]] = ...) -> None: ...

class ReplyBatch(_message.Message):
    __slots__ = ("replies", "acks")
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    ACKS_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[CallReply]
    acks: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, replies: _Optional[_Iterable[_Union[CallReply, _Mapping]]] = ..., acks: _Optional[_Iterable[int]] = ...) -> None: ...

class CloseRequest(_message.Message):
    __slots__ = ("wait",)
    WAIT_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    def __init__(self, wait: _Optional[bool] = ...) -> None: ...

class CloseResponse(_message.Message):
    __slots__ = ("active", "drained")
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    active: int
    drained: bool
    def __init__(self, active: _Optional[int] = ..., drained: _Optional[bool] = ...) -> None: ...
