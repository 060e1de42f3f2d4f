from fnlb.v1 import runner_pb2 as _runner_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigMsg(_message.Message):
    __slots__ = ("config",)
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _containers.ScalarMap[str, str]
    def __init__(self, config: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ConfigStatus(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LogRequestMsg(_message.Message):
    __slots__ = ("start", "ack", "ready")
    class Start(_message.Message):
        __slots__ = ("config",)
        class ConfigEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: str
            def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        config: _containers.ScalarMap[str, str]
        def __init__(self, config: _Optional[_Mapping[str, str]] = ...) -> None: ...
    class Ack(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    class Ready(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    START_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    start: LogRequestMsg.Start
    ack: LogRequestMsg.Ack
    ready: LogRequestMsg.Ready
    def __init__(self, start: _Optional[_Union[LogRequestMsg.Start, _Mapping]] = ..., ack: _Optional[_Union[LogRequestMsg.Ack, _Mapping]] = ..., ready: _Optional[_Union[LogRequestMsg.Ready, _Mapping]] = ...) -> None: ...

class LogResponseMsg(_message.Message):
    __slots__ = ("data",)
    class Container(_message.Message):
        __slots__ = ("applicationId", "functionId", "containerId", "data")
        class Request(_message.Message):
            __slots__ = ("requestId", "data")
            class Line(_message.Message):
                __slots__ = ("timestamp", "source", "data")
                class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
                    __slots__ = ()
                    STDOUT: _ClassVar[LogResponseMsg.Container.Request.Line.Source]
                    STDERR: _ClassVar[LogResponseMsg.Container.Request.Line.Source]
                STDOUT: LogResponseMsg.Container.Request.Line.Source
                STDERR: LogResponseMsg.Container.Request.Line.Source
                TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
                SOURCE_FIELD_NUMBER: _ClassVar[int]
                DATA_FIELD_NUMBER: _ClassVar[int]
                timestamp: int
                source: LogResponseMsg.Container.Request.Line.Source
                data: bytes
                def __init__(self, timestamp: _Optional[int] = ..., source: _Optional[_Union[LogResponseMsg.Container.Request.Line.Source, str]] = ..., data: _Optional[bytes] = ...) -> None: ...
            REQUESTID_FIELD_NUMBER: _ClassVar[int]
            DATA_FIELD_NUMBER: _ClassVar[int]
            requestId: str
            data: _containers.RepeatedCompositeFieldContainer[LogResponseMsg.Container.Request.Line]
            def __init__(self, requestId: _Optional[str] = ..., data: _Optional[_Iterable[_Union[LogResponseMsg.Container.Request.Line, _Mapping]]] = ...) -> None: ...
        APPLICATIONID_FIELD_NUMBER: _ClassVar[int]
        FUNCTIONID_FIELD_NUMBER: _ClassVar[int]
        CONTAINERID_FIELD_NUMBER: _ClassVar[int]
        DATA_FIELD_NUMBER: _ClassVar[int]
        applicationId: str
        functionId: str
        containerId: str
        data: _containers.RepeatedCompositeFieldContainer[LogResponseMsg.Container.Request]
        def __init__(self, applicationId: _Optional[str] = ..., functionId: _Optional[str] = ..., containerId: _Optional[str] = ..., data: _Optional[_Iterable[_Union[LogResponseMsg.Container.Request, _Mapping]]] = ...) -> None: ...
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: _containers.RepeatedCompositeFieldContainer[LogResponseMsg.Container]
    def __init__(self, data: _Optional[_Iterable[_Union[LogResponseMsg.Container, _Mapping]]] = ...) -> None: ...
