"""The vectorised Kaldi fbank against FunASR's own (kaldi-native-fbank), and the models' output with each."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from funasr.utils.fbank import _fbank_knf

from app.engine import features
from tests.helpers import speechlike

FRONTEND_OPTIONS = dict(num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0, energy_floor=0.0, sample_frequency=16000, snip_edges=True)


@pytest.mark.parametrize("window_type", ["hamming", "povey", "hanning", "rectangular"])
@pytest.mark.parametrize("samples", [400, 401, 1000, 32000, 16000 * 7 + 123])
def test_matches_kaldi_native_fbank(window_type, samples):
    # FunASR's frontends scale float audio to the 16-bit range before fbank.
    wave = torch.from_numpy(speechlike(samples / 16000, seed=samples)).unsqueeze(0) * 32768
    ours = features.fbank(wave, window_type=window_type, **FRONTEND_OPTIONS)
    theirs = _fbank_knf(wave, window_type=window_type, **FRONTEND_OPTIONS)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    # Log-mel energies are around 5-25; float32 FFTs of two libraries differ in the last digits.
    assert float((ours - theirs).abs().max()) < 2e-3


def test_silence_short_input_and_other_mel_counts():
    silence = torch.zeros(1, 3200)
    assert torch.equal(features.fbank(silence, window_type="hamming", **FRONTEND_OPTIONS), _fbank_knf(silence, window_type="hamming", **FRONTEND_OPTIONS))
    assert features.fbank(torch.ones(1, 399), window_type="hamming", **FRONTEND_OPTIONS).shape == (0, 80)
    wave = torch.from_numpy(speechlike(0.5)) * 32768
    opts = {**FRONTEND_OPTIONS, "num_mel_bins": 40, "sample_frequency": 8000}
    assert float((features.fbank(wave, window_type="povey", **opts) - _fbank_knf(wave, window_type="povey", **opts)).abs().max()) < 2e-3


def test_options_it_does_not_implement_go_to_funasr():
    wave = torch.from_numpy(speechlike(0.3)).unsqueeze(0) * 32768
    for extra in ({"snip_edges": False}, {"preemphasis_coefficient": 0.5}, {"use_energy": True}):
        opts = {**FRONTEND_OPTIONS, **extra}
        assert torch.equal(features.fbank(wave, window_type="hamming", **opts), _fbank_knf(wave, window_type="hamming", **opts))


def test_dither_adds_noise_of_the_requested_size():
    wave = torch.from_numpy(speechlike(1.0)).unsqueeze(0) * 32768
    clean = features.fbank(wave, window_type="hamming", **FRONTEND_OPTIONS)
    noisy = features.fbank(wave, window_type="hamming", **{**FRONTEND_OPTIONS, "dither": 1.0})
    assert clean.shape == noisy.shape and not torch.equal(clean, noisy)
    assert float((clean - noisy).abs().mean()) < 0.1  # 1 LSB of noise on 16-bit-range speech


def test_models_decode_the_same_with_either_fbank(engine):
    import funasr.utils.fbank

    assert features.installed()  # the default
    clips = [speechlike(s, seed=i) for i, s in enumerate((2.0, 0.7, 3.1, 1.3))]
    long = np.concatenate([np.zeros(8000), speechlike(1.5), np.zeros(24000), speechlike(1.0, seed=3)]).astype(np.float32)

    async def run():
        return await engine.transcribe(clips), await engine.detect_speech(long, 500)

    fast = asyncio.run(run())
    features.install(False)
    try:
        assert funasr.utils.fbank.fbank is not features.fbank
        reference = asyncio.run(run())
    finally:
        features.install(True)
    assert fast == reference
