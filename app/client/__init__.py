"""Python client of paraformer-asr: one line to transcribe a file, a loop to stream.

    from app.client import Client

    with Client("localhost:50051") as asr:
        print(asr.transcribe("speech.wav").text)
        for result in asr.stream("speech.mp3"):          # played at real-time pace
            print(result.text, "(final)" if result.is_final else "")

``AsyncClient`` is the asyncio twin. TLS: ``tls=True`` (system CAs) or
``tls=TlsConfig.from_files(ca_file=..., cert_file=..., key_file=...)`` (own CA, mutual TLS);
tokens: ``token="..."``; Kubernetes headless Service: ``Client("dns:///asr-headless:50051",
load_balancing="round_robin")``. Failures raise ``AsrError`` after the retries ``RetryPolicy``
allows (UNAVAILABLE and RESOURCE_EXHAUSTED, exponential backoff with jitter, within the deadline).
See docs/clients.md.
"""

from app.client.aio import AsyncClient
from app.client.audio import AudioEncoding
from app.client.channel import TlsConfig
from app.client.errors import AsrError
from app.client.retry import NO_RETRY, RetryEvent, RetryPolicy
from app.client.sync import Client
from app.client.types import ModelInfo, Sentence, SpeechEvent, SpeechEventType, StreamingMode, StreamItem, StreamResult, Transcript, Word

__all__ = [
    "NO_RETRY",
    "AsrError",
    "AsyncClient",
    "AudioEncoding",
    "Client",
    "ModelInfo",
    "RetryEvent",
    "RetryPolicy",
    "Sentence",
    "SpeechEvent",
    "SpeechEventType",
    "StreamItem",
    "StreamResult",
    "StreamingMode",
    "TlsConfig",
    "Transcript",
    "Word",
]
