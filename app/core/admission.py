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


# Weight of the newest interval in the running mean of the time between answers. Answers come
# in bursts (a batch of 16 ends at once: one long interval, then 15 of about zero), so the mean
# must span a few batches to be steady: 1/32 gives the last ~32 answers most of the weight.
_INTERVAL_WEIGHT = 1 / 32


class Admission:
    def __init__(self, max_items: int, max_audio_s: float, model_name: str, max_wait_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.max_audio_s = max_audio_s
        self.max_wait_s = max_wait_s  # 0: no limit on the expected wait
        self.model_name = model_name
        self.items = 0
        self.audio_s = 0.0
        self._clock = clock
        # Running mean of the time between successful answers, measured only while requests are
        # in flight (an idle minute is not a slow answer); None until the first answer.
        self.answer_interval_s: float | None = None
        self._busy_mark: float | None = None  # the last answer, or the start of the busy spell

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
        now = self._clock()
        if answered and self._busy_mark is not None:
            interval = now - self._busy_mark
            mean = self.answer_interval_s
            self.answer_interval_s = interval if mean is None else mean + _INTERVAL_WEIGHT * (interval - mean)
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
