"""The punctuation model (FunASR's CT-Transformer) over the texts of many requests in one pass.

FunASR's ``generate()`` marks one text per call, and a call costs far more than its arithmetic:
3.5 ms for a 12-token text on the tiny model, of which the network's forward over a batch of 16
takes 0.3 ms per text (on this project's 2-core CPU; on a GPU each call is a string of tiny
kernel launches). So the texts of concurrent requests go through the model together.

``CTTransformer.inference`` walks a text in mini-sentences of ``split_size`` words. After each
one it keeps the words behind the last full stop or question mark and prepends them to the next
mini-sentence, so that no sentence is marked without its end in view. Here every text walks
its own mini-sentences in lock step with the others: each round runs the next mini-sentence
(with its carried words) of every unfinished text, padded into one forward pass. The
carry-over, the cut of an over-long sentence at a comma, the full stop forced at the end of the
text and the word-to-character expansion of word-level models (those that ship a
``jieba_usr_dict``) follow FunASR 1.4.16's code rule for rule; a test checks the marks against
``generate()`` text by text.

A text's rounds need not run in one call. A 5-minute transcript is 75 rounds or more (with
random weights, which rarely end a sentence, each round re-reads a carry of up to 200 words:
1.6 s on this CPU for the large-sized model), and every short text in the same pass would wait
for all of them. So a call may stop after a few rounds and hand back each unfinished text as a
``TextProgress``, which the next call takes up where it stopped, beside texts that arrived
meanwhile (core/step_batcher.py). The state travels with the text, so the model keeps none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# The longest a carried sentence may grow before it is cut at its last comma (FunASR's own limit).
CACHE_POP_TRIGGER_LIMIT = 200


@dataclass
class TextProgress:
    """One text part-way through its rounds: what the next round needs (picklable, so it can go to
    a model's worker process and back between passes)."""

    tokens: list[str]  # the ASR's tokens, which the marks must line up with
    words: list[str]
    mini_words: list[list[str]]
    mini_ids: list[np.ndarray]
    next_round: int = 0
    carried_words: list[str] = field(default_factory=list)
    carried_ids: np.ndarray = field(default_factory=lambda: np.array([], dtype="int32"))
    marks: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.next_round >= len(self.mini_words)

    def copy(self) -> TextProgress:
        """A copy to advance, leaving this one as it was. Rounds replace the carry and the round
        index and extend the marks; the text and its mini-sentences are only read, so they are shared."""
        return dataclasses.replace(self, marks=list(self.marks))


def start_text(model, tokenizer, tokens: Sequence[str], split_size: int = 20) -> TextProgress | None:
    """A text of the ASR's tokens ready for its first round; None for an empty text."""
    from funasr.models.ct_transformer.utils import split_to_mini_sentence, split_words

    text = " ".join(tokens)
    if not text.strip():
        return None
    words = split_words(text, jieba_usr_dict=model.jieba_usr_dict)
    mini_words = split_to_mini_sentence(words, split_size)
    mini_ids = [np.asarray(m, dtype="int32") for m in split_to_mini_sentence(tokenizer.encode(words), split_size)]
    return TextProgress(list(tokens), words, mini_words, mini_ids)


def run_rounds(model, texts: Sequence[TextProgress], device: str, max_rounds: int | None = None) -> None:
    """Advance every text by up to ``max_rounds`` rounds (None: to its end), in lock step.

    Round by round, the next mini-sentence of every unfinished text (with its carried words) goes
    through the model in one padded forward pass; the texts need not be at the same round.
    """
    import torch

    done = 0
    while max_rounds is None or done < max_rounds:
        active = [t for t in texts if not t.finished]
        if not active:
            return
        inputs = [np.concatenate((t.carried_ids, t.mini_ids[t.next_round]), axis=0) for t in active]
        lengths = [len(x) for x in inputs]
        padded = np.zeros((len(inputs), max(lengths)), dtype="int32")
        for row, x in enumerate(inputs):
            padded[row, : len(x)] = x
        with torch.no_grad():
            logits, _ = model.punc_forward(
                text=torch.from_numpy(padded).to(device),
                text_lengths=torch.tensor(lengths, dtype=torch.int32).to(device),
            )
            best = logits.topk(1, dim=-1).indices.squeeze(-1).cpu().numpy()
        for t, row, ids, n in zip(active, best, inputs, lengths, strict=True):
            last = t.next_round == len(t.mini_words) - 1
            _mark_mini_sentence(model, t, t.carried_words + t.mini_words[t.next_round], ids, row[:n].tolist(), last=last)
            t.next_round += 1
        done += 1


def finished_ids(model, text: TextProgress) -> list[int]:
    """A finished text's mark ids, one per unit the model split it into (characters for word-level models)."""
    return text.marks if model.jieba_usr_dict is None else _words_to_characters(text.words, text.marks)


def _mark_mini_sentence(model, text: TextProgress, words: list[str], ids: np.ndarray, marks: list[int], last: bool) -> None:
    """Keep this round's marks up to the last sentence end; carry the words behind it into the next round."""
    punc_list = model.punc_list
    if not last:
        sentence_end, last_comma = -1, -1
        for i in range(len(marks) - 2, 1, -1):
            if punc_list[marks[i]] in ("。", "？"):
                sentence_end = i
                break
            if last_comma < 0 and punc_list[marks[i]] == "，":
                last_comma = i
        if sentence_end < 0 and len(words) > CACHE_POP_TRIGGER_LIMIT and last_comma >= 0:
            sentence_end = last_comma
            marks[sentence_end] = model.sentence_end_id
        text.carried_words, text.carried_ids = words[sentence_end + 1 :], ids[sentence_end + 1 :]
        marks = marks[: sentence_end + 1]
    elif _needs_final_stop(words[-1], punc_list[marks[-1]]):
        marks[-1] = model.sentence_end_id
    text.marks.extend(marks)


def _needs_final_stop(word: str, mark: str) -> bool:
    """Whether FunASR ends the text with a full stop: its rule reads the last character it wrote.

    That is the mark after the last word (in ASCII after a word that starts with an ASCII
    character), or the word's own last character where the mark is "_" (none).
    """
    if mark == "_":
        last = word[-1]
    else:
        if len(word[0].encode()) == 1:
            mark = {"，": ",", "。": ".", "？": "?"}.get(mark, mark)
        last = mark[-1]
    if last in ("，", "、", ","):
        return True
    if len(last.encode()) != 1:
        return last not in ("。", "？")
    return last not in (".", "?")


def _words_to_characters(words: list[str], marks: list[int]) -> list[int]:
    """Word-level models mark words: give each extra character of a Chinese word "no mark" (id 1), as FunASR does.

    The range check is FunASR's own: it starts at U+0E00, not U+4E00.
    """
    expanded = list(marks)
    for i, word in enumerate(reversed(words)):
        if "\u0e00" <= word[0] <= "\u9fa5" and len(word) > 1:
            at = len(words) - i - 1
            for _ in range(len(word) - 1):
                expanded.insert(at, 1)
    return expanded
