"""What one batched ASR call and one punctuation pass do with a loaded model.

The same bodies run on a model thread of the server process (``FunasrEngine``) or in a model
worker process (``model_process.py``), so both ways give the same results by construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.engine import cif_fires
from app.engine.punctuation import TextProgress, finished_ids, run_rounds, start_text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AsrHypothesis:
    """What the ASR model made of one segment."""

    tokens: tuple[str, ...]
    # (start_ms, end_ms) per token, relative to the segment start; None when the model gives none
    # or they do not line up with the tokens.
    token_times_ms: tuple[tuple[int, int], ...] | None


def _mask_padded_encoder_frames(model) -> None:
    """Make batched decoding give each segment the text it gets alone.

    Paraformer's encoder leaves non-zero values in the padded frames of a batch, and the CIF
    predictor reads them: its context convolution looks one frame ahead, and its tail step
    integrates the frame after the last real one. Alone, that frame is zero padding; in a batch
    it is leftover encoder output, which can change a segment's last token. Zeroing the padded
    frames restores batch invariance, which dynamic batching across requests depends on.
    """
    import torch

    encode = getattr(model, "encode", None)
    if encode is None:
        return

    def masked_encode(speech, speech_lengths, *args, **kwargs):
        out = encode(speech, speech_lengths, *args, **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2 and out[0].dim() == 3 and out[0].shape[0] > 1):
            return out
        encoder_out, lengths = out
        frames = torch.arange(encoder_out.shape[1], device=encoder_out.device)
        mask = (frames[None, :] < lengths[:, None].to(encoder_out.device)).unsqueeze(-1)
        return encoder_out * mask.to(encoder_out.dtype), lengths

    model.encode = masked_encode


class AsrCall:
    """ONE batched ``generate()`` over many segments of a FunASR ASR AutoModel; results in input order."""

    def __init__(self, model):
        self.model = model
        _mask_padded_encoder_frames(model.model)
        cif_fires.install()
        # Test-only fault injection (issue: "one bad item must not fail its neighbours"): called
        # with the segments of every call; raising fails that call.
        self.fault_hook: Callable[[Sequence[np.ndarray]], None] | None = None

    def __call__(self, segments: list[np.ndarray], hotwords: tuple[str, ...]) -> list[AsrHypothesis]:
        if self.fault_hook is not None:
            self.fault_hook(segments)
        kwargs = {"batch_size": len(segments), "disable_pbar": True}
        if hotwords:
            kwargs["hotword"] = " ".join(hotwords)
        results = self.model.generate(input=segments, **kwargs)
        if len(results) != len(segments):
            raise RuntimeError(f"ASR returned {len(results)} results for {len(segments)} segments")
        return [_hypothesis(r) for r in results]


def _hypothesis(result: dict) -> AsrHypothesis:
    tokens = tuple(result.get("text", "").split())
    stamps = result.get("timestamp")
    times = None
    if isinstance(stamps, list) and len(stamps) == len(tokens):
        times = tuple((int(s), int(e)) for s, e in stamps)
    return AsrHypothesis(tokens=tokens, token_times_ms=times)


class PunctuationCall:
    """The marks of many token lists in one pass of a FunASR punctuation AutoModel (see punctuation.py).

    An item is a token list (a new text) or a ``TextProgress`` that an earlier call handed back.
    Per item: its marks ('' for none, one per token), None where the model's units could not be
    aligned with the tokens, its own error, or, when ``max_rounds`` stopped it first, its
    ``TextProgress`` for the next call. When the pass raises, each item is tried alone, so that
    one text the model cannot take fails only its own request.
    """

    def __init__(self, model, device: str):
        self.model, self.device = model, device
        self.marks = ["" if p in ("_", "<unk>") else p for p in model.model.punc_list]
        self.fault_hook: Callable[[Sequence[Sequence[str]]], None] | None = None  # as AsrCall's, per pass (the token lists)

    def __call__(self, items: list[list[str] | TextProgress], max_rounds: int | None = None) -> list:
        try:
            return self.one_pass(items, max_rounds)
        except Exception as error:
            if len(items) == 1:
                return [error]
            log.warning("punctuation of %d texts in one pass failed (%s); marking them one by one", len(items), type(error).__name__)
        results: list = []
        for item in items:
            try:
                results.extend(self.one_pass([item], max_rounds))
            except Exception as error:
                results.append(error)
        return results

    def one_pass(self, items: list[list[str] | TextProgress], max_rounds: int | None = None) -> list:
        import torch

        if self.fault_hook is not None:
            self.fault_hook([item.tokens if isinstance(item, TextProgress) else item for item in items])
        # What generate() would do first on this thread: torch's thread count is per calling thread.
        threads = self.model.kwargs.get("ncpu", torch.get_num_threads())
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        model, tokenizer, split_size = self.model.model, self.model.kwargs["tokenizer"], self.model.kwargs.get("split_size", 20)
        # A text handed back by an earlier call goes on where it stopped (a copy: should this pass
        # fail, each text is tried again alone from where it was).
        texts = [item.copy() if isinstance(item, TextProgress) else start_text(model, tokenizer, item, split_size) for item in items]
        run_rounds(model, [t for t in texts if t is not None], self.device, max_rounds)
        results: list = []
        for item, text in zip(items, texts, strict=True):
            if text is None:  # no words: nothing to mark, or nothing the model could mark
                results.append([] if not item else None)
            elif not text.finished:
                results.append(text)
            else:
                results.append(self._marks(text.tokens, finished_ids(model, text)))
        return results

    def _marks(self, tokens: list[str], ids: list[int]) -> list[str] | None:
        if len(ids) != len(tokens):  # the model split the text into other units than the ASR's tokens
            return None
        return [self.marks[i] if 0 <= i < len(self.marks) else "" for i in ids]
