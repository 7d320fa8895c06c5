"""The asyncio client: ``await AsyncClient(target).transcribe(path)``, ``async for r in client.stream(...)``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import queue
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.client import errors
from app.client._requests import Hotwords, Recognition, Streaming, recognize_request
from app.client.audio import AudioEncoding, recognize_audio, stream_source
from app.client.channel import DEFAULT_TARGET, TlsConfig, TokenSource, call_metadata, channel_options, resolve_tls
from app.client.errors import AsrError, trailing_metadata
from app.client.retry import NO_RETRY, Attempts, RetryEvent, RetryPolicy
from app.client.sync import HEALTH_STATUS, Client
from app.client.types import ModelInfo, StreamingMode, StreamItem, Transcript, model_from_proto, transcript_from_proto
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc


class AsyncClient:
    """The asyncio twin of ``Client`` (same arguments). Create it inside the event loop that uses it.

    File reading and decoding run on worker threads, never on the event loop.
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
        self._load_balancing = load_balancing
        self._options = tuple(options)
        self._sync_client: Client | None = None
        opts = channel_options(load_balancing, self._tls, options)
        if self._tls is None:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.aio.secure_channel(target, self._tls.credentials(), options=opts)
        self._stub = asr_pb2_grpc.RecognizerStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()
        if self._sync_client is not None:
            self._sync_client.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _error(self, error: grpc.RpcError, attempts: int) -> AsrError:
        return AsrError.from_rpc(error, self.target, self._tls is not None, attempts)

    def _metadata_for(self, request_id: str | None, metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
        return call_metadata(self._token, request_id, (*self._metadata, *metadata))

    async def _unary(self, method, request, timeout: float | None, metadata, retry: RetryPolicy | None):
        attempts = Attempts(retry or self.retry, timeout, self.on_retry)
        while True:
            attempt_timeout = attempts.start()
            try:
                return await method(request, timeout=attempt_timeout, metadata=metadata)
            except grpc.RpcError as e:
                error = self._error(e, attempts.attempt)
                pause = attempts.pause_after(error, trailing_metadata(e))
                if pause is None:
                    raise error from None
                await asyncio.sleep(pause)

    async def transcribe(
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
        """See ``Client.transcribe``."""
        content, enc, rate, chans = await asyncio.to_thread(recognize_audio, audio, sample_rate_hz, encoding, channels)
        recognition = Recognition(punctuation, word_times, tuple(hotwords), model, dict(engine_options or {}), skip_cache)
        request = recognize_request(content, enc, rate, chans, recognition)
        response = await self._unary(
            self._stub.Recognize, request, self.timeout if timeout is None else timeout, self._metadata_for(request_id, metadata), retry
        )
        return transcript_from_proto(response)

    async def stream(
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
    ) -> AsyncIterator[StreamItem]:
        """See ``Client.stream``; ``source`` may also be an async iterable of PCM chunks.

        To stop early, close the generator (``contextlib.aclosing``), which cancels the stream.

        Streams run on gRPC's synchronous stack, one thread per stream, results handed to the
        event loop: grpc.aio (1.85) loses the server's status when the server ends a call while
        the client is still sending, so a stream refused at the door (draining, full) would fail
        with "INTERNAL: Internal error from Core" instead of the UNAVAILABLE it can retry. The
        caller's async source is read on the event loop; ``on_retry`` is called on the stream's thread.
        """
        src = await asyncio.to_thread(stream_source, source, sample_rate_hz, encoding, channels, realtime, chunk_ms)
        loop = asyncio.get_running_loop()
        bridge = None
        if not isinstance(src.chunks, Iterable):
            bridge = _AsyncSource(src.chunks, loop)
            src = dataclasses.replace(src, chunks=bridge)
        recognition = Recognition(punctuation, word_times, tuple(hotwords), model, dict(engine_options or {}))
        streaming = Streaming(interim_results, single_utterance, mode, chunk_duration_ms, max_trailing_silence_ms, max_utterance_ms)
        run = self._sync()._stream_run(src, speed, recognition, streaming, events, timeout, request_id, metadata, retry)
        results: asyncio.Queue = asyncio.Queue()

        def post(item) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
                loop.call_soon_threadsafe(results.put_nowait, item)

        def work() -> None:
            try:
                for item in run:
                    post(item)
            except BaseException as e:
                post(_Failed(e))
            else:
                post(_END)

        threading.Thread(target=work, name="paraformer-asr-stream", daemon=True).start()
        try:
            while True:
                item = await results.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            run.cancel()
            if bridge is not None:
                bridge.close()

    def _sync(self) -> Client:
        if self._sync_client is None:
            self._sync_client = Client(
                self.target,
                tls=self._tls or False,
                token=self._token,
                timeout=self.timeout,
                retry=self.retry,
                load_balancing=self._load_balancing,
                options=self._options,
                metadata=self._metadata,
                on_retry=self.on_retry,
            )
        return self._sync_client

    async def models(self, timeout: float | None = 10.0) -> list[ModelInfo]:
        """The model pipelines the server holds (ListModels), the default first."""
        reply = await self._unary(self._stub.ListModels, asr_pb2.ListModelsRequest(), timeout, self._metadata_for(None, ()), None)
        return [model_from_proto(m) for m in reply.models]

    async def health(self, service: str = "", timeout: float | None = 5.0, retry: RetryPolicy | None = None) -> str:
        """See ``Client.health``."""
        reply = await self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout, self._metadata_for(None, ()), retry or NO_RETRY)
        return HEALTH_STATUS.get(reply.status, str(reply.status))

    async def wait_until_serving(self, timeout: float = 60.0, service: str = "", poll_s: float = 0.25) -> None:
        """See ``Client.wait_until_serving``."""
        deadline = time.monotonic() + timeout
        last: AsrError | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                status = await self.health(service, timeout=max(0.1, min(5.0, remaining)))
                if status == "SERVING":
                    return
                last = AsrError(None, f"health status is {status}", errors.LOADING, self.target)
            except AsrError as e:
                if e.is_fatal and e.reason not in (errors.UNREACHABLE, errors.DNS):
                    raise
                last = e
            if time.monotonic() + poll_s >= deadline:
                raise AsrError(None, f"not SERVING after {timeout:g} s (last: {last})", errors.TIMEOUT, self.target)
            await asyncio.sleep(poll_s)


_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class _AsyncSource:
    """An async iterable of chunks as the blocking iterator gRPC's request thread reads.

    A task on the event loop reads the source; a semaphore released by the reading thread keeps
    it at most a few chunks ahead, so nothing blocks the loop and nothing piles up.
    """

    AHEAD = 4

    def __init__(self, source: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._queue: queue.Queue = queue.Queue()
        self._room = asyncio.Semaphore(self.AHEAD)
        self._task = loop.create_task(self._pump(source))

    async def _pump(self, source: AsyncIterable[bytes]) -> None:
        try:
            async for chunk in source:
                await self._room.acquire()
                self._queue.put(bytes(chunk))
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # raised to the caller by the stream
            self._queue.put(_Failed(e))
            return
        self._queue.put(_END)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._room.release)
            yield item

    def close(self) -> None:
        self._task.cancel()
        self._queue.put(_END)  # a reader still waiting in gRPC's thread stops
