"""`paraformer-asr transcribe | stream | health` as users run them, against the real server."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.client.formats import parse_cues
from tests.certs import make_pki
from tests.helpers import encode, utterances

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "app.cli"]
TWO = utterances(("silence", 0.5), ("speech", 2.0), ("silence", 1.5), ("speech", 1.5), ("silence", 1.2))
ONE = utterances(("silence", 0.3), ("speech", 1.2), ("silence", 0.8))


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PARAFORMER_ASR_", "GRPC_"))}
    proc = subprocess.run([*CLI, *args], capture_output=True, timeout=timeout, env=base | (env or {}))
    # Decoded by hand: text mode would turn the carriage returns of interim results into newlines.
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """calls/ with three files in two formats and a subdirectory, plus notes that are not audio."""
    root = tmp_path_factory.mktemp("calls")
    (root / "deep").mkdir()
    (root / "a.wav").write_bytes(encode(TWO))
    (root / "b.flac").write_bytes(encode(ONE, fmt="FLAC"))
    (root / "deep" / "c.wav").write_bytes(encode(ONE))
    (root / "notes.txt").write_text("not audio")
    return root


def test_transcribe_one_file_as_text_json_srt_and_vtt(server, audio):
    wav = str(audio / "a.wav")
    text = run("transcribe", wav, "--target", server.target)
    assert text.returncode == 0, text.stderr
    transcript = text.stdout.strip()
    assert transcript and "\n" not in transcript and not text.stderr
    as_json = json.loads(run("transcribe", wav, "--target", server.target, "--json", "--words").stdout)
    assert as_json["transcript"] == transcript and as_json["file"] == wav
    assert as_json["results"][0]["alternatives"][0]["words"] and isinstance(as_json["audioDurationMs"], int)
    for fmt in ("srt", "vtt"):
        proc = run("transcribe", wav, "--target", server.target, "--format", fmt)
        assert proc.returncode == 0, proc.stderr
        if fmt == "vtt":
            assert proc.stdout.startswith("WEBVTT\n\n")
        else:
            assert proc.stdout.startswith("1\n00:00:")
        cues = parse_cues(proc.stdout)
        assert cues and "".join(c.text for c in cues) == transcript.replace(" ", "")
        assert all(c.start_ms < c.end_ms for c in cues)
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(cues))
        assert cues[-1].end_ms <= 6700
    short = parse_cues(run("transcribe", wav, "--target", server.target, "-f", "srt", "--max-cue-chars", "8").stdout)
    assert len(short) > len(cues) and all(len(c.text) <= 8 for c in short)
    assert [c.start_ms for c in short] == sorted(c.start_ms for c in short)


def test_transcribe_a_directory_and_a_glob_concurrently_in_order(server, audio):
    proc = run("transcribe", str(audio), str(audio / "*.flac"), "--target", server.target, "-j", "3", "--progress")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(audio / "a.wav"), str(audio / "b.flac"), str(audio / "deep" / "c.wav")]
    assert all(line.split("\t")[1] for line in lines)
    progress = [line for line in proc.stderr.splitlines() if "files" in line]
    assert len(progress) == 3 and "3/3 files" in progress[-1] and "100%" in progress[-1]
    jsonl = run("transcribe", str(audio), "--target", server.target, "--format", "json")
    objects = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [Path(o["file"]).name for o in objects] == ["a.wav", "b.flac", "c.wav"]
    assert [o["transcript"] for o in objects] == [line.split("\t")[1] for line in lines]


def test_subtitles_for_many_files_go_to_an_output_directory(server, audio, tmp_path):
    refused = run("transcribe", str(audio), "--target", server.target, "-f", "vtt")
    assert refused.returncode == 2 and "--output-dir" in refused.stderr
    out = tmp_path / "subs"
    proc = run("transcribe", str(audio), "--target", server.target, "-f", "vtt", "-o", str(out))
    assert proc.returncode == 0 and not proc.stdout, proc.stderr
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.vtt", "b.vtt", "deep/c.vtt"]
    for path in out.rglob("*.vtt"):
        text = path.read_text()
        cues = parse_cues(text)
        assert text.startswith("WEBVTT") and cues
        assert all(c.start_ms < c.end_ms for c in cues)
        assert all(a.end_ms <= b.start_ms for a, b in itertools.pairwise(cues))


def test_failures_give_a_summary_and_exit_1(server, audio, tmp_path):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not an mp3" * 50)
    proc = run("transcribe", str(audio / "a.wav"), str(tmp_path / "missing.wav"), str(junk), "--target", server.target)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"{audio / 'a.wav'}\t") and len(proc.stdout.splitlines()) == 1
    assert "paraformer-asr: 2 of 3 files failed:" in proc.stderr
    assert f"{tmp_path / 'missing.wav'}: cannot read" in proc.stderr
    assert f"{junk}: INVALID_ARGUMENT: " in proc.stderr and "request id" in proc.stderr
    nothing = run("transcribe", str(tmp_path / "*.opus"), "--target", server.target)
    assert nothing.returncode == 2 and "no files match" in nothing.stderr


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no gRPC core logging, no traceback
    return lines[0]


def test_an_unreachable_server_is_one_clear_line(audio):
    target = f"127.0.0.1:{closed_port()}"
    start = time.monotonic()
    proc = run("transcribe", str(audio), "--target", target, "--retries", "1")
    assert proc.returncode == 1 and time.monotonic() - start < 20
    line = one_line(proc)
    assert f"cannot reach {target}" in line and "0 of 3 files transcribed" in line
    health = run("health", "--target", target)
    assert health.returncode == 2 and "cannot reach" in one_line(health)
    stream = run("stream", str(audio / "b.flac"), "--target", target, "--retries", "0")
    assert stream.returncode == 1 and "cannot reach" in one_line(stream)


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def test_tls_mutual_tls_and_their_mistakes(make_server, pki, audio, tmp_path):
    files = pki.write(tmp_path)
    (tmp_path / "client.pem").write_bytes(pki.client.cert)
    (tmp_path / "client.key").write_bytes(pki.client.key)
    (tmp_path / "other-ca.pem").write_bytes(pki.other_ca.cert)
    srv = make_server(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]), tls_client_ca_file=str(files["ca"]))
    wav = str(audio / "b.flac")
    good = ["--ca-file", str(files["ca"]), "--cert-file", str(tmp_path / "client.pem"), "--key-file", str(tmp_path / "client.key")]
    ok = run("transcribe", wav, "--target", srv.target, *good)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    assert run("health", "--target", srv.target, *good).stdout.strip() == "SERVING"
    mistakes = {
        "plaintext": ([], "probably requires TLS", "--tls"),
        "untrusted": (["--ca-file", str(tmp_path / "other-ca.pem")], "not signed by a CA this client trusts", "--ca-file"),
        "wrong name": ([*good, "--server-name", "asr.example.com"], "not valid for the host name", "--server-name"),
        "no client certificate": (["--ca-file", str(files["ca"])], "server refused it", "--cert-file"),
    }
    for name, (flags, what, hint) in mistakes.items():
        proc = run("transcribe", wav, "--target", srv.target, *flags)
        line = one_line(proc)
        assert proc.returncode == 1 and what in line and hint in line, f"{name}: {line}"
    missing = run("transcribe", wav, "--target", srv.target, "--ca-file", str(tmp_path / "nope.pem"))
    assert missing.returncode == 2 and "cannot read the CA certificate file" in one_line(missing)


def test_tokens_from_a_file_the_environment_or_a_flag(make_server, audio, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("sesame\n")
    srv = make_server(auth_tokens_file=str(tokens))
    wav = str(audio / "b.flac")
    (tmp_path / "mine").write_text("sesame\n")
    assert run("transcribe", wav, "--target", srv.target, "--token-file", str(tmp_path / "mine")).returncode == 0
    assert run("transcribe", wav, env={"PARAFORMER_ASR_TARGET": srv.target, "PARAFORMER_ASR_TOKEN": "sesame"}).returncode == 0
    wrong = run("transcribe", wav, "--target", srv.target, "--token", "open-up")
    line = one_line(wrong)
    assert wrong.returncode == 1 and "refused the credentials: invalid credentials" in line and "--token-file" in line
    missing = run("transcribe", wav, "--target", srv.target)
    assert "missing credentials" in one_line(missing)
    assert run("health", "--target", srv.target).stdout.strip() == "SERVING"  # health stays open


def test_health_for_scripts(make_server, server):
    assert run("health", "--target", server.target).stdout == "SERVING\n"
    srv = make_server(load=False)
    proc = run("health", "--target", srv.target)
    assert proc.returncode == 1 and proc.stdout == "NOT_SERVING\n"
    proc = run("health", "--target", srv.target, "--wait", "0.5")
    assert proc.returncode == 1 and proc.stdout == "NOT_SERVING\n"


def test_stream_plays_a_file_at_real_time_pace(server, audio, tmp_path):
    mp3 = tmp_path / "two.ogg"
    mp3.write_bytes(encode(TWO, fmt="OGG", subtype="VORBIS"))
    start = time.monotonic()
    proc = run("stream", str(mp3), "--target", server.target)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert elapsed >= 6.5  # 6.7 s of audio played as it happens (plus the CLI's start-up)
    lines = proc.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 3  # two finals, each on a line of its own
    for line in lines[:2]:
        assert line.startswith("\r")  # interim results were written over, in place
        parts = line.split("\r")
        assert len(parts) > 2 and all(parts[1:])
        final = parts[-1].rstrip()
        assert final and final.endswith("。")


def test_stream_options(server, audio):
    wav = str(audio / "a.wav")
    fast = run("stream", wav, "--target", server.target, "--speed", "8", "--timestamps", "--no-interim")
    assert fast.returncode == 0, fast.stderr
    finals = fast.stdout.splitlines()
    assert len(finals) == 2 and "\r" not in fast.stdout
    assert finals[0].startswith("[00:00:00.") and " --> 00:00:0" in finals[0]
    as_json = run("stream", wav, "--target", server.target, "--no-realtime", "--json")
    items = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [i["event"] for i in items if "event" in i] == ["SPEECH_BEGIN", "SPEECH_END"] * 2
    assert [i["utteranceIndex"] for i in items if i.get("isFinal")] == [0, 1]
    assert any(i.get("isFinal") is False for i in items)
    bad = run("stream", wav, "--target", server.target, "--speed", "0")
    assert bad.returncode == 2
