from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AudioRequest(_message.Message):
    __slots__ = ("audio_data", "format")
    AUDIO_DATA_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    audio_data: bytes
    format: str
    def __init__(self, audio_data: _Optional[bytes] = ..., format: _Optional[str] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("data", "is_final")
    DATA_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    is_final: bool
    def __init__(self, data: _Optional[bytes] = ..., is_final: _Optional[bool] = ...) -> None: ...

class TextResponse(_message.Message):
    __slots__ = ("text", "success", "error_msg")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_MSG_FIELD_NUMBER: _ClassVar[int]
    text: str
    success: bool
    error_msg: str
    def __init__(self, text: _Optional[str] = ..., success: _Optional[bool] = ..., error_msg: _Optional[str] = ...) -> None: ...
