"""Transcripts as text, JSON, SubRip (SRT) and WebVTT subtitles.

Subtitle cues come from the sentence timestamps: one cue per sentence, or, with ``max_chars`` and
word times, long sentences cut at word boundaries into cues of at most that many characters
(each cue timed by its own words). Cues are always in time order and never overlap: a sentence
that starts before the previous one ended starts when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from app.client.types import Sentence, Transcript, Word

FORMATS = ("text", "json", "srt", "vtt")
EXTENSIONS = {"text": ".txt", "json": ".json", "srt": ".srt", "vtt": ".vtt"}


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


def _split_by_words(sentence: Sentence, max_chars: int) -> list[Cue] | None:
    """Cut a long sentence into cues at word boundaries; None when the words do not map onto the text."""
    text = sentence.text
    spans: list[tuple[int, int, Word]] = []
    cursor = 0
    lowered = text.lower()
    for word in sentence.words:
        token = word.text.strip().lower()
        if not token:
            continue
        at = lowered.find(token, cursor)
        if at < 0:
            return None
        spans.append((at, at + len(token), word))
        cursor = at + len(token)
    if not spans:
        return None
    # Each cue runs from its first word to the next cue's first word, so that punctuation after a
    # word stays with it; a word joins the current cue unless that makes it longer than max_chars.
    groups = [[0]]
    begins = [0]
    for i in range(1, len(spans)):
        end_if_added = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        if len(text[begins[-1] : end_if_added].strip()) > max_chars:
            groups.append([i])
            begins.append(spans[i][0])
        else:
            groups[-1].append(i)
    begins.append(len(text))
    cues = [Cue(spans[g[0]][2].start_ms, spans[g[-1]][2].end_ms, text[begins[k] : begins[k + 1]].strip()) for k, g in enumerate(groups)]
    return [c for c in cues if c.text]


def cues(transcript: Transcript, max_chars: int = 0) -> list[Cue]:
    """The subtitle cues of a transcript, in order, non-overlapping, each at least 1 ms long."""
    raw: list[Cue] = []
    for sentence in transcript.sentences:
        text = " ".join(sentence.text.split())
        if not text:
            continue
        start, end = sentence.start_ms, sentence.end_ms
        if end <= 0 and start <= 0:  # a model without timestamps: the whole audio
            end = transcript.audio_duration_ms
        split = _split_by_words(sentence, max_chars) if max_chars and len(text) > max_chars and sentence.words else None
        raw.extend(split or [Cue(start, end, text)])
    out: list[Cue] = []
    for cue in raw:
        start = max(cue.start_ms, out[-1].end_ms if out else 0, 0)
        end = max(cue.end_ms, start + 1)
        out.append(Cue(start, end, cue.text))
    return out


def timestamp(ms: int, separator: str) -> str:
    hours, rest = divmod(max(0, int(ms)), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def to_srt(transcript: Transcript, max_chars: int = 0) -> str:
    blocks = []
    for n, cue in enumerate(cues(transcript, max_chars), 1):
        text = cue.text.replace("-->", "->")
        blocks.append(f"{n}\n{timestamp(cue.start_ms, ',')} --> {timestamp(cue.end_ms, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(transcript: Transcript, max_chars: int = 0) -> str:
    parts = ["WEBVTT\n"]
    for cue in cues(transcript, max_chars):
        text = cue.text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts.append(f"{timestamp(cue.start_ms, '.')} --> {timestamp(cue.end_ms, '.')}\n{text}\n")
    return "\n".join(parts)


def to_json(transcript: Transcript, source: str | None = None) -> str:
    """One line of JSON: the response in proto3 JSON form, plus ``file`` when given."""
    data = transcript.to_dict()
    if source is not None:
        data = {"file": source, **data}
    return json.dumps(data, ensure_ascii=False)


def render(transcript: Transcript, fmt: str, max_chars: int = 0, source: str | None = None) -> str:
    """The whole output for one transcript in ``fmt`` (ends with a newline, except empty subtitles)."""
    if fmt == "text":
        return transcript.text + "\n"
    if fmt == "json":
        return to_json(transcript, source) + "\n"
    if fmt == "srt":
        return to_srt(transcript, max_chars)
    if fmt == "vtt":
        return to_vtt(transcript, max_chars)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


def parse_timestamp(text: str) -> int:
    """``HH:MM:SS,mmm`` or ``HH:MM:SS.mmm`` (or ``MM:SS.mmm``) -> milliseconds."""
    clock, millis = text.strip().replace(",", ".").rsplit(".", 1)
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + int(millis)


def parse_cues(text: str) -> Sequence[Cue]:
    """Read SRT or WebVTT back (the subset written here): the cues with their times."""
    out = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        for i, line in enumerate(lines):
            if "-->" in line:
                start, end = (parse_timestamp(p.split()[0] if p.split() else p) for p in line.split("-->"))
                out.append(Cue(start, end, "\n".join(lines[i + 1 :])))
                break
    return out
