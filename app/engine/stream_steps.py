"""The steps of live streams' models, many streams per call: streaming VAD and online ASR.

Shared by the engine's model threads and the streaming worker processes (``stream_workers.py``).

Online ASR: FunASR's streaming Paraformer keeps per-stream state in nested caches of varying
shapes; its steps run one after the other (one call for all still saves a hand-off per stream).

Streaming VAD, where the network runs once for all streams: FunASR's streaming VAD takes one stream per call (``FsmnVADStreaming.inference`` asserts batch
size 1). A step is the frontend (fbank, LFR, CMVN: per stream, it keeps per-stream state), the
FSMN network (a stack of small matrix products: per-call overhead, nearly free per extra row),
and FSMN's endpoint state machine (per stream, in Python). Here the frontend and the state machine
stay per stream and remain FunASR's own code; the network runs once over the steps of all streams
whose feature chunks have the same length, each stream keeping its own FSMN memory (the network's
cache is per-layer tensors with a batch dimension, so they stack and split exactly).

The loop over a step's 200 ms sub-chunks follows ``FsmnVADStreaming.inference`` for streaming
input with a fixed end-of-speech silence (the only way the engine calls it); tests check the
events equal FunASR's own per-stream calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from funasr.utils.load_utils import extract_fbank

log = logging.getLogger(__name__)

# FunASR's streaming settings: [look-back, chunk, look-ahead] in 60 ms frames (600 ms steps).
DEFAULT_CHUNK_SIZE = (0, 10, 5)
STEP_MS = 200  # FunASR's chunk_size for streaming VAD: a call's audio is cut into sub-chunks of this
_PRECOMPUTED = "_paraformer_asr_scores"  # key in a stream's encoder cache: scores of this sub-chunk, already computed


@dataclass
class VadStep:
    """New audio for one stream's VAD. ``cache`` is the stream's FunASR VAD cache ({} when new)."""

    cache: dict
    samples: np.ndarray
    is_final: bool
    max_end_silence_ms: int | None = None  # None: the model's own


@dataclass
class OnlineStep:
    """New audio for one stream's online model. ``cache`` is the stream's FunASR cache ({} when new)."""

    cache: dict
    samples: np.ndarray
    is_final: bool
    chunk_size: tuple[int, int, int] = DEFAULT_CHUNK_SIZE


def run_online_steps(online, steps: list[OnlineStep]) -> list[str | Exception]:
    """Feed each stream's online model (a FunASR AutoModel); per stream, the text it decoded ('' until a chunk fills) or its error.

    FunASR's streaming Paraformer decodes one stream per call, so the steps run one after the other.
    """
    results: list[str | Exception] = []
    for step in steps:
        try:
            result = online.generate(
                input=step.samples,
                cache=step.cache,
                is_final=step.is_final,
                chunk_size=list(step.chunk_size),
                encoder_chunk_look_back=4,
                decoder_chunk_look_back=1,
                disable_pbar=True,
            )
            results.append(result[0].get("text", "") if result else "")
        except Exception as error:  # reported to that stream's caller alone
            results.append(error)
        if step.is_final:
            step.cache.clear()
    return results


def run_vad_steps(vad, default_end_silence_ms: int, steps: list[VadStep]) -> list[list[tuple[int, int]] | Exception]:
    """Feed each stream's streaming VAD (a FunASR AutoModel); per stream, its events [(begin_ms, end_ms)] (-1: not yet) or its error.

    ``default_end_silence_ms`` is the model's own, read at load: FunASR overwrites the model's
    option with each new stream's setting.
    """
    for step in steps:
        if step.max_end_silence_ms is None:
            step.max_end_silence_ms = default_end_silence_ms
    with torch.no_grad():
        results = _run_steps(vad.model, vad.kwargs["frontend"], vad.kwargs.get("device", "cpu"), steps)
    for step in steps:
        if step.is_final:
            step.cache.clear()
    return results


def accept_precomputed_scores(vad_model) -> None:
    """Let the FSMN network return scores computed for this stream in a batch.

    FunASR's ``ComputeScores`` calls ``self.encoder(feats, cache=cache["encoder"])`` and then
    updates the stream's statistics. Answering that call from the stream's own cache keeps all of
    FunASR's bookkeeping; a call without precomputed scores runs the network as before.
    """
    encoder = vad_model.encoder
    if getattr(encoder, "_accepts_precomputed", False):
        return
    network = encoder.forward

    def forward(input, cache=None):
        if cache is not None and _PRECOMPUTED in cache:
            return cache.pop(_PRECOMPUTED)
        return network(input, cache)

    encoder.forward = forward
    encoder._accepts_precomputed = True


@dataclass
class _Stream:
    step: VadStep
    chunks: list[torch.Tensor] = field(default_factory=list)
    rest: torch.Tensor | None = None  # audio kept for the next call (less than a sub-chunk)
    events: list[tuple[int, int]] = field(default_factory=list)
    error: Exception | None = None
    feats: torch.Tensor | None = None
    waveform: torch.Tensor | None = None


def _run_steps(vad_model, frontend, device: str, steps: list[VadStep]) -> list[list[tuple[int, int]] | Exception]:
    stride = STEP_MS * frontend.fs // 1000
    streams = [_Stream(step) for step in steps]
    for s in streams:
        _guarded(s, _cut, s, stride, vad_model)

    for i in range(max((len(s.chunks) for s in streams), default=0)):
        active = [s for s in streams if s.error is None and i < len(s.chunks)]
        for s in active:
            _guarded(s, _features, s, i, frontend, device)
        _score_together([s for s in active if s.error is None and s.feats.numel() > 0], vad_model)
        for s in active:
            _guarded(s, _detect, s, i, vad_model)

    results: list[list[tuple[int, int]] | Exception] = []
    for s in streams:
        if s.error is not None:
            results.append(s.error)
            continue
        s.step.cache["prev_samples"] = s.rest
        if s.step.is_final and s.chunks:
            vad_model.init_cache(s.step.cache)
        results.append(s.events)
    return results


def _guarded(stream: _Stream, fn, *args) -> None:
    """One stream's failure is that stream's alone."""
    if stream.error is not None:
        return
    try:
        fn(*args)
    except Exception as error:
        stream.error = error


def _cut(s: _Stream, stride: int, vad_model) -> None:
    """The step's audio, after what the last call kept, in sub-chunks (``FsmnVADStreaming.inference``)."""
    step = s.step
    if not step.cache:
        vad_model.init_cache(step.cache, max_end_silence_time=step.max_end_silence_ms)
    if len(step.samples) == 0:
        # FunASR returns at once for empty input, even a final one (no last-frame detection).
        s.rest = step.cache["prev_samples"]
        return
    audio = torch.cat((step.cache["prev_samples"], torch.from_numpy(np.ascontiguousarray(step.samples, dtype=np.float32))))
    n = len(audio) // stride + int(step.is_final)
    m = len(audio) % stride * (1 - int(step.is_final))
    s.chunks = [audio[i * stride : (i + 1) * stride] for i in range(n)]
    s.rest = audio[-m:] if m > 0 else torch.empty(0)


def _features(s: _Stream, i: int, frontend, device: str) -> None:
    cache = s.step.cache
    final = s.step.is_final and i == len(s.chunks) - 1
    extra = {"return_waveform": True} if getattr(frontend, "supports_aligned_waveforms", False) else {}
    speech, _ = extract_fbank([s.chunks[i]], data_type="sound", frontend=frontend, cache=cache["frontend"], is_final=final, **extra)
    s.feats = speech.to(device=device)
    waveform = cache["frontend"].get("aligned_waveforms")
    if waveform is None or waveform.numel() == 0:
        waveform = cache["frontend"].get("waveforms")
    if s.feats.numel() > 0 and (waveform is None or waveform.numel() == 0):
        raise RuntimeError("streaming VAD frontend must provide aligned_waveforms or waveforms when emitting feature frames")
    s.waveform = waveform


def _score_together(streams: list[_Stream], vad_model) -> None:
    """One network call per group of streams with equally long feature chunks and alike caches."""
    groups: dict[tuple, list[_Stream]] = {}
    for s in streams:
        layers = tuple(sorted(k for k in s.step.cache["encoder"] if k != _PRECOMPUTED))
        groups.setdefault((s.feats.shape[1], layers), []).append(s)
    for (_, layers), group in groups.items():
        if len(group) == 1:
            continue  # alone, FunASR's own call is as cheap
        caches = [s.step.cache["encoder"] for s in group]
        stacked = {name: torch.cat([c[name] for c in caches]) for name in layers}
        try:
            scores = vad_model.encoder(torch.cat([s.feats for s in group]), cache=stacked)
        except Exception as error:
            log.warning("batched streaming VAD network call failed (%s); running %d streams one by one", type(error).__name__, len(group))
            continue
        for j, cache in enumerate(caches):
            for name, tensor in stacked.items():
                cache[name] = tensor[j : j + 1].clone()  # a copy: the batch's tensors are freed
            cache[_PRECOMPUTED] = scores[j : j + 1]


def _detect(s: _Stream, i: int, vad_model) -> None:
    cache = s.step.cache
    final = s.step.is_final and i == len(s.chunks) - 1
    try:
        segments = vad_model.forward(feats=s.feats, waveform=s.waveform, is_final=final, cache=cache, is_streaming_input=True)
    finally:
        cache["encoder"].pop(_PRECOMPUTED, None)
        s.feats = s.waveform = None
    for batch in segments:
        s.events.extend((int(b), int(e)) for b, e in batch)
