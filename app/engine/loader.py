"""Finding model files, and refusing to serve models that did not really load.

Two FunASR behaviours this module guards against:
- a hub id that cannot be fetched makes FunASR print a warning after a ~20 s retry loop and then
  fail with a misleading "model is not registered" error: we check reachability first and fail
  in seconds with one line that says what to do;
- a directory whose ``model.pt`` is missing loads without error when ``configuration.json`` is
  present, and mismatched tensors stay random with only an INFO log: we check that the weights
  file exists and that every parameter of the built model equals the checkpoint's tensor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from app.engine.tiny_models import RANDOM_WEIGHTS_MARKER

if TYPE_CHECKING:
    from app.config import Settings

log = logging.getLogger(__name__)

DISABLED = ("", "none", "off", "false", "disabled")


class ModelLoadError(RuntimeError):
    """The server cannot start with the configured models; the message is one line for a person."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from, for logs, metrics and ListModels."""

    role: str  # asr | vad | punc
    spec: str  # what the user asked for
    path: Path  # the local directory AutoModel loads
    hub_id: str | None
    random_weights: bool


def is_disabled(spec: str) -> bool:
    return spec.strip().lower() in DISABLED


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _check_hub_reachable(timeout_s: float = 5.0) -> None:
    from modelscope.hub.utils.utils import get_endpoint

    endpoint = get_endpoint()
    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ModelLoadError(
            f"cannot reach the model hub {endpoint} ({e.strerror or e}); on an offline or air-gapped machine "
            "download the model elsewhere and pass its directory (e.g. --asr-model /models/paraformer-large), "
            "or try the stack with --demo (random weights)"
        ) from None


def resolve_configured_model(role: str, spec: str, settings: Settings, *, allow_random: bool) -> ModelSource:
    """``resolve_model_dir`` with the hub settings (revision, cache, offline, timeout) of ``settings``."""
    return resolve_model_dir(
        role,
        spec,
        revision=settings.model_revision,
        cache_dir=settings.model_cache_dir,
        offline=settings.offline,
        download_timeout_s=settings.download_timeout_s,
        allow_random=allow_random,
    )


def resolve_model_dir(
    role: str, spec: str, *, revision: str, cache_dir: str, offline: bool, allow_random: bool, download_timeout_s: float = 1800.0
) -> ModelSource:
    """Turn a directory or hub id into a local directory, downloading only for a hub id that is not cached."""
    expanded = Path(os.path.expanduser(spec))
    hub_id = None
    if expanded.is_dir():
        path = expanded.resolve()
    elif expanded.exists():
        raise ModelLoadError(f"{role} model {spec!r} is a file; pass the model's directory")
    elif _looks_like_hub_id(spec):
        hub_id = spec
        path = _fetch_from_hub(role, spec, revision=revision, cache_dir=cache_dir, offline=offline, timeout_s=download_timeout_s)
    else:
        raise ModelLoadError(f"{role} model directory {spec!r} does not exist (and it is not a hub id like 'iic/name')")
    random_weights = (path / RANDOM_WEIGHTS_MARKER).exists()
    if random_weights and not allow_random:
        raise ModelLoadError(
            f"{role} model {path} holds RANDOM demo weights (it carries {RANDOM_WEIGHTS_MARKER}); "
            "serve it only on purpose, with --demo or --allow-random-weights"
        )
    if not (path / "config.yaml").exists() and not (path / "configuration.json").exists():
        raise ModelLoadError(f"{role} model directory {path} has neither config.yaml nor configuration.json: not a FunASR model")
    return ModelSource(role=role, spec=spec, path=path, hub_id=hub_id, random_weights=random_weights)


def _fetch_from_hub(role: str, hub_id: str, *, revision: str, cache_dir: str, offline: bool, timeout_s: float) -> Path:
    from modelscope.hub.snapshot_download import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # modelscope raises its own CacheNotFound / ValueError on a miss
        if offline:
            raise ModelLoadError(f"{role} model {hub_id} is not in the model cache {cache_dir} and --offline forbids downloading it") from None
    _check_hub_reachable()
    log.info("downloading %s model %s (revision %s) into %s", role, hub_id, revision, cache_dir)
    start = time.monotonic()
    # snapshot_download has no overall timeout: run it on a daemon thread and stop waiting.
    outcome: dict[str, object] = {}

    def download() -> None:
        try:
            outcome["path"] = snapshot_download(hub_id, revision=revision, cache_dir=cache_dir)
        except Exception as e:  # reported below as one line
            outcome["error"] = e

    worker = threading.Thread(target=download, name=f"download-{role}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise ModelLoadError(f"downloading {role} model {hub_id} took longer than {timeout_s:g} s (download_timeout_s)")
    if "error" in outcome:
        e = outcome["error"]
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not download {role} model {hub_id} (revision {revision}): {first_line}")
    path = Path(str(outcome["path"]))
    log.info("downloaded %s model %s in %.1f s", role, hub_id, time.monotonic() - start)
    return path


def verify_weights(role: str, model, init_param: str | None) -> int:
    """Check that the weights file exists and every parameter and buffer equals the checkpoint's.

    Returns the number of tensors checked. Raises ModelLoadError naming what is missing or different.
    """
    import torch

    if not init_param or not Path(init_param).is_file():
        raise ModelLoadError(f"{role} model has no weights file ({init_param or 'model.pt'} is missing): refusing to serve random weights")
    checkpoint = torch.load(init_param, map_location="cpu", mmap=True, weights_only=False)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(checkpoint, dict) and key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
    # FunASR strips a "module." prefix (DDP checkpoints); mirror that.
    tensors = {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    missing, different = [], []
    checked = 0
    for name, value in model.state_dict().items():
        source = tensors.get(name)
        if source is None:
            missing.append(name)
        elif source.shape != value.shape or not torch.equal(source.to(value.device, value.dtype), value):
            different.append(name)
        checked += 1
    if missing or different:
        sample = ", ".join((missing + different)[:3])
        raise ModelLoadError(
            f"{role} model weights do not match its architecture: {len(missing)} tensors missing from "
            f"{init_param} and {len(different)} not loaded (e.g. {sample}); refusing to serve random weights"
        )
    return checked


def open_model(role: str, path: str, device: str, threads: int, where: str = ""):
    """Load a model directory with ``funasr.AutoModel`` and verify its weights.

    Returns (model, tensors verified, seconds). ``where`` names the process in error messages
    (" in a stream worker", say). Raises ModelLoadError with one line for a person.
    """
    from funasr import AutoModel

    start = time.perf_counter()
    try:
        model = AutoModel(
            model=path,
            device=device,
            ncpu=threads,
            disable_update=True,  # otherwise FunASR asks PyPI for a newer version, with no timeout
            disable_pbar=True,
            disable_log=True,
            check_latest=False,  # otherwise modelscope checks the hub for a newer snapshot
            hub="ms",
        )
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"{role} model in {path} failed to load{where}: {type(e).__name__}: {e}") from None
    verified = verify_weights(role, model.model, model.kwargs.get("init_param"))
    return model, verified, time.perf_counter() - start
