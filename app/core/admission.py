"""Admission control: a bounded queue by requests, by audio seconds and, optionally, by expected wait.

A full queue refuses at once (Overloaded -> RESOURCE_EXHAUSTED) so clients and load balancers
can back off; nothing queues without bound. The request count and the expected wait are checked
before any decoding, so refusing costs microseconds; the audio limit is checked as soon as the
duration is known.

Why a wait limit as well as a count: the rate at which a server answers is not fixed. Under a
flood of calls the server spends CPU (and, in Python, its GIL) taking calls in and refusing them,
and the models answer fewer requests per second: a tiny-model server fell from 88 to 29 answers/s
at 10x its sustainable load (docs/benchmarks.md). A queue of a fixed length then makes every
accepted request wait three times as long. Limiting the expected wait (requests ahead x the
recent time between answers, Little's law) shortens the queue as the server slows down, so the
accepted requests keep their latency and the rest are refused at once, free to retry elsewhere.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app import metrics
from app.core.errors import Overloaded


class Ticket:
    def __init__(self, admission: Admission):
        self._admission = admission
        self.audio_s = 0.0

    def add_audio(self, seconds: float) -> None:
        a = self._admission
        if a.audio_s + seconds > a.max_audio_s and a.audio_s > 0:
            # Refuse only when other work is queued: a single file within max_audio_seconds always fits.
            metrics.REJECTED.labels(a.model_name, "queue_audio").inc()
            raise Overloaded(f"server busy: {a.audio_s:.0f} s of audio already queued (limit {a.max_audio_s:.0f} s); retry later")
        self.audio_s += seconds
        a.audio_s += seconds
        metrics.QUEUE_AUDIO.labels(a.model_name).set(a.audio_s)


# How the pace (the time between answers) is averaged: each answer's interval is added to a sum,
# and the sum and the count of answers both fade with time (by e every this many seconds), so
# the pace is the mean of the last second or so. Answers come in bursts (a batch of 16 ends at
# once: one long interval, then 15 of about zero); fading by time, not per answer, gives every
# answer of a burst the same weight, so one batch already gives its true time per answer, where
# a running mean over answers would weigh the long interval least and read 20 % fast.
_PACE_TIME_CONSTANT_S = 1.0
# A pace not renewed for this long is forgotten (no wait limit until answers come with company
# again): it may date from a flood long over, and while it is slow enough to let only lone
# requests in, nothing would renew it.
_PACE_TTL_S = 10.0


class Admission:
    def __init__(self, max_items: int, max_audio_s: float, model_name: str, max_wait_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.max_audio_s = max_audio_s
        self.max_wait_s = max_wait_s  # 0: no limit on the expected wait
        self.model_name = model_name
        self.items = 0
        self.audio_s = 0.0
        self._clock = clock
        self._pace_sum_s = 0.0  # faded sum of the intervals between answers given with others in flight
        self._pace_count = 0.0  # faded count of those answers
        self._paced_at: float | None = None  # when the last one came
        self._busy_mark: float | None = None  # the last answer, or the start of the busy spell
        self._admitted_in_spell = 0  # requests admitted since the queue was last empty (1: a lone request)

    @property
    def answer_interval_s(self) -> float | None:
        """The recent time between answers while others waited; None until known, or once stale."""
        if self._paced_at is None or self._clock() - self._paced_at > _PACE_TTL_S:
            return None
        return self._pace_sum_s / self._pace_count

    def expected_wait_s(self) -> float:
        """How long a request admitted now would wait for the ones ahead of it (Little's law)."""
        return self.items * (self.answer_interval_s or 0.0)

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        if self.items >= self.max_items:
            metrics.REJECTED.labels(self.model_name, "queue_full").inc()
            raise Overloaded(f"server busy: {self.items} requests in progress (limit {self.max_items}); retry later")
        if self.max_wait_s and self.items and (wait := self.expected_wait_s()) > self.max_wait_s:
            metrics.REJECTED.labels(self.model_name, "queue_wait").inc()
            raise Overloaded(
                f"server busy: the {self.items} requests in progress would take about {wait:.2f} s to answer "
                f"(limit {self.max_wait_s:g} s); retry later"
            )
        if self.items == 0:
            self._busy_mark = self._clock()
            self._admitted_in_spell = 0
        self._admitted_in_spell += 1
        self.items += 1
        metrics.QUEUE_ITEMS.labels(self.model_name).set(self.items)
        ticket = Ticket(self)
        answered = False
        try:
            yield ticket
            answered = True
        finally:
            self.items -= 1
            self._note_answer(answered)
            self.audio_s = max(0.0, self.audio_s - ticket.audio_s)
            metrics.QUEUE_ITEMS.labels(self.model_name).set(self.items)
            metrics.QUEUE_AUDIO.labels(self.model_name).set(self.audio_s)

    def _note_answer(self, answered: bool) -> None:
        # Only answers count: refusals and bad input end fast and would make the server look
        # quicker than it is. Their time is folded into the next answer's interval instead.
        # And only answers given while others were in flight: a lone request's interval is its
        # whole latency, which says nothing of how fast a queue drains when batches form (an H200
        # answers one 2 s utterance in 90 ms, and 49 a second when 64 are in flight). Seeded by
        # lone warm-up requests, the pace refused requests at half load.
        now = self._clock()
        if answered and self._busy_mark is not None:
            interval = now - self._busy_mark
            if self.items > 0:
                if self._paced_at is None or now - self._paced_at > _PACE_TTL_S:  # forgotten: start afresh
                    self._pace_sum_s = self._pace_count = 0.0
                fade = math.exp(-(now - self._paced_at) / _PACE_TIME_CONSTANT_S) if self._paced_at is not None else 0.0
                self._pace_sum_s = self._pace_sum_s * fade + interval
                self._pace_count = self._pace_count * fade + 1
                self._paced_at = now
            elif self._admitted_in_spell == 1 and (pace := self.answer_interval_s) is not None and interval < pace:
                # A lone answer cannot set a pace, but it bounds one: a server that answered a
                # request alone in this time answers at least one per this time under load. Without
                # this bound a pace slower than the limit, left by a flood, let only lone requests
                # in, and their answers never renewed it: a tiny server refused 420 of 680 requests
                # at half load for 10 s after a flood (docs/benchmarks.md, sixth session).
                self._pace_sum_s = interval * self._pace_count
            self._busy_mark = now
        if self.items == 0:
            self._busy_mark = None


class StreamSlots:
    """The limit on open streams, and the live count tests and metrics read."""

    def __init__(self, max_streams: int):
        self.max_streams = max_streams
        self.open = 0

    def acquire(self) -> None:
        if self.open >= self.max_streams:
            raise Overloaded(f"server busy: {self.open} streams open (limit {self.max_streams}); retry later")
        self.open += 1

    def release(self) -> None:
        self.open -= 1
