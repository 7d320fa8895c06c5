"""Failures the core reports, independent of any transport.

The transport maps each class to a status code in one place
(``app.transport.errors``); everything else is a bug and becomes INTERNAL.
"""

from __future__ import annotations


class RecognitionError(Exception):
    """Base class: ``str(error)`` is a message a person understands, safe to send to clients."""


class InvalidAudio(RecognitionError):
    """The audio cannot be used: undecodable, empty, too short, non-finite, unsupported layout."""


class InvalidConfig(RecognitionError):
    """A request setting is wrong or unknown."""


class LimitExceeded(RecognitionError):
    """The request is larger than a configured limit (the message names the limit)."""


class Overloaded(RecognitionError):
    """Admission control refused the request; the client should back off and retry."""


class Unavailable(RecognitionError):
    """The server cannot take requests now: models still loading, or the server is draining."""


class DeadlineExpired(RecognitionError):
    """The request's deadline passed before the model could run it."""


class StreamLimit(RecognitionError):
    """A stream ran past a limit of its own (maximum duration): it ends, the client may open another."""


class StreamIdle(RecognitionError):
    """A stream sent no audio for longer than the idle timeout."""
