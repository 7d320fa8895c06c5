"""FunASR's integrate-and-fire loop for timestamps (``cif_wo_hidden``), run in NumPy on the CPU.

Paraformer-large (a BiCifParaformer) places its timestamps with an integrate-and-fire loop over
the upsampled frames, written in FunASR as a few torch operations per frame. On a GPU each of
them is a kernel launch: for a 2 s segment some 500 launches, once per batch in the predictor
and again per segment whenever the fires do not match the tokens (FunASR's timestamp fallback,
which random weights take for almost every segment). On an H200 with the large-sized random
model that loop was 48 % of the ASR worker's samples (py-spy; docs/benchmarks.md). The same
float32 arithmetic in NumPy gives the same fires, bit for bit: ``install()`` checks that against
FunASR's own function before it replaces it, and leaves FunASR alone when they differ.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np

log = logging.getLogger(__name__)

# The modules that define and call their own copy of the loop (FunASR 1.x).
_MODULES = ("funasr.utils.timestamp_tools", "funasr.models.bicif_paraformer.cif_predictor")
_original = None  # FunASR's function, for inputs this one does not take
_installed: bool | None = None


def cif_fires(alphas, threshold: float):
    """The integrated weight at each frame ([batch, time], before a fire subtracts the threshold).

    FunASR's loop, same order of float32 operations: add the frame's weight, record the sum, and
    subtract the threshold where the sum reached it (compared in float32, as torch does).
    """
    import torch

    if alphas.dtype not in (torch.float32, torch.float16, torch.bfloat16) or torch.get_default_dtype() != torch.float32:
        return _original(alphas, threshold)  # FunASR would round differently: let it
    weights = alphas.detach().to("cpu", torch.float32).numpy()
    step = np.float32(threshold)
    fires = np.empty_like(weights)
    integrate = np.zeros(weights.shape[0], dtype=np.float32)
    for t in range(weights.shape[1]):
        integrate = integrate + weights[:, t]
        fires[:, t] = integrate
        integrate = np.where(integrate >= step, integrate - step, integrate)
    return torch.from_numpy(fires).to(alphas.device)


def install() -> bool:
    """Replace FunASR's loop in this process when ours gives the same fires. Idempotent."""
    global _original, _installed
    if _installed is not None:
        return _installed
    found = []
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if callable(getattr(module, "cif_wo_hidden", None)):
            found.append(module)
    _installed = False
    if not found:
        return False
    _original = found[0].cif_wo_hidden
    mismatch = next((m.__name__ for m in found if not _same_fires(m.cif_wo_hidden)), None)
    if mismatch:
        log.warning("FunASR's cif_wo_hidden in %s differs from ours; keeping FunASR's (slower on a GPU)", mismatch)
        return False
    for module in found:
        module.cif_wo_hidden = cif_fires
    _installed = True
    return True


def _same_fires(funasr_loop) -> bool:
    import torch

    generator = torch.Generator().manual_seed(8404)
    # Weights like the predictor's: many frames below the threshold, some sums landing near it.
    cases = [torch.rand(3, 301, generator=generator) * 0.7, torch.rand(1, 97, generator=generator) * 1.3]
    cases.append(torch.full((2, 40), 0.33333334))
    for alphas in cases:
        for threshold in (1.0 - 1e-4, 0.5):
            if not torch.equal(funasr_loop(alphas.clone(), threshold), cif_fires(alphas.clone(), threshold)):
                return False
    return True
