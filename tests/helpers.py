"""Audio makers and a real in-process server for the tests."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import soundfile as sf

from app.config import Settings
from app.engine.tiny_models import DemoModelDirs

SR = 16000


def speechlike(seconds: float, sr: int = SR, seed: int = 0, f0: float = 140.0) -> np.ndarray:
    """Voiced-sounding audio (harmonics with a syllable-rate envelope), float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    noise = 0.02 * rng.standard_normal(len(t))
    x = 0.25 * voiced * envelope + noise
    return (x / np.max(np.abs(x)) * 0.6).astype(np.float32)


def utterances(*parts: tuple[str, float], sr: int = SR, seed: int = 0) -> np.ndarray:
    """Concatenate ("speech", s) and ("silence", s) parts."""
    out = []
    for i, (kind, seconds) in enumerate(parts):
        out.append(speechlike(seconds, sr, seed + i) if kind == "speech" else np.zeros(int(seconds * sr), np.float32))
    return np.concatenate(out)


def encode(samples: np.ndarray, sr: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def ffmpeg_encode(samples: np.ndarray, sr: int, ext: str, tmp: Path) -> bytes:
    """mp3 / m4a / opus through the ffmpeg command line (a real encoder, as users' files are made)."""
    if shutil.which("ffmpeg") is None:
        raise AssertionError("ffmpeg is missing: run `bash scripts/setup.sh` (it installs Debian's ffmpeg)")
    src, dst = tmp / "src.wav", tmp / f"out.{ext}"
    sf.write(src, samples, sr, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(src), str(dst)], check=True)
    return dst.read_bytes()


def settings_for(models: DemoModelDirs, **overrides) -> Settings:
    values = dict(
        asr_model=str(models.asr),
        vad_model=str(models.vad),
        punc_model=str(models.punc),
        online_model=str(models.online),
        allow_random_weights=True,
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        device="cpu",
        torch_threads=1,
        vad_processes=0,  # each worker process takes seconds to start; tests/test_vad_pool.py covers them
        stream_processes=0,  # the same; tests/test_stream_workers.py covers them
        model_processes="off",  # the same, and fault hooks may be lambdas; tests/test_model_process.py covers them
        shutdown_grace_s=5.0,
        log_format="text",
        model_name="tiny",
    )
    values.update(overrides)
    return Settings(**values).validate()


class ServerThread:
    """The real server (start_server + load_pipeline) on its own event loop in a thread."""

    def __init__(self, settings: Settings, load: bool = True):
        self.settings = settings
        self._load = load
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-server", daemon=True)
        self.running = None

    def start(self) -> ServerThread:
        from app.transport.server import start_server

        self._thread.start()
        self.running = self.call(start_server(self.settings))
        if self._load:
            self.load()
        return self

    def load(self) -> None:
        from app.transport.server import load_models

        self.call(load_models(self.running))

    @property
    def pipeline(self):
        """The default model's pipeline (after a reload: the new version)."""
        service = self.running.service
        return service.pipeline() if service.phase.value == "serving" else None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def call(self, coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, grace: float = 0) -> None:
        async def go():
            self.running.service.drain()
            await self.running.stop(grace)
            for pipeline in self.running.service.pipelines:
                await pipeline.close()

        try:
            self.call(go())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def recognize_through_a_worker_death(target: str, kill, replaced) -> tuple[list, list, list]:
    """Recognize, ``kill()`` a worker, then Recognize until a call succeeds once ``replaced()``.

    Returns (results before, results after, [(code, details) of each failed call in between]).
    """
    import time

    import grpc

    from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc

    audio = encode(utterances(("speech", 1.0), ("silence", 0.6), ("speech", 0.8)))
    request = asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=audio))
    failed, after = [], None
    with grpc.insecure_channel(target) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        before = list(stub.Recognize(request, timeout=30).results)
        kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                after = list(stub.Recognize(request, timeout=30).results)
            except grpc.RpcError as e:
                failed.append((e.code(), e.details()))
                continue
            if replaced():
                break
    return before, after, failed
