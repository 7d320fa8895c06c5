"""The FunASR engine with tiny real models: loading, refusals, determinism, batching equivalence."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
import torch

from app.engine.funasr_engine import FunasrEngine
from app.engine.loader import ModelLoadError
from app.engine.tiny_models import RANDOM_WEIGHTS_MARKER
from tests.helpers import settings_for, speechlike


def test_loads_through_automodel_and_verifies_every_tensor(engine):
    assert engine.has_vad and engine.has_punctuation and engine.has_online
    assert set(engine.report.load_seconds) == {"asr", "vad", "punc", "online"}
    assert all(n > 10 for n in engine.report.tensors_verified.values())
    assert set(engine.report.warmup_seconds) == {"asr", "vad", "punc", "online"}
    assert engine.random_weights


def test_transcription_is_deterministic_and_batching_changes_nothing(engine):
    segments = [speechlike(s, seed=i) for i, s in enumerate((1.0, 2.5, 0.6, 1.7))]

    async def go():
        alone = [(await engine.transcribe([seg]))[0] for seg in segments]
        batched = await engine.transcribe(segments)
        again = await engine.transcribe(segments)
        return alone, batched, again

    alone, batched, again = asyncio.run(go())
    assert batched == again
    assert [h.tokens for h in batched] == [h.tokens for h in alone]
    assert len({h.tokens for h in batched}) > 1  # distinct inputs give distinct outputs
    for hyp in batched:
        assert hyp.tokens and hyp.token_times_ms is not None and len(hyp.token_times_ms) == len(hyp.tokens)


def test_vad_splits_speech_at_silence(engine):
    audio = np.concatenate([np.zeros(8000), speechlike(1.5), np.zeros(32000), speechlike(1.0, seed=3), np.zeros(8000)])
    spans = asyncio.run(engine.detect_speech(audio.astype(np.float32), max_end_silence_ms=500))
    assert len(spans) == 2
    (s1, e1), (s2, e2) = spans
    # Speech at 0.5-2.0 s and 4.0-5.0 s; FunASR pads segments by up to ~300 ms of look-back/ahead.
    assert 100 <= s1 <= 600 and 1900 <= e1 <= 2600, spans
    assert 3600 <= s2 <= 4100 and 4900 <= e2 <= 5500, spans


def test_per_request_vad_setting_does_not_leak(engine):
    default = engine._vad_default_end_silence_ms
    asyncio.run(engine.detect_speech(speechlike(1.0), max_end_silence_ms=300))
    asyncio.run(engine.detect_speech(speechlike(1.0)))
    assert engine._vad.model.vad_opts.max_end_silence_time == default


def test_punctuation_aligns_with_tokens(engine):
    tokens = ["今", "天", "天", "气", "很", "好", "我", "们", "去", "公", "园"]
    (marks,) = asyncio.run(engine.punctuate_many([tokens]))
    assert len(marks) == len(tokens)
    assert all(m in ("", "，", "。", "？", "、") for m in marks)


def _copy(models, tmp_path):
    dst = tmp_path / "asr"
    shutil.copytree(models.asr, dst)
    return dst


def test_refuses_missing_weights_file(tiny_models, tmp_path):
    broken = _copy(tiny_models, tmp_path)
    (broken / "model.pt").unlink()
    with pytest.raises(ModelLoadError, match="has no weights file"):
        FunasrEngine.load(settings_for(tiny_models, asr_model=str(broken)))


def test_refuses_checkpoint_with_missing_tensors(tiny_models, tmp_path):
    broken = _copy(tiny_models, tmp_path)
    state = torch.load(broken / "model.pt")
    del state[next(k for k in state if k.startswith("decoder."))]
    torch.save(state, broken / "model.pt")
    with pytest.raises(ModelLoadError, match="1 tensors missing"):
        FunasrEngine.load(settings_for(tiny_models, asr_model=str(broken)))


def test_refuses_checkpoint_with_wrong_shapes(tiny_models, tmp_path):
    broken = _copy(tiny_models, tmp_path)
    state = torch.load(broken / "model.pt")
    key = next(k for k in state if k.endswith("output_layer.weight"))
    state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
    torch.save(state, broken / "model.pt")
    with pytest.raises(ModelLoadError, match="not loaded"):
        FunasrEngine.load(settings_for(tiny_models, asr_model=str(broken)))


def test_refuses_demo_weights_unless_allowed(tiny_models):
    assert (tiny_models.asr / RANDOM_WEIGHTS_MARKER).exists()
    with pytest.raises(ModelLoadError, match="RANDOM demo weights"):
        FunasrEngine.load(settings_for(tiny_models, allow_random_weights=False))


def test_missing_directory_and_offline_hub_id_fail_with_one_line(tiny_models, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        FunasrEngine.load(settings_for(tiny_models, asr_model=str(tmp_path / "nope")))
    with pytest.raises(ModelLoadError, match="not in the model cache") as err:
        FunasrEngine.load(settings_for(tiny_models, asr_model="iic/not-here", offline=True, model_cache_dir=str(tmp_path)))
    assert "\n" not in str(err.value)


def test_cuda_request_without_cuda_is_refused(tiny_models):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        FunasrEngine.load(settings_for(tiny_models, device="cuda:0"))


def test_loaded_models_are_kept_out_of_the_cyclic_gc_until_the_engine_closes(tiny_models):
    import gc
    import weakref

    eng = FunasrEngine.load(settings_for(tiny_models, vad_model="none", punc_model="none", online_model="none"))
    asr = weakref.ref(eng._calls["asr"].model)
    assert gc.get_freeze_count() > 10_000  # the models (and all else alive) skip full collections
    eng.close()
    assert gc.get_freeze_count() == 0  # thawed, so the model's reference cycles could be freed
    assert asr() is None


def test_model_threads_run_at_a_lower_cpu_priority_than_the_server(tiny_models):
    import os

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)  # on Linux: the calling thread's own value

    eng = FunasrEngine.load(settings_for(tiny_models, vad_model="none", online_model="none", inference_nice=7))
    try:
        base = nice()
        assert eng._workers["asr"].call(nice) == min(19, base + 7)
        assert eng._workers["punc"].call(nice) == min(19, base + 7)
        assert nice() == base  # this thread (the event loop's, in a server) keeps its priority
    finally:
        eng.close()
