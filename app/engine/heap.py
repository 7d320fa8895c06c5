"""Keep the loaded models out of Python's cyclic garbage collector.

A process with FunASR and its models loaded tracks about 430,000 Python objects (torch modules,
their parameters' wrappers, FunASR's registries), and a full collection walks them all: about
200 ms on this project's 2-core CI machine, with everything in the process (the event loop
included) standing still. Such collections are rare (CPython runs one when a quarter as many
objects as it already tracks have survived younger collections; none came in 10 s of 60
requests/s), but each one stalls every call in flight for that long. ``gc.freeze()`` moves what
is alive now into a permanent generation that the collector skips. Those objects are still freed
by reference counting, but reference cycles among them are not: whoever drops models must
``thaw`` first (or their memory stays taken), and freeze again once the last reference to them
is gone.
"""

from __future__ import annotations

import gc
import sys


def freeze_loaded() -> None:
    """Call once models are loaded: collect what loading left behind, then exempt the survivors.

    Also where dropped models' GPU memory goes back to the driver: torch keeps freed blocks
    cached, and the collection may just have freed the last of them.
    """
    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def thaw() -> None:
    """Call when dropping models: the collector sees every object again, so their cycles can go."""
    gc.unfreeze()
