"""Kaldi log-mel filterbank features, vectorised in torch.

Without torchaudio (which has no build for our torch), FunASR computes fbank features through
kaldi-native-fbank one frame at a time: about 3 ms per 2 s of audio, which was 45 % of a batched
tiny-model ASR call and a third of every VAD call, and it is paid again by the ASR model for the
audio the VAD just read. The same computation as one framed FFT and one matrix product takes a
tenth of that. It follows ``torchaudio.compliance.kaldi.fbank`` (Kaldi's algorithm), for the
options FunASR's frontends use; anything else goes to FunASR's own implementation.

``install(True)`` makes every FunASR frontend in the process use it (it replaces the module
attribute the frontends call); ``install(False)`` puts FunASR's back.
"""

from __future__ import annotations

import functools

import funasr.utils.fbank as funasr_fbank
import torch

_FUNASR_FBANK = funasr_fbank.fbank
_WINDOWS = ("hamming", "hanning", "povey", "rectangular")
_EPSILON = torch.finfo(torch.float32).eps


def install(enabled: bool) -> None:
    funasr_fbank.fbank = fbank if enabled else _FUNASR_FBANK


def installed() -> bool:
    return funasr_fbank.fbank is fbank


def fbank(
    waveform: torch.Tensor,
    *,
    num_mel_bins: int = 23,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    dither: float = 0.0,
    energy_floor: float = 1.0,
    window_type: str = "povey",
    sample_frequency: float = 16000.0,
    snip_edges: bool = True,
    **options,
) -> torch.Tensor:
    """Log-mel filterbank of one channel: (frames, num_mel_bins), float32."""
    defaults_only = not options or all(_is_kaldi_default(k, v) for k, v in options.items())
    if not (snip_edges and defaults_only and window_type in _WINDOWS) or waveform.dim() > 2 or (waveform.dim() == 2 and waveform.size(0) != 1):
        return _FUNASR_FBANK(
            waveform,
            num_mel_bins=num_mel_bins,
            frame_length=frame_length,
            frame_shift=frame_shift,
            dither=dither,
            energy_floor=energy_floor,
            window_type=window_type,
            sample_frequency=sample_frequency,
            snip_edges=snip_edges,
            **options,
        )
    x = waveform.reshape(-1).to(torch.float32)
    window_size = int(sample_frequency * float(frame_length) * 0.001)
    shift = int(sample_frequency * float(frame_shift) * 0.001)
    if window_size < 2 or shift < 1 or x.numel() < window_size:
        return torch.zeros((0, num_mel_bins), dtype=torch.float32)
    frames = x.unfold(0, window_size, shift)  # (n, window_size), a view
    if dither:
        frames = frames + dither * torch.randn_like(frames)
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove_dc_offset
    previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)
    frames = (frames - 0.97 * previous) * _window(window_type, window_size)  # pre-emphasis, window
    padded = 1 << (window_size - 1).bit_length()  # round_to_power_of_two
    power = torch.fft.rfft(frames, n=padded).abs().pow(2)  # (n, padded / 2 + 1)
    mel = power[:, : padded // 2] @ _mel_banks(num_mel_bins, padded, float(sample_frequency)).T
    return mel.clamp_min(_EPSILON).log()


_KALDI_DEFAULTS = {
    "blackman_coeff": 0.42,
    "channel": -1,
    "high_freq": 0.0,
    "htk_compat": False,
    "low_freq": 20.0,
    "min_duration": 0.0,
    "preemphasis_coefficient": 0.97,
    "raw_energy": True,
    "remove_dc_offset": True,
    "round_to_power_of_two": True,
    "subtract_mean": False,
    "use_energy": False,
    "use_log_fbank": True,
    "use_power": True,
    "vtln_high": -500.0,
    "vtln_low": 100.0,
    "vtln_warp": 1.0,
}


def _is_kaldi_default(name: str, value) -> bool:
    return name in _KALDI_DEFAULTS and value == _KALDI_DEFAULTS[name]


@functools.lru_cache(maxsize=16)
def _window(kind: str, size: int) -> torch.Tensor:
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46)
    if kind == "hanning":
        return torch.hann_window(size, periodic=False)
    if kind == "povey":
        return torch.hann_window(size, periodic=False).pow(0.85)
    return torch.ones(size)


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


@functools.lru_cache(maxsize=16)
def _mel_banks(num_bins: int, padded_window: int, sample_frequency: float) -> torch.Tensor:
    """Kaldi's triangular mel filters over the FFT bins below Nyquist: (num_bins, padded_window / 2)."""
    low, high = 20.0, sample_frequency / 2
    mel_low, mel_high = _mel(torch.tensor(low, dtype=torch.float64)), _mel(torch.tensor(high, dtype=torch.float64))
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    fft_mel = _mel(sample_frequency / padded_window * torch.arange(padded_window // 2, dtype=torch.float64)).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)
