"""Admission control: a bounded queue by requests and by audio seconds.

A full queue refuses at once (Overloaded -> RESOURCE_EXHAUSTED) so clients and load balancers
can back off; nothing queues without bound. The request count is checked before any decoding,
so refusing costs microseconds; the audio limit is checked as soon as the duration is known.
"""

from __future__ import annotations

from collections.abc import Iterator
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


class Admission:
    def __init__(self, max_items: int, max_audio_s: float, model_name: str):
        self.max_items = max_items
        self.max_audio_s = max_audio_s
        self.model_name = model_name
        self.items = 0
        self.audio_s = 0.0

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        if self.items >= self.max_items:
            metrics.REJECTED.labels(self.model_name, "queue_full").inc()
            raise Overloaded(f"server busy: {self.items} requests in progress (limit {self.max_items}); retry later")
        self.items += 1
        metrics.QUEUE_ITEMS.labels(self.model_name).set(self.items)
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            self.items -= 1
            self.audio_s = max(0.0, self.audio_s - ticket.audio_s)
            metrics.QUEUE_ITEMS.labels(self.model_name).set(self.items)
            metrics.QUEUE_AUDIO.labels(self.model_name).set(self.audio_s)


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
