"""The synchronous client: ``Client(target).transcribe(path)``, ``.stream(...)``, ``.health()``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.client import errors
from app.client._requests import Hotwords, Recognition, Streaming, SyncFeed, recognize_request
from app.client.audio import AudioEncoding, paced, recognize_audio, stream_source
from app.client.channel import DEFAULT_TARGET, TlsConfig, TokenSource, call_metadata, channel_options, resolve_tls
from app.client.errors import AsrError, trailing_metadata
from app.client.retry import NO_RETRY, Attempts, RetryEvent, RetryPolicy
from app.client.types import ModelInfo, StreamingMode, StreamItem, Transcript, model_from_proto, stream_items, transcript_from_proto
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc

HEALTH_STATUS = {v: k for k, v in health_pb2.HealthCheckResponse.ServingStatus.items()}


class Client:
    """A connection to a paraformer-asr server. Thread-safe; reuse one per process and close it when done.

    Args:
        target: ``host:port``, or any gRPC target such as ``dns:///asr-headless.speech.svc:50051``.
        tls: False (plaintext), True (TLS with the system's trust store) or a ``TlsConfig`` (own CA, mutual TLS).
        token: bearer token sent as ``authorization: Bearer <token>``; a function is called for every
            call, so a rotated token is picked up.
        timeout: default deadline of ``transcribe`` and ``health``, seconds, for all attempts together.
        retry: when to retry (``RetryPolicy``); ``NO_RETRY`` turns retries off.
        load_balancing: ``"round_robin"`` to spread calls over every address the target resolves to.
        options: extra gRPC channel options, which win over ours.
        on_retry: called with a ``RetryEvent`` before each retry's pause.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        tls: bool | TlsConfig = False,
        token: TokenSource = None,
        timeout: float | None = 600.0,
        retry: RetryPolicy | None = None,
        load_balancing: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        on_retry: Callable[[RetryEvent], None] | None = None,
    ):
        self.target = target
        self._tls = resolve_tls(tls)
        self._token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._metadata = tuple(metadata)
        self.on_retry = on_retry
        opts = channel_options(load_balancing, self._tls, options)
        if self._tls is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, self._tls.credentials(), options=opts)
        self._stub = asr_pb2_grpc.RecognizerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, error: grpc.RpcError, attempts: int) -> AsrError:
        return AsrError.from_rpc(error, self.target, self._tls is not None, attempts)

    def _metadata_for(self, request_id: str | None, metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        return call_metadata(self._token, request_id, (*self._metadata, *metadata))

    def _unary(self, method, request, timeout: float | None, metadata, retry: RetryPolicy | None):
        attempts = Attempts(retry or self.retry, timeout, self.on_retry)
        while True:
            attempt_timeout = attempts.start()
            try:
                return method(request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as e:
                error = self._error(e, attempts.attempt)
                pause = attempts.pause_after(error, trailing_metadata(e))
                if pause is None:
                    raise error from None
                time.sleep(pause)

    def transcribe(
        self,
        audio: Any,
        *,
        sample_rate_hz: int = 0,
        encoding: AudioEncoding | None = None,
        channels: int = 0,
        punctuation: bool | None = None,
        word_times: bool = False,
        hotwords: Hotwords = (),
        model: str = "",
        engine_options: Mapping[str, str] | None = None,
        skip_cache: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy | None = None,
    ) -> Transcript:
        """Transcribe a whole file or buffer with one Recognize call.

        ``audio`` is a path, the bytes of a file (any common container), raw PCM bytes (with
        ``encoding`` and ``sample_rate_hz``), or a numpy array of samples (with ``sample_rate_hz``).
        Raises ``AsrError`` on failure, after the retries the policy allows.
        """
        content, enc, rate, chans = recognize_audio(audio, sample_rate_hz, encoding, channels)
        recognition = Recognition(punctuation, word_times, tuple(hotwords), model, dict(engine_options or {}), skip_cache)
        request = recognize_request(content, enc, rate, chans, recognition)
        response = self._unary(self._stub.Recognize, request, self.timeout if timeout is None else timeout, self._metadata_for(request_id, metadata), retry)
        return transcript_from_proto(response)

    def stream(
        self,
        source: Any,
        *,
        sample_rate_hz: int = 0,
        encoding: AudioEncoding | None = None,
        channels: int = 1,
        interim_results: bool = True,
        mode: StreamingMode = StreamingMode.AUTO,
        single_utterance: bool = False,
        chunk_duration_ms: int = 0,
        max_trailing_silence_ms: int = 0,
        max_utterance_ms: int = 0,
        punctuation: bool | None = None,
        word_times: bool = False,
        hotwords: Hotwords = (),
        model: str = "",
        engine_options: Mapping[str, str] | None = None,
        realtime: bool | None = None,
        speed: float = 1.0,
        chunk_ms: int = 100,
        events: bool = False,
        timeout: float | None = None,
        request_id: str | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        retry: RetryPolicy | None = None,
    ) -> Iterator[StreamItem]:
        """Recognize audio as it is sent; yields ``StreamResult`` (interim and final) as the server answers.

        ``source`` is a path or file bytes (decoded here and played at real-time pace unless
        ``realtime=False``; ``speed`` plays faster), raw PCM bytes or an iterable of raw PCM chunks
        (``sample_rate_hz`` required; ``encoding`` LINEAR16 unless given), or a numpy array.
        With ``events=True`` the VAD's ``SpeechEvent``s are yielded too. ``timeout`` bounds the
        whole stream (default: none). A stream refused before the server's first answer
        (UNAVAILABLE, RESOURCE_EXHAUSTED) is retried with the audio sent so far.
        Breaking out of the loop cancels the stream.
        """
        src = stream_source(source, sample_rate_hz, encoding, channels, realtime, chunk_ms)
        if not isinstance(src.chunks, Iterable):
            raise TypeError("the synchronous client needs a synchronous iterable of chunks; use AsyncClient for async iterables")
        recognition = Recognition(punctuation, word_times, tuple(hotwords), model, dict(engine_options or {}))
        streaming = Streaming(interim_results, single_utterance, mode, chunk_duration_ms, max_trailing_silence_ms, max_utterance_ms)
        run = self._stream_run(src, speed, recognition, streaming, events, timeout, request_id, metadata, retry)
        try:
            yield from run
        finally:
            run.cancel()

    def _stream_run(self, src, speed, recognition, streaming, events, timeout, request_id, metadata, retry) -> StreamRun:
        chunks = paced(src.chunks, src.pcm.bytes_per_second, speed) if src.realtime else src.chunks
        return StreamRun(
            self,
            SyncFeed(chunks),
            streaming.config(recognition, src.pcm),
            events,
            self._metadata_for(request_id, metadata),
            Attempts(retry or self.retry, timeout, self.on_retry),
        )

    def models(self, timeout: float | None = 10.0) -> list[ModelInfo]:
        """The model pipelines the server holds (ListModels), the default first."""
        reply = self._unary(self._stub.ListModels, asr_pb2.ListModelsRequest(), timeout, self._metadata_for(None, ()), None)
        return [model_from_proto(m) for m in reply.models]

    def health(self, service: str = "", timeout: float | None = 5.0, retry: RetryPolicy | None = None) -> str:
        """The server's gRPC health status: ``"SERVING"``, ``"NOT_SERVING"``, ``"SERVICE_UNKNOWN"``, ...

        Not retried by default (scripts poll; a retry loop would hide the state).
        """
        reply = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout, self._metadata_for(None, ()), retry or NO_RETRY)
        return HEALTH_STATUS.get(reply.status, str(reply.status))

    def wait_until_serving(self, timeout: float = 60.0, service: str = "", poll_s: float = 0.25) -> None:
        """Block until health says SERVING; AsrError (reason ``timeout``, or the last error) after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: AsrError | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                status = self.health(service, timeout=max(0.1, min(5.0, remaining)))
                if status == "SERVING":
                    return
                last = AsrError(None, f"health status is {status}", errors.LOADING, self.target)
            except AsrError as e:
                if e.is_fatal and e.reason not in (errors.UNREACHABLE, errors.DNS):
                    raise  # TLS or credentials: waiting will not help
                last = e
            if time.monotonic() + poll_s >= deadline:
                raise AsrError(None, f"not SERVING after {timeout:g} s (last: {last})", errors.TIMEOUT, self.target)
            time.sleep(poll_s)


class StreamRun:
    """One stream over its attempts, on gRPC's synchronous stack; ``cancel`` works from any thread.

    A stream is retried only while the server has not answered (it was refused at the door:
    draining, full): the feed then re-sends the audio the refused attempt had taken.
    """

    def __init__(self, client: Client, feed: SyncFeed, first, events: bool, metadata, attempts: Attempts):
        self._client = client
        self._feed = feed
        self._first = first
        self._events = events
        self._metadata = metadata
        self._attempts = attempts
        self._lock = threading.Lock()
        self._call = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            call = self._call
        if call is not None:
            call.cancel()

    def __iter__(self) -> Iterator[StreamItem]:
        feed, attempts = self._feed, self._attempts
        while True:
            with self._lock:
                if self._cancelled.is_set():
                    return
                call = self._call = self._client._stub.StreamingRecognize(feed.requests(self._first), timeout=attempts.start(), metadata=self._metadata)
            answered = False
            try:
                for response in call:
                    if not answered:
                        answered = True
                        feed.stop_recording()
                    yield from stream_items(response, self._events)
                return
            except grpc.RpcError as e:
                if self._cancelled.is_set():
                    return
                if feed.log.source_error is not None:
                    raise feed.log.source_error from None
                error = self._client._error(e, attempts.attempt)
                pause = None if answered or not feed.log.replayable else attempts.pause_after(error, trailing_metadata(e))
                if pause is None:
                    raise error from None
                if self._cancelled.wait(pause):
                    return
            finally:
                call.cancel()
