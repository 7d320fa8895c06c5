"""The NumPy integrate-and-fire loop against FunASR's, and the model's timestamps with each."""

from __future__ import annotations

import asyncio

import pytest
import torch

from app.engine import cif_fires
from tests.helpers import speechlike


def funasr_loops():
    from funasr.models.bicif_paraformer import cif_predictor
    from funasr.utils import timestamp_tools

    return [timestamp_tools, cif_predictor]


@pytest.mark.parametrize("batch,frames,scale", [(1, 1, 0.5), (1, 100, 0.6), (16, 301, 0.4), (4, 257, 1.7), (2, 64, 0.0)])
def test_same_fires_as_funasr_bit_for_bit(batch, frames, scale):
    original = cif_fires._original or funasr_loops()[0].cif_wo_hidden
    alphas = torch.rand(batch, frames, generator=torch.Generator().manual_seed(frames)) * scale
    for threshold in (1.0 - 1e-4, 1.0, 0.3):
        ours = cif_fires.cif_fires(alphas.clone(), threshold)
        assert ours.dtype == torch.float32 and ours.shape == (batch, frames)
        assert torch.equal(ours, original(alphas.clone(), threshold))
    half = alphas.to(torch.float16)
    assert torch.equal(cif_fires.cif_fires(half.clone(), 1.0 - 1e-4), original(half.clone(), 1.0 - 1e-4))


def test_a_loop_that_differs_is_left_in_place(monkeypatch):
    module = funasr_loops()[0]
    different = lambda alphas, threshold: torch.zeros_like(alphas)  # noqa: E731
    monkeypatch.setattr(module, "cif_wo_hidden", different)
    monkeypatch.setattr(cif_fires, "_installed", None)
    monkeypatch.setattr(cif_fires, "_original", None)
    assert cif_fires.install() is False
    assert module.cif_wo_hidden is different


def test_engine_timestamps_are_the_same_with_funasr_loop(engine, monkeypatch):
    assert all(m.cif_wo_hidden is cif_fires.cif_fires for m in funasr_loops())  # loading the ASR model installed it
    clips = [speechlike(s, seed=i) for i, s in enumerate((2.0, 0.7, 3.1, 1.3, 5.0))]
    fast = asyncio.run(engine.transcribe(clips))

    calls = []

    def funasr_loop(alphas, threshold):
        calls.append(alphas.shape)
        return cif_fires._original(alphas, threshold)

    for module in funasr_loops():
        monkeypatch.setattr(module, "cif_wo_hidden", funasr_loop)
    reference = asyncio.run(engine.transcribe(clips))
    assert calls  # the reference really ran FunASR's loop
    assert any(h.token_times_ms for h in reference)  # and the comparison covers timestamps
    assert fast == reference
