"""Fixed audio sets for the benchmarks, made with numpy (same every run: seeded).

- ``short``: distinct 2 s utterances (voiced-sounding harmonics with a syllable-rate envelope);
- ``long``: 5-minute recordings of speech turns separated by pauses.

The same generator idea as tests/helpers.py, copied so that the benchmark does not depend on
the test suite's internals.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SAMPLE_RATE_HZ = 16000


def speechlike(seconds: float, seed: int = 0, f0: float = 140.0, sr: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Voiced-sounding audio, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    noise = 0.02 * rng.standard_normal(len(t))
    x = 0.25 * voiced * envelope + noise
    return (x / np.max(np.abs(x)) * 0.6).astype(np.float32)


def wav_bytes(samples: np.ndarray, sr: int = SAMPLE_RATE_HZ) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@dataclass(frozen=True)
class Clip:
    name: str
    wav: bytes
    seconds: float


@dataclass(frozen=True)
class AudioSet:
    name: str
    description: str
    clips: tuple[Clip, ...]

    @property
    def mean_seconds(self) -> float:
        return float(np.mean([c.seconds for c in self.clips]))


def short_set(count: int = 16, seconds: float = 2.0) -> AudioSet:
    clips = []
    for i in range(count):
        samples = speechlike(seconds, seed=1000 + i, f0=100.0 + 12.0 * i)
        clips.append(Clip(f"short-{i:02d}", wav_bytes(samples), len(samples) / SAMPLE_RATE_HZ))
    return AudioSet("short", f"{count} distinct {seconds:g} s utterances (16 kHz 16-bit WAV)", tuple(clips))


def long_recording(seconds: float = 300.0, seed: int = 0) -> np.ndarray:
    """Speech turns of 2-12 s separated by 0.5-4 s of silence, cut to exactly ``seconds``."""
    rng = np.random.default_rng(seed)
    total = int(seconds * SAMPLE_RATE_HZ)
    parts, length, i = [], 0, 0
    while length < total:
        turn = speechlike(float(rng.uniform(2.0, 12.0)), seed=seed * 1000 + i, f0=float(rng.uniform(100, 220)))
        pause = np.zeros(int(rng.uniform(0.5, 4.0) * SAMPLE_RATE_HZ), np.float32)
        parts += [turn, pause]
        length += len(turn) + len(pause)
        i += 1
    return np.concatenate(parts)[:total]


def long_set(count: int = 2, seconds: float = 300.0) -> AudioSet:
    clips = []
    for i in range(count):
        samples = long_recording(seconds, seed=i + 1)
        clips.append(Clip(f"long-{i}", wav_bytes(samples), len(samples) / SAMPLE_RATE_HZ))
    return AudioSet("long", f"{count} distinct {seconds:g} s recordings, speech turns of 2-12 s with 0.5-4 s pauses", tuple(clips))


AUDIO_SETS = {"short": short_set, "long": long_set}
