"""From per-segment tokens (and punctuation marks) to sentences with times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.model_calls import AsrHypothesis

SENTENCE_END = frozenset("。？！?!.")


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Sentence:
    text: str
    start_ms: int
    end_ms: int
    words: tuple[Word, ...] = ()


def _is_latin(token: str) -> bool:
    return bool(token) and token[0].isascii() and token[0].isalnum()


def join_tokens(tokens: Sequence[str], between_cjk: str = "") -> str:
    """Chinese characters join without spaces; latin words (and numbers) keep one between them."""
    out: list[str] = []
    for token in tokens:
        if out and _is_latin(token) and _is_latin(out[-1][-1:]):
            out.append(" ")
        elif out:
            out.append(between_cjk)
        out.append(token)
    return "".join(out)


def _timed_tokens(segments: Sequence[tuple[int, int, AsrHypothesis]]) -> list[Word]:
    """Every token with absolute times; tokens without model timings get their segment's span."""
    words = []
    for start_ms, end_ms, hyp in segments:
        if hyp.token_times_ms is not None:
            # The model's times can run a few ms past the segment's end: clamp them to the segment.
            words += [Word(t, min(start_ms + s, end_ms - 1), min(start_ms + e, end_ms)) for t, (s, e) in zip(hyp.tokens, hyp.token_times_ms, strict=True)]
        else:
            words += [Word(t, start_ms, end_ms) for t in hyp.tokens]
    return words


def build_sentences(
    segments: Sequence[tuple[int, int, AsrHypothesis]],
    marks: Sequence[str] | None,
    with_words: bool,
) -> list[Sentence]:
    """Sentences split at sentence-final punctuation when marks are given, else one per speech segment."""
    if marks is None:
        sentences = []
        for start_ms, end_ms, hyp in segments:
            if hyp.tokens:
                words = _timed_tokens([(start_ms, end_ms, hyp)])
                sentences.append(Sentence(join_tokens(hyp.tokens), start_ms, end_ms, tuple(words) if with_words else ()))
        return sentences

    words = _timed_tokens(segments)
    if len(marks) != len(words):
        raise ValueError(f"{len(marks)} punctuation marks for {len(words)} tokens")
    sentences: list[Sentence] = []
    current: list[Word] = []
    text: list[str] = []
    for word, mark in zip(words, marks, strict=True):
        current.append(word)
        text.append(word.text + mark if mark else word.text)
        if mark in SENTENCE_END:
            sentences.append(_sentence(current, text, with_words))
            current, text = [], []
    if current:
        sentences.append(_sentence(current, text, with_words))
    return sentences


def _sentence(words: list[Word], text: list[str], with_words: bool) -> Sentence:
    return Sentence(join_tokens(text), words[0].start_ms, words[-1].end_ms, tuple(words) if with_words else ())
