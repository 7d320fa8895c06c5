"""The client library's pure parts: backoff, retry hints, error wording, subtitles, inputs, replay."""

from __future__ import annotations

import itertools
import random
import threading

import grpc
import numpy as np
import pytest

from app.client import errors
from app.client._requests import Recognition, ReplayLog, SyncFeed
from app.client.audio import AudioEncoding, Pacer, PcmFormat, recognize_audio, stream_source
from app.client.commands import UsageError, display_width, expand_inputs, fit_tail, output_paths
from app.client.errors import AsrError
from app.client.formats import Cue, cues, parse_cues, render, to_srt, to_vtt
from app.client.retry import Attempts, RetryPolicy, server_delay_s
from app.client.types import Sentence, Transcript, Word
from tests.helpers import encode, speechlike

# --- retries -----------------------------------------------------------------------------------


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    policy = RetryPolicy(initial_backoff_s=0.1, multiplier=2, max_backoff_s=1.0, jitter=0.5)
    rng = random.Random(1)
    for retry, base in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        samples = [policy.backoff_s(retry, rng) for _ in range(200)]
        assert all(base * 0.5 <= s <= base for s in samples)
        assert max(samples) - min(samples) > base * 0.3  # really jittered
    assert RetryPolicy(jitter=0).backoff_s(1) == RetryPolicy().initial_backoff_s


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((("retry-after-ms", "1500"),), 1.5),
        ((("grpc-retry-pushback-ms", "250"),), 0.25),
        ((("x-request-id", "abc"), ("Retry-After-Ms", b"40")), 0.04),
        ((("retry-after-ms", "-1"),), -0.001),
        ((("retry-after-ms", "soon"),), None),
        ((), None),
    ],
)
def test_server_retry_hints(metadata, expected):
    assert server_delay_s(metadata) == expected


def unavailable(details="server is shutting down; retry on another replica") -> AsrError:
    return AsrError(grpc.StatusCode.UNAVAILABLE, details, errors._classify(grpc.StatusCode.UNAVAILABLE, details, False))


def test_attempts_stop_at_max_attempts_on_a_negative_hint_and_before_the_deadline():
    events = []
    attempts = Attempts(RetryPolicy(max_attempts=3, initial_backoff_s=0.01), None, events.append)
    attempts.start()
    assert attempts.pause_after(unavailable(), ()) is not None
    attempts.start()
    assert attempts.pause_after(unavailable(), (("retry-after-ms", "20"),)) == 0.02
    attempts.start()
    assert attempts.pause_after(unavailable(), ()) is None  # third attempt was the last
    assert [(e.attempt, e.server_hint) for e in events] == [(1, False), (2, True)]

    attempts = Attempts(RetryPolicy(), None)
    attempts.start()
    assert attempts.pause_after(unavailable(), (("grpc-retry-pushback-ms", "-1"),)) is None

    attempts = Attempts(RetryPolicy(initial_backoff_s=5.0, jitter=0), timeout_s=1.0)
    assert 0.9 < attempts.start() <= 1.0
    assert attempts.pause_after(unavailable(), ()) is None  # the pause would outlive the deadline


def test_only_transient_failures_are_retried():
    policy = RetryPolicy()
    assert policy.retries(unavailable())
    busy = "server busy: 4 requests in progress (limit 4); retry later"
    assert policy.retries(AsrError(grpc.StatusCode.RESOURCE_EXHAUSTED, busy, errors.BUSY))
    too_big = "Received message larger than max (9000000 vs. 4194304)"
    assert errors._classify(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big, False) == errors.TOO_LARGE
    assert not policy.retries(AsrError(grpc.StatusCode.RESOURCE_EXHAUSTED, too_big, errors.TOO_LARGE))
    assert not policy.retries(AsrError(grpc.StatusCode.UNAVAILABLE, "x", errors.TLS_UNTRUSTED))
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert not policy.retries(AsrError(code, "x", errors._classify(code, "x", False)))


# What gRPC 1.85 says for each connection problem (seen against the real server; tests/test_client.py
# checks the same classification end to end).
GRPC_WORDS = {
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:9: Failed to connect to remote host: Connection refused": (
        False,
        errors.UNREACHABLE,
    ),
    "errors resolving nonexistent.invalid:50051: [field:hostname lookup error:address lookup failed for x: Domain name not found]": (False, errors.DNS),
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:4: Socket closed": (False, errors.PLAINTEXT_TO_TLS),
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: Socket closed": (True, errors.TLS_REFUSED),
    "last error: UNKNOWN: ipv4:127.0.0.1:6: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:"
    "OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK": (True, errors.TLS_UNTRUSTED),
    "last error: UNKNOWN: ipv4:127.0.0.1:7: Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification Check failed.": (
        True,
        errors.TLS_NAME,
    ),
    "last error: UNKNOWN: ipv4:127.0.0.1:8: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:"
    "OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context: OK": (True, errors.TLS_NOT_SUPPORTED),
    "server is shutting down; retry on another replica": (False, errors.SHUTTING_DOWN),
    "models are still loading; retry shortly": (False, errors.LOADING),
}


@pytest.mark.parametrize("details", list(GRPC_WORDS))
def test_connection_problems_get_a_name_and_one_line(details):
    tls, reason = GRPC_WORDS[details]
    error = AsrError(grpc.StatusCode.UNAVAILABLE, details, errors._classify(grpc.StatusCode.UNAVAILABLE, details, tls), "asr:50051")
    assert error.reason == reason
    assert "\n" not in str(error) and "asr:50051" in str(error)
    assert error.is_fatal == (reason in errors.FATAL_REASONS)


def test_error_message_names_attempts_and_request_id():
    error = AsrError(grpc.StatusCode.INVALID_ARGUMENT, "no audio: audio.content is empty", errors.INVALID, "h:1", "rid-1", attempts=1)
    assert str(error) == "INVALID_ARGUMENT: no audio: audio.content is empty [request id rid-1]"
    error = AsrError(grpc.StatusCode.UNAVAILABLE, "server is shutting down", errors.SHUTTING_DOWN, "h:1", attempts=3)
    assert str(error) == "h:1: server is shutting down [after 3 attempts]"


# --- audio and requests ----------------------------------------------------------------------------


def test_what_transcribe_sends(tmp_path):
    wav = encode(speechlike(0.5))
    path = tmp_path / "a.wav"
    path.write_bytes(wav)
    assert recognize_audio(path, 0, None, 0) == (wav, AudioEncoding.CONTAINER, 0, 0)
    assert recognize_audio(str(path), 0, None, 0)[0] == wav
    assert recognize_audio(wav, 0, None, 0) == (wav, AudioEncoding.CONTAINER, 0, 0)
    stereo = np.zeros((800, 2), np.float32)
    data, enc, rate, channels = recognize_audio(stereo, 8000, None, 0)
    assert (len(data), enc, rate, channels) == (800 * 2 * 4, AudioEncoding.FLOAT32, 8000, 2)
    assert recognize_audio(np.zeros(10, np.int16), 16000, None, 0)[1] is AudioEncoding.FLOAT32
    with pytest.raises(ValueError, match="sample_rate_hz"):
        recognize_audio(b"\0\0" * 10, 0, AudioEncoding.LINEAR16, 1)
    with pytest.raises(AsrError, match="cannot read"):
        recognize_audio(tmp_path / "missing.wav", 0, None, 0)
    with pytest.raises(TypeError):
        recognize_audio(12, 0, None, 0)
    config = Recognition(punctuation=False, word_times=True, hotwords=("阿里巴巴", ("达摩院", 20.0))).config(AudioEncoding.LINEAR16, 16000, 2)
    assert config.HasField("enable_automatic_punctuation") and not config.enable_automatic_punctuation
    assert [(h.phrase, h.boost) for h in config.hotwords] == [("阿里巴巴", 0.0), ("达摩院", 20.0)]
    assert config.audio_channel_count == 2 and config.sample_rate_hertz == 16000
    assert not Recognition().config(AudioEncoding.CONTAINER).HasField("enable_automatic_punctuation")


def test_what_stream_sends(tmp_path):
    path = tmp_path / "a.flac"
    path.write_bytes(encode(speechlike(1.0, sr=44100), sr=44100, fmt="FLAC"))
    src = stream_source(path, 0, None, 1, None, 100)
    assert src.pcm == PcmFormat(AudioEncoding.LINEAR16, 16000, 1) and src.realtime
    chunks = list(src.chunks)
    assert len(chunks) == 10 and all(len(c) == 3200 for c in chunks)
    assert not stream_source(path, 0, None, 1, False, 100).realtime
    raw = stream_source(b"\0" * 8000, 8000, AudioEncoding.LINEAR16, 1, None, 250)
    assert [len(c) for c in raw.chunks] == [4000, 4000] and not raw.realtime
    gen = stream_source(iter([b"a", b"b"]), 16000, None, 1, None, 100)
    assert gen.blocking and gen.pcm.encoding is AudioEncoding.LINEAR16
    assert not stream_source([b"ab"], 16000, None, 1, None, 100).blocking
    with pytest.raises(ValueError, match="sample_rate_hz"):
        stream_source(iter([b"ab"]), 0, None, 1, None, 100)
    with pytest.raises(AsrError, match="cannot decode"):
        stream_source(b"this is not audio at all" * 10, 0, None, 1, None, 100)


def test_pacer_releases_audio_at_real_time():
    pacer = Pacer(bytes_per_second=1000, speed=2.0)
    assert 0.45 < pacer.wait_s(1000) <= 0.5  # the first second of audio, at double speed
    assert 0.95 < pacer.wait_s(1000) <= 1.0


def test_a_retried_stream_resends_what_it_sent_and_nothing_twice():
    feed = SyncFeed(iter([b"1", b"2", b"3", b"4"]))
    first = feed.attempt()
    assert [next(first), next(first)] == [b"1", b"2"]  # then the call fails
    second = feed.attempt()
    assert [next(second), next(second), next(second)] == [b"1", b"2", b"3"]
    feed.stop_recording()  # the server answered: no more retries
    assert list(first) == []  # a stale attempt stops
    assert list(second) == [b"4"]


def test_replay_gives_up_past_its_budget():
    log = ReplayLog(max_bytes=5)
    for chunk in (b"abc", b"def"):
        log.record(chunk)
    assert not log.replayable and not log.chunks


def test_source_errors_reach_the_caller():
    def broken():
        yield b"x"
        raise RuntimeError("microphone unplugged")

    feed = SyncFeed(broken())
    attempt = feed.attempt()
    assert next(attempt) == b"x"
    with pytest.raises(RuntimeError):
        next(attempt)
    assert isinstance(feed.log.source_error, RuntimeError)


def test_only_the_newest_attempt_reads_and_it_replays_everything():
    chunks = [bytes([i]) for i in range(20)]
    feed = SyncFeed(iter(chunks))
    first = feed.attempt()
    assert [next(first) for _ in range(3)] == chunks[:3]
    second = feed.attempt()
    assert list(second) == chunks  # the three pulled before, then the rest
    assert list(first) == []  # the refused attempt's generator stops: it must not steal chunks


def test_an_answer_during_the_replay_loses_no_audio():
    # The regression: the server answered the retry while it was still re-sending what the refused
    # attempt had pulled; dropping the record then cut the stream short (an utterance went missing).
    chunks = [bytes([i]) for i in range(10)]
    feed = SyncFeed(iter(chunks))
    refused = feed.attempt()
    [next(refused) for _ in range(4)]
    retry = feed.attempt()
    got = [next(retry)]
    feed.stop_recording()  # the first response of the retry arrives here
    got += list(retry)
    assert got == chunks


def test_the_feed_is_safe_for_two_threads():
    feed = SyncFeed(iter([i.to_bytes(2, "big") for i in range(2000)]))
    got: list[list[bytes]] = [[], []]

    def read(k):
        got[k].extend(feed.attempt())

    threads = [threading.Thread(target=read, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Whichever attempt started last reads everything, in order; the other stopped at some prefix.
    full, other = sorted(got, key=len, reverse=True)
    assert full == [i.to_bytes(2, "big") for i in range(2000)]
    assert other == full[: len(other)]


# --- subtitles and formats -------------------------------------------------------------------------


def transcript(*sentences: Sentence, duration_ms: int = 10_000) -> Transcript:
    return Transcript(" ".join(s.text for s in sentences), tuple(sentences), duration_ms, 5, "rid", "m")


def chars(text: str, start: int, step: int) -> tuple[Word, ...]:
    return tuple(Word(c, start + i * step, start + (i + 1) * step) for i, c in enumerate(c for c in text if c.isalnum()))


def test_srt_and_vtt_parse_back_in_order():
    t = transcript(
        Sentence("今天天气很好。", 100, 1500),
        Sentence("我们去公园散步吧！", 1400, 3200),  # overlaps the previous one: pushed back
        Sentence("  ", 3300, 3400),  # nothing to show
        Sentence("a <b> & c --> d", 3500, 3500),  # zero length: made 1 ms
        Sentence("Over an hour in.", 3_723_004, 3_725_000),
    )
    srt, vtt = to_srt(t), to_vtt(t)
    assert srt.startswith("1\n00:00:00,100 --> 00:00:01,500\n今天天气很好。\n")
    assert "01:02:03,004 --> 01:02:05,000" in srt and "-->" not in srt.split("\n")[-2]
    assert vtt.startswith("WEBVTT\n\n00:00:00.100 --> 00:00:01.500\n")
    assert "a &lt;b&gt; &amp; c --&gt; d" in vtt
    for text in (srt, vtt):
        parsed = parse_cues(text)
        assert len(parsed) == 4
        assert all(c.start_ms < c.end_ms for c in parsed)
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(parsed))
    assert [c.start_ms for c in parse_cues(srt)] == [100, 1500, 3500, 3_723_004]


def test_long_sentences_are_cut_into_cues_by_word_times():
    text = "今天天气很好，我们去公园散步吧。"
    t = transcript(Sentence(text, 0, 2800, chars(text, 0, 200)))
    split = cues(t, max_chars=6)
    assert "".join(c.text for c in split) == text
    assert all(len(c.text) <= 6 for c in split) and len(split) == 3
    assert split[0] == Cue(0, 1000, "今天天气很")
    assert all(a.end_ms <= b.start_ms < b.end_ms for a, b in itertools.pairwise(split))
    # Words that do not match the text: one cue for the sentence, as without max_chars.
    odd = transcript(Sentence("hello there", 0, 900, (Word("bonjour", 0, 400),)))
    assert cues(odd, max_chars=3) == [Cue(0, 900, "hello there")]


def test_no_speech_gives_empty_subtitles_and_text():
    empty = transcript(duration_ms=2000)
    assert to_srt(empty) == "" and to_vtt(empty) == "WEBVTT\n" and render(empty, "text") == "\n"


# --- command-line inputs ---------------------------------------------------------------------------


def test_inputs_expand_from_files_globs_and_directories(tmp_path):
    for name in ("calls/a.wav", "calls/b.mp3", "calls/deep/c.flac", "calls/notes.txt", "d.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    jobs = expand_inputs([str(tmp_path / "calls"), str(tmp_path / "*.wav"), str(tmp_path / "calls" / "a.wav"), str(tmp_path / "missing.ogg")])
    assert [j.name for j in jobs] == ["a.wav", "b.mp3", "deep/c.flac", "d.wav", "missing.ogg"]  # a.wav only once
    assert [j.name for j in expand_inputs([str(tmp_path / "**" / "*.flac")])] == ["c.flac"]
    with pytest.raises(UsageError, match="no files match"):
        expand_inputs([str(tmp_path / "*.opus")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no audio files under"):
        expand_inputs([str(tmp_path / "empty")])
    outs = output_paths(jobs, tmp_path / "out", "srt")
    assert outs[2] == tmp_path / "out" / "deep" / "c.srt"
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.wav").write_bytes(b"x")
    with pytest.raises(UsageError, match="would both be written"):
        output_paths(expand_inputs([str(tmp_path / "calls" / "a.wav"), str(tmp_path / "x" / "a.wav")]), tmp_path, "vtt")


def test_interim_lines_fit_the_terminal_by_display_width():
    assert display_width("abc") == 3 and display_width("中文") == 4
    assert fit_tail("今天天气很好", 7) == "…气很好"  # the end, where interim text grows
    assert display_width(fit_tail("今天天气很好" * 10, 41)) <= 41
    assert fit_tail("short", 80) == "short"
