"""The Python client against the real server: files, streams, asyncio, TLS, tokens, retries, load balancing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from app.client import (
    NO_RETRY,
    AsrError,
    AsyncClient,
    AudioEncoding,
    Client,
    RetryPolicy,
    SpeechEvent,
    SpeechEventType,
    StreamingMode,
    StreamResult,
    TlsConfig,
    errors,
)
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.certs import make_pki
from tests.helpers import encode, utterances

pytestmark = pytest.mark.integration

TWO = utterances(("silence", 0.5), ("speech", 2.0), ("silence", 1.5), ("speech", 1.5), ("silence", 1.2))
ONE = utterances(("silence", 0.3), ("speech", 1.2), ("silence", 0.8))
FAST = RetryPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.2)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "two.wav"
    path.write_bytes(encode(TWO))
    return path


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- Recognize ---------------------------------------------------------------------------------------


def test_transcribe_a_path_bytes_samples_and_raw_pcm(server, wav):
    with Client(server.target) as asr:
        t = asr.transcribe(wav, word_times=True, request_id="client-test-1")
        assert t.text and t.model == "tiny" and t.request_id == "client-test-1"
        assert t.audio_duration_ms == 6700 and t.processing_time_ms >= 0
        assert t.sentences and all(s.start_ms < s.end_ms for s in t.sentences)
        assert t.words and all(s.start_ms <= w.start_ms < w.end_ms <= s.end_ms for s in t.sentences for w in s.words)
        assert t.to_dict()["transcript"] == t.text
        same = [
            asr.transcribe(str(wav)),
            asr.transcribe(wav.read_bytes()),
            asr.transcribe(TWO, sample_rate_hz=16000),
            asr.transcribe(pcm16(TWO), encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000),
        ]
        assert {x.text for x in same} == {t.text}
        assert asr.transcribe(wav, punctuation=False).sentences
        assert asr.transcribe(wav, skip_cache=True).text == t.text
        (model,) = asr.models()
        assert model.name == "tiny" and model.is_default and model.ready and model.random_weights


def test_server_errors_are_typed_and_not_retried(server):
    calls = []
    with Client(server.target, retry=FAST, on_retry=calls.append) as asr:
        with pytest.raises(AsrError) as err:
            asr.transcribe(b"not audio at all" * 100)
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and err.value.reason == errors.INVALID
        assert err.value.request_id and err.value.attempts == 1 and not calls
        assert "not a recognised audio format" in str(err.value)
        with pytest.raises(AsrError) as err:
            asr.transcribe(ONE, sample_rate_hz=16000, model="no-such-model")
        assert "unknown model" in err.value.details


def test_health_and_waiting_for_serving(make_server):
    srv = make_server(load=False)
    with Client(srv.target) as asr:
        assert asr.health() == "NOT_SERVING"
        assert asr.health("paraformer.asr.v1.Recognizer") == "NOT_SERVING"
        with pytest.raises(AsrError) as err:
            asr.transcribe(encode(ONE), retry=NO_RETRY)
        assert err.value.reason == errors.LOADING
        loader = threading.Thread(target=srv.load)
        loader.start()
        asr.wait_until_serving(timeout=120)
        loader.join()
        assert asr.health() == "SERVING"
        with pytest.raises(AsrError) as err:
            Client(f"127.0.0.1:{closed_port()}").wait_until_serving(timeout=0.5)
        assert err.value.reason == errors.TIMEOUT and "not SERVING" in str(err.value)


# --- StreamingRecognize --------------------------------------------------------------------------------


def test_stream_a_file_at_real_time_pace(server, wav):
    start = time.monotonic()
    with Client(server.target) as asr:
        items = list(asr.stream(wav, events=True))
    elapsed = time.monotonic() - start
    assert elapsed >= 6.0  # 6.7 s of audio, released as it "happens"
    results = [i for i in items if isinstance(i, StreamResult)]
    finals = [r for r in results if r.is_final]
    assert [f.utterance_index for f in finals] == [0, 1] and all(f.text and f.stability == 1.0 for f in finals)
    assert any(not r.is_final and r.text for r in results)
    events = [i.type for i in items if isinstance(i, SpeechEvent)]
    assert events.count(SpeechEventType.SPEECH_BEGIN) == 2 and events.count(SpeechEventType.SPEECH_END) == 2
    assert len({i.request_id for i in items}) == 1


def test_stream_chunks_numpy_and_options(server, wav):
    with Client(server.target) as asr:
        audio = pcm16(TWO)
        chunks = (audio[i : i + 1234] for i in range(0, len(audio), 1234))  # odd sizes, as fast as they come
        finals = [r for r in asr.stream(chunks, sample_rate_hz=16000) if r.is_final]
        assert len(finals) == 2
        offline = list(asr.stream(TWO, sample_rate_hz=16000, mode=StreamingMode.OFFLINE, word_times=True))
        assert all(r.is_final for r in offline) and all(r.words for r in offline)
        single = list(asr.stream(wav, realtime=False, single_utterance=True, interim_results=False))
        assert len(single) == 1 and single[0].is_final
        fast = time.monotonic()
        assert [r for r in asr.stream(wav, speed=8) if r.is_final]
        assert time.monotonic() - fast < 4


def test_leaving_a_stream_early_cancels_it(server, wav):
    with Client(server.target) as asr:
        stream = asr.stream(wav, speed=2)
        first = next(iter(stream))
        assert isinstance(first, StreamResult)
        stream.close()  # what `break` does
    # The server's slot is given back: the pipeline's stream count returns to zero.
    deadline = time.monotonic() + 10
    while server.pipeline.streams.open and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.pipeline.streams.open == 0


def test_stream_errors(server):
    with Client(server.target) as asr:
        with pytest.raises(AsrError) as err:
            list(asr.stream([b"\0\0" * 100], sample_rate_hz=16000, chunk_duration_ms=100))
        assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT and "chunk_duration_ms" in str(err.value)

        def broken():
            yield b"\0\0" * 1600
            raise OSError("microphone unplugged")

        with pytest.raises(OSError, match="microphone unplugged"):
            list(asr.stream(broken(), sample_rate_hz=16000))


def test_asyncio_client(server, wav):
    async def main():
        async with AsyncClient(server.target) as asr:
            assert await asr.health() == "SERVING"
            texts = await asyncio.gather(*(asr.transcribe(wav) for _ in range(4)))
            assert len(set(t.text for t in texts)) == 1 and texts[0].text

            async def mic():  # an async source that yields as audio "arrives"
                audio = pcm16(TWO)
                for i in range(0, len(audio), 6400):
                    await asyncio.sleep(0)
                    yield audio[i : i + 6400]

            finals = [r async for r in asr.stream(mic(), sample_rate_hz=16000) if r.is_final]
            assert len(finals) == 2
            start = time.monotonic()
            from_file = [r async for r in asr.stream(wav, speed=4, interim_results=False)]
            assert time.monotonic() - start >= 1.5 and [r.text for r in from_file] == [r.text for r in finals]
            async with contextlib.aclosing(asr.stream(wav, speed=2)) as stream:
                async for _ in stream:
                    break
            with pytest.raises(AsrError) as err:
                await asr.transcribe(b"")
            assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT

            async def broken_mic():
                yield b"\0\0" * 1600
                raise OSError("microphone unplugged")

            with pytest.raises(OSError, match="microphone unplugged"):
                [r async for r in asr.stream(broken_mic(), sample_rate_hz=16000)]

    asyncio.run(main())


# --- retries -------------------------------------------------------------------------------------------


def serve_again(srv) -> None:
    """Undo ``service.drain()``: the server takes calls again (as a restarted replica would)."""
    from app.core.service import Phase

    srv.running.service.phase = Phase.SERVING


def test_retries_against_a_draining_server(make_server, wav):
    srv = make_server()
    srv.running.service.drain()
    seen = []
    with Client(srv.target, retry=RetryPolicy(max_attempts=4, initial_backoff_s=0.1, max_backoff_s=1.0, jitter=0.5), on_retry=seen.append) as asr:
        start = time.monotonic()
        with pytest.raises(AsrError) as err:
            asr.transcribe(wav)
        elapsed = time.monotonic() - start
        assert err.value.code is grpc.StatusCode.UNAVAILABLE and err.value.reason == errors.SHUTTING_DOWN
        assert err.value.attempts == 4 and "after 4 attempts" in str(err.value)
        assert [e.attempt for e in seen] == [1, 2, 3]
        assert all(not e.server_hint and e.error.reason == errors.SHUTTING_DOWN for e in seen)
        for event, base in zip(seen, (0.1, 0.2, 0.4), strict=True):  # exponential, jittered down by at most half
            assert base * 0.5 <= event.delay_s <= base
        assert elapsed >= sum(e.delay_s for e in seen)

        # The server comes back (a restarted pod, a new replica behind the name) while we back off.
        seen.clear()
        timer = threading.Timer(0.5, serve_again, args=(srv,))
        timer.start()
        t = asr.transcribe(wav, retry=RetryPolicy(max_attempts=20, initial_backoff_s=0.1, max_backoff_s=0.2))
        assert t.text and len(seen) >= 2

        # A stream refused at the door is retried, and the audio it had sent is sent again.
        srv.running.service.drain()
        seen.clear()
        threading.Timer(0.5, serve_again, args=(srv,)).start()
        finals = [r for r in asr.stream(wav, speed=4, retry=RetryPolicy(max_attempts=20, initial_backoff_s=0.1, max_backoff_s=0.2)) if r.is_final]
        assert seen and [f.utterance_index for f in finals] == [0, 1]
        plain = [r.text for r in asr.stream(wav, realtime=False) if r.is_final]
        assert [f.text for f in finals] == plain  # nothing lost or doubled by the retry

    async def the_same_with_asyncio():
        events = []
        policy = RetryPolicy(max_attempts=20, initial_backoff_s=0.1, max_backoff_s=0.2)
        async with AsyncClient(srv.target, retry=policy, on_retry=events.append) as asr:
            srv.running.service.drain()
            threading.Timer(0.5, serve_again, args=(srv,)).start()
            assert (await asr.transcribe(wav)).text
            assert events
            events.clear()
            srv.running.service.drain()
            threading.Timer(0.5, serve_again, args=(srv,)).start()
            texts = [r.text async for r in asr.stream(wav, speed=4) if r.is_final]
            assert events and texts == plain

    asyncio.run(the_same_with_asyncio())


def test_a_refused_stream_reports_the_servers_status_not_a_lost_one(make_server, wav):
    """grpc.aio loses the status of a call the server ends while the client is still sending
    (it reports "INTERNAL: Internal error from Core"); the asyncio client must not."""
    srv = make_server()
    srv.running.service.drain()

    async def main():
        codes = set()
        async with AsyncClient(srv.target, retry=NO_RETRY) as asr:
            for _ in range(15):
                with pytest.raises(AsrError) as err:
                    [r async for r in asr.stream(wav, realtime=False)]
                codes.add(err.value.code)
        return codes

    assert asyncio.run(main()) == {grpc.StatusCode.UNAVAILABLE}


def test_retries_stay_within_the_deadline(make_server, wav):
    srv = make_server()
    srv.running.service.drain()
    with Client(srv.target, retry=RetryPolicy(max_attempts=100, initial_backoff_s=0.2, max_backoff_s=0.2, jitter=0)) as asr:
        start = time.monotonic()
        with pytest.raises(AsrError) as err:
            asr.transcribe(wav, timeout=1.0)
        assert time.monotonic() - start < 1.5
        assert err.value.attempts in (4, 5)


def test_a_full_server_is_retried_until_a_stream_slot_frees(make_server, wav):
    srv = make_server(max_streams=1)
    seen = []
    with Client(srv.target, on_retry=seen.append, retry=RetryPolicy(max_attempts=30, initial_backoff_s=0.1, max_backoff_s=0.3)) as asr:
        holder = threading.Thread(target=lambda: list(asr.stream(encode(ONE), realtime=True)))
        holder.start()
        time.sleep(0.5)  # the first stream holds the only slot for ~2.3 s
        finals = [r for r in asr.stream(wav, realtime=False) if r.is_final]
        holder.join()
    assert len(finals) == 2
    assert seen and all(e.error.code is grpc.StatusCode.RESOURCE_EXHAUSTED and e.error.reason == errors.BUSY for e in seen)


class HintingRecognizer(asr_pb2_grpc.RecognizerServicer):
    """A stand-in server that refuses the first calls with a retry hint in its trailing metadata."""

    def __init__(self, refusals: int, hint: tuple[str, str] | None):
        self.refusals = refusals
        self.hint = hint
        self.calls: list[float] = []

    def Recognize(self, request, context):
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.refusals:
            if self.hint:
                context.set_trailing_metadata((self.hint,))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: come back later")
        return asr_pb2.RecognizeResponse(transcript="ok", request_id="r")


@contextlib.contextmanager
def hinting_server(refusals: int, hint: tuple[str, str] | None):
    servicer = HintingRecognizer(refusals, hint)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    asr_pb2_grpc.add_RecognizerServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


@pytest.mark.parametrize("key", ["retry-after-ms", "grpc-retry-pushback-ms"])
def test_the_servers_retry_hint_replaces_the_backoff(key):
    seen = []
    with hinting_server(2, (key, "400")) as (target, servicer), Client(target, retry=FAST, on_retry=seen.append) as asr:
        assert asr.transcribe(b"x").text == "ok"
    assert [(e.delay_s, e.server_hint) for e in seen] == [(0.4, True), (0.4, True)]
    gaps = np.diff(servicer.calls)
    assert len(gaps) == 2 and all(gap >= 0.39 for gap in gaps)


def test_a_negative_hint_means_do_not_retry():
    with hinting_server(1, ("retry-after-ms", "-1")) as (target, servicer), Client(target, retry=FAST) as asr, pytest.raises(AsrError) as err:
        asr.transcribe(b"x")
    assert err.value.reason == errors.BUSY and len(servicer.calls) == 1


def test_too_large_is_not_retried(make_server):
    srv = make_server(max_receive_message_bytes=100_000)
    with Client(srv.target, retry=FAST) as asr, pytest.raises(AsrError) as err:
        asr.transcribe(encode(utterances(("speech", 4.0))))
    assert err.value.reason == errors.TOO_LARGE and err.value.attempts == 1


# --- connection problems, TLS, tokens ---------------------------------------------------------------------


def test_unreachable_server_is_named_and_retried(tmp_path):
    seen = []
    with Client(f"127.0.0.1:{closed_port()}", retry=FAST, on_retry=seen.append) as asr, pytest.raises(AsrError) as err:
        asr.transcribe(b"x")
    assert err.value.reason == errors.UNREACHABLE and err.value.is_connection_problem
    assert "cannot reach 127.0.0.1:" in str(err.value) and len(seen) == 3


def tls_server(make_server, pki, tmp_path, mutual=False, **extra):
    files = pki.write(tmp_path)
    settings = dict(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]), **extra)
    if mutual:
        settings["tls_client_ca_file"] = str(files["ca"])
    return make_server(**settings), files


def test_tls_with_own_ca_and_server_name(make_server, pki, tmp_path, wav):
    srv, files = tls_server(make_server, pki, tmp_path)
    # The certificate names localhost and 127.0.0.1: both work; an alias needs server_name.
    for target in (srv.target, f"localhost:{srv.running.port}"):
        with Client(target, tls=TlsConfig.from_files(ca_file=files["ca"])) as asr:
            assert asr.transcribe(wav).text
    with Client(f"127.0.0.1:{srv.running.port}", tls=TlsConfig(pki.ca.cert, server_name="localhost")) as asr:
        assert [r for r in asr.stream(wav, realtime=False) if r.is_final]
    problems = {
        errors.PLAINTEXT_TO_TLS: Client(srv.target),
        errors.TLS_UNTRUSTED: Client(srv.target, tls=TlsConfig(pki.other_ca.cert)),
        errors.TLS_NAME: Client(srv.target, tls=TlsConfig(pki.ca.cert, server_name="asr.example.com")),
    }
    for reason, client in problems.items():
        start = time.monotonic()
        with client, pytest.raises(AsrError) as err:
            client.transcribe(wav)
        assert err.value.reason == reason, str(err.value)
        assert err.value.attempts == 1 and time.monotonic() - start < 3  # not retried: it would fail the same way
        assert err.value.is_fatal


def test_mutual_tls(make_server, pki, tmp_path, wav):
    srv, files = tls_server(make_server, pki, tmp_path, mutual=True)
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client.key"
    client_cert.write_bytes(pki.client.cert)
    client_key.write_bytes(pki.client.key)
    with Client(srv.target, tls=TlsConfig.from_files(files["ca"], client_cert, client_key)) as asr:
        assert asr.transcribe(wav).text and asr.health() == "SERVING"
    for tls in (TlsConfig(pki.ca.cert), TlsConfig(pki.ca.cert, pki.stranger_client.cert, pki.stranger_client.key)):
        with Client(srv.target, tls=tls) as asr, pytest.raises(AsrError) as err:
            asr.transcribe(wav)
        assert err.value.reason == errors.TLS_REFUSED and "client certificate" in str(err.value)


def test_tls_to_a_plaintext_server_and_bad_tls_files(server, pki, tmp_path):
    with Client(server.target, tls=TlsConfig(pki.ca.cert, server_name="localhost")) as asr, pytest.raises(AsrError) as err:
        asr.health()
    assert err.value.reason == errors.TLS_NOT_SUPPORTED
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(AsrError, match="is not PEM"):
        TlsConfig.from_files(ca_file=tmp_path / "junk.pem")
    with pytest.raises(AsrError, match="cannot read the CA certificate file"):
        TlsConfig.from_files(ca_file=tmp_path / "missing.pem")
    with pytest.raises(AsrError, match="both a client certificate and its private key"):
        TlsConfig(pki.ca.cert, certificate_chain=pki.client.cert)


def test_tokens(make_server, tmp_path, wav):
    tokens = tmp_path / "tokens"
    tokens.write_text("sesame\n")
    srv = make_server(auth_tokens_file=str(tokens))
    with Client(srv.target, token="sesame") as asr:
        assert asr.transcribe(wav).text
        assert [r for r in asr.stream(wav, realtime=False) if r.is_final]
    for token, fragment in ((None, "missing credentials"), ("wrong", "invalid credentials")):
        with Client(srv.target, token=token, retry=FAST) as asr:
            assert asr.health() == "SERVING"  # health stays open for probes
            with pytest.raises(AsrError) as err:
                asr.transcribe(wav)
        assert err.value.reason == errors.UNAUTHENTICATED and err.value.attempts == 1
        assert fragment in str(err.value) and "refused the credentials" in str(err.value)
    current = ["sesame"]
    with Client(srv.target, token=lambda: current[0]) as asr:  # a token that rotates
        assert asr.transcribe(wav).text
        current[0] = "stale"
        with pytest.raises(AsrError):
            asr.transcribe(wav)


# --- load balancing --------------------------------------------------------------------------------------


def test_round_robin_spreads_calls_over_every_address(make_server, wav):
    a, b = make_server(model_name="replica-a"), make_server(model_name="replica-b")
    both = f"ipv4:127.0.0.1:{a.running.port},127.0.0.1:{b.running.port}"  # what a headless Service's DNS answers
    with Client(both, load_balancing="round_robin") as asr:
        asr.wait_until_serving(10)
        models = [asr.transcribe(wav).model for _ in range(8)]
    assert set(models) == {"replica-a", "replica-b"}
    with Client(both) as asr:  # pick_first: one connection, one replica
        assert len({asr.transcribe(wav).model for _ in range(4)}) == 1
    with Client(f"dns:///localhost:{a.running.port}", load_balancing="round_robin") as asr:
        assert asr.transcribe(wav).model == "replica-a"
    with pytest.raises(ValueError, match="load_balancing"):
        Client(both, load_balancing="random")
