"""The console script as users run it: serve from a local model directory, transcribe, health, failures."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import encode, utterances

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASR_")}
    # The model hub "lives" on a closed loopback port: no test reaches the network.
    env.update(MODELSCOPE_DOMAIN="127.0.0.1:9", MODELSCOPE_CACHE=str(tmp_path / "ms-cache"), HOME=str(tmp_path))
    return env


def wait_serving(port: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
        probe = subprocess.run([*CLI, "health", "--target", f"127.0.0.1:{port}", "--timeout", "2"], capture_output=True, text=True)
        if probe.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError("server did not become SERVING")


def test_serve_local_model_directory_then_transcribe(tiny_models, tmp_path):
    port = free_port()
    wav = tmp_path / "a.wav"
    wav.write_bytes(encode(utterances(("silence", 0.3), ("speech", 2.0), ("silence", 0.3))))
    cmd = [
        *CLI,
        "serve",
        "--asr-model",
        str(tiny_models.asr),
        "--vad-model",
        str(tiny_models.vad),
        "--punc-model",
        str(tiny_models.punc),
        "--online-model",
        str(tiny_models.online),
        "--allow-random-weights",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--metrics-port",
        "0",
        "--device",
        "cpu",
        "--log-format",
        "json",
    ]
    proc = subprocess.Popen(cmd, env=offline_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_serving(port, proc)
        text = subprocess.run([*CLI, "transcribe", str(wav), "--target", f"127.0.0.1:{port}"], capture_output=True, text=True, check=True)
        assert text.stdout.strip()
        as_json = subprocess.run(
            [*CLI, "transcribe", str(wav), "--target", f"127.0.0.1:{port}", "--json", "--words"], capture_output=True, text=True, check=True
        )
        response = json.loads(as_json.stdout)
        assert response["transcript"] == text.stdout.strip()
        assert response["results"][0]["alternatives"][0]["words"]
        bad = subprocess.run([*CLI, "transcribe", str(tmp_path / "missing.wav"), str(wav), "--target", f"127.0.0.1:{port}"], capture_output=True, text=True)
        assert bad.returncode == 1 and "cannot read" in bad.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("rpc") == "Recognizer.Recognize"]
    assert access and all(entry["request_id"] != "-" and entry["code"] == "OK" for entry in access)
    assert any("RANDOM WEIGHTS" in entry["msg"] for entry in lines)


def test_unreachable_hub_fails_fast_with_one_line(tmp_path):
    start = time.monotonic()
    proc = subprocess.run(
        [*CLI, "serve", "--port", "0", "--metrics-port", "0", "--model-cache-dir", str(tmp_path / "cache")],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 3
    reason = [line for line in proc.stderr.splitlines() if "cannot start" in line]
    assert len(reason) == 1 and "cannot reach the model hub" in reason[0] and "--asr-model" in reason[0]
    assert "not registered" not in proc.stderr
    assert elapsed < 60  # seconds of imports, not a retry loop


def test_fetch_models_reports_the_reason(tmp_path):
    proc = subprocess.run(
        [*CLI, "fetch-models", "--offline", "--model-cache-dir", str(tmp_path)],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "not in the model cache" in proc.stderr


def test_serve_never_falls_back_to_random_weights(tiny_models, tmp_path):
    proc = subprocess.run(
        [
            *CLI,
            "serve",
            "--asr-model",
            str(tiny_models.asr),
            "--vad-model",
            "none",
            "--punc-model",
            "none",
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 3 and "RANDOM demo weights" in proc.stderr


def test_configuration_errors_exit_2(tmp_path):
    proc = subprocess.run([*CLI, "serve", "--device", "tpu"], env=offline_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "device must be" in proc.stderr
    env = offline_env(tmp_path) | {"ASR_MAX_BATCH_SIZE": "lots"}
    proc = subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "ASR_MAX_BATCH_SIZE" in proc.stderr


def test_every_help_page_prints(capsys):
    """`--help` formats every setting's help text (a stray % once crashed `serve --help`)."""
    from dataclasses import fields

    from app.cli import build_parser
    from app.config import Settings

    for argv in ([], ["serve"], ["fetch-models"], ["transcribe"], ["stream"], ["health"], ["build-demo-models"], ["config-reference"]):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*argv, "--help"])
        assert done.value.code == 0, argv
        page = capsys.readouterr().out
        assert page.startswith("usage:"), argv
    serve_page = subprocess.run([*CLI, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    missing = [f.name for f in fields(Settings) if Settings.flag_name(f.name) not in serve_page]
    assert not missing, missing
