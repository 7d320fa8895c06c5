"""Retries: exponential backoff with jitter, within the call's deadline, honouring a server's hint.

Only failures that say "try again later" are retried: UNAVAILABLE (the server is restarting,
draining or not ready, or the connection dropped) and RESOURCE_EXHAUSTED (its queue is full) by
default; never a TLS or credential problem, nor a message over the size limit, which would fail
the same way every time.

A server may say when to come back in trailing metadata: ``retry-after-ms`` or gRPC's own
``grpc-retry-pushback-ms`` (gRFC A6), in milliseconds. That delay then replaces the backoff
(capped at ``max_server_delay_s``); a negative value means "do not retry".
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from app.client import errors
from app.client.errors import AsrError

log = logging.getLogger(__name__)

HINT_KEYS = ("retry-after-ms", "grpc-retry-pushback-ms")
_NEVER_RETRY = frozenset(
    {
        errors.TLS_NOT_SUPPORTED,
        errors.TLS_UNTRUSTED,
        errors.TLS_NAME,
        errors.TLS_REFUSED,
        errors.CONFIG,
        errors.PLAINTEXT_TO_TLS,
        errors.TOO_LARGE,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often to retry a failed call.

    The n-th retry waits ``min(max_backoff_s, initial_backoff_s * multiplier**(n-1))``, of which a
    random fraction up to ``jitter`` is taken off (so that clients refused together do not come
    back together). All attempts together stay within the call's deadline.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    multiplier: float = 2.0
    jitter: float = 0.5
    retryable_codes: frozenset[grpc.StatusCode] = field(default=frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}))
    max_server_delay_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("backoffs must not be negative, multiplier must be >= 1, jitter in [0, 1]")

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """The pause before retry number ``retry`` (1 for the first retry)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * (1 - self.jitter * (rng or random).random())

    def retries(self, error: AsrError) -> bool:
        return error.code in self.retryable_codes and error.reason not in _NEVER_RETRY


NO_RETRY = RetryPolicy(max_attempts=1)


def server_delay_s(metadata: Iterable[tuple[str, str | bytes]]) -> float | None:
    """The server's retry hint in seconds; a negative number means "do not retry"; None without a hint."""
    for key, value in metadata:
        if key.lower() in HINT_KEYS:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            try:
                return int(text.strip()) / 1000.0
            except ValueError:
                log.debug("ignoring a malformed %s value %r", key, text)
    return None


@dataclass(frozen=True)
class RetryEvent:
    """Passed to ``on_retry`` before each pause: which attempt failed, why, and how long we wait."""

    attempt: int
    error: AsrError
    delay_s: float
    server_hint: bool


class Attempts:
    """The bookkeeping of one call's attempts: deadline, backoff, hints, giving up."""

    def __init__(self, policy: RetryPolicy, timeout_s: float | None, on_retry: Callable[[RetryEvent], None] | None = None):
        self.policy = policy
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.on_retry = on_retry
        self.attempt = 0

    def start(self) -> float | None:
        """Begin the next attempt; its timeout in seconds (None: no deadline)."""
        self.attempt += 1
        if self.deadline is None:
            return None
        return max(0.001, self.deadline - time.monotonic())

    def pause_after(self, error: AsrError, metadata: Iterable[tuple[str, str | bytes]]) -> float | None:
        """How long to wait before retrying ``error``, or None to give up (and raise it)."""
        if not self.policy.retries(error) or self.attempt >= self.policy.max_attempts:
            return None
        hint = server_delay_s(metadata)
        if hint is not None and hint < 0:
            return None
        delay = min(hint, self.policy.max_server_delay_s) if hint is not None else self.policy.backoff_s(self.attempt)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        log.info("attempt %d failed (%s); retrying in %.2f s", self.attempt, error.reason, delay)
        if self.on_retry is not None:
            self.on_retry(RetryEvent(self.attempt, error, delay, hint is not None))
        return delay
