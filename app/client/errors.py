"""Client errors: one exception type with the status code, the server's words, and a one-line reason.

gRPC reports every connection problem as UNAVAILABLE with a long technical message (and a TLS
problem is often only "Socket closed"). ``AsrError`` keeps that text in ``details`` and names the
problem in ``reason`` (a short stable word) and ``str(error)`` (a sentence a person understands),
so that scripts can branch on ``reason`` and people can read the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

# Reasons: stable names, for code that wants to branch on what went wrong.
UNREACHABLE = "unreachable"  # nothing listens there, or the network drops the connection
DNS = "dns"  # the host name does not resolve
PLAINTEXT_TO_TLS = "plaintext_to_tls"  # the server closed a plaintext connection: it probably wants TLS
TLS_NOT_SUPPORTED = "tls_not_supported"  # TLS was offered to a plaintext server
TLS_UNTRUSTED = "tls_untrusted"  # the server's certificate is not signed by a trusted CA
TLS_NAME = "tls_name"  # the server's certificate does not name the host we dialled
TLS_REFUSED = "tls_refused"  # the server ended the handshake: (mutual TLS) no or a wrong client certificate
CONFIG = "config"  # our own settings: an unreadable TLS or token file, a file that is not PEM
UNAUTHENTICATED = "unauthenticated"  # no or a wrong bearer token
PERMISSION_DENIED = "permission_denied"
BUSY = "busy"  # RESOURCE_EXHAUSTED: the server's queue or stream slots are full
SHUTTING_DOWN = "shutting_down"  # the server is draining
LOADING = "loading"  # the server is still loading its models
UNAVAILABLE = "unavailable"  # some other UNAVAILABLE
TIMEOUT = "timeout"  # our deadline passed
INVALID = "invalid"  # INVALID_ARGUMENT: the audio or a setting is wrong
TOO_LARGE = "too_large"  # a message over gRPC's size limit
CANCELLED = "cancelled"
INTERNAL = "internal"
OTHER = "other"

# Reasons that mean "this server cannot be used as configured": retrying, or sending the next
# file, will fail the same way.
CONNECTION_REASONS = frozenset({UNREACHABLE, DNS, PLAINTEXT_TO_TLS, TLS_NOT_SUPPORTED, TLS_UNTRUSTED, TLS_NAME, TLS_REFUSED, CONFIG})
FATAL_REASONS = CONNECTION_REASONS | {UNAUTHENTICATED, PERMISSION_DENIED}

_SIZE_LIMIT = re.compile(r"(Received|Sent) message larger than max", re.I)


def _classify(code: grpc.StatusCode | None, details: str, tls: bool) -> str:
    text = details or ""
    if code is grpc.StatusCode.UNAVAILABLE:
        if "Connection refused" in text or "Failed to connect to remote host" in text or "No route to host" in text:
            return UNREACHABLE
        if ("lookup" in text and ("not found" in text or "failed" in text)) or "DNS resolution failed" in text:
            return DNS
        if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
            return TLS_NOT_SUPPORTED
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return TLS_UNTRUSTED
        if "Hostname Verification" in text or "No match found for server name" in text:
            return TLS_NAME
        if "Tls handshake failed" in text or "Ssl handshake failed" in text or "SSL_ERROR" in text:
            return TLS_REFUSED
        if "Socket closed" in text or "Connection reset" in text or "failed to connect to all addresses" in text:
            if "Socket closed" in text:
                return TLS_REFUSED if tls else PLAINTEXT_TO_TLS
            return UNREACHABLE
        if "shutting down" in text:
            return SHUTTING_DOWN
        if "loading" in text:
            return LOADING
        return UNAVAILABLE
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return TOO_LARGE if _SIZE_LIMIT.search(text) else BUSY
    return {
        grpc.StatusCode.UNAUTHENTICATED: UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED: PERMISSION_DENIED,
        grpc.StatusCode.DEADLINE_EXCEEDED: TIMEOUT,
        grpc.StatusCode.INVALID_ARGUMENT: INVALID,
        grpc.StatusCode.CANCELLED: CANCELLED,
        grpc.StatusCode.INTERNAL: INTERNAL,
    }.get(code, OTHER)


def _summary(reason: str, target: str, details: str) -> str:
    """The one-line message for a reason: what happened and what usually fixes it."""
    where = target or "the server"
    return {
        UNREACHABLE: f"cannot reach {where}: connection refused or no route (is the server running at that address?)",
        DNS: f"cannot resolve the host name of {where}",
        PLAINTEXT_TO_TLS: f"{where} closed the connection: it probably requires TLS",
        TLS_NOT_SUPPORTED: f"TLS handshake with {where} failed: the server does not speak TLS",
        TLS_UNTRUSTED: f"TLS handshake with {where} failed: its certificate is not signed by a CA this client trusts",
        TLS_NAME: f"TLS handshake with {where} failed: its certificate is not valid for the host name dialled",
        TLS_REFUSED: f"TLS handshake with {where} failed: the server refused it (mutual TLS wants a client certificate signed by the server's CA)",
        UNAUTHENTICATED: f"{where} refused the credentials: {details}",
        PERMISSION_DENIED: f"{where} denied the call: {details}",
        BUSY: f"{where}: {details}",
        SHUTTING_DOWN: f"{where}: {details}",
        LOADING: f"{where}: {details}",
        TIMEOUT: f"no answer from {where} before the deadline: {details}",
        TOO_LARGE: f"message too large for {where}: {details}",
        CONFIG: details,
    }.get(reason, details or "call failed")


@dataclass(eq=False)
class AsrError(Exception):
    """A failed call. ``str(error)`` is one line for people; the fields are for programs.

    Attributes:
        code: the gRPC status code (None for errors raised before any call, such as unreadable TLS files).
        details: the server's (or gRPC's) message, verbatim.
        reason: a stable short name of the problem (``app.client.errors.UNREACHABLE``, ``BUSY``, ...).
        target: the server address.
        request_id: the server's request id (x-request-id trailing metadata), when it sent one.
        attempts: how many attempts were made (more than 1 when the call was retried).
    """

    code: grpc.StatusCode | None
    details: str
    reason: str = OTHER
    target: str = ""
    request_id: str = ""
    attempts: int = 1

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if self.reason in _REASONS_WITH_SUMMARY:
            text = _summary(self.reason, self.target, self.details)
        else:
            code = self.code.name if self.code is not None else ""
            text = ": ".join(part for part in (code, self.details) if part) or "call failed"
        extra = []
        if self.attempts > 1:
            extra.append(f"after {self.attempts} attempts")
        if self.request_id:
            extra.append(f"request id {self.request_id}")
        return f"{text} [{', '.join(extra)}]" if extra else text

    def __str__(self) -> str:
        return self.message

    @property
    def is_connection_problem(self) -> bool:
        """True when the server could not be reached or the TLS handshake failed."""
        return self.reason in CONNECTION_REASONS

    @property
    def is_fatal(self) -> bool:
        """True when every further call to this server would fail the same way (connection, TLS, credentials)."""
        return self.reason in FATAL_REASONS

    @classmethod
    def from_rpc(cls, error: grpc.RpcError, target: str, tls: bool, attempts: int = 1) -> AsrError:
        code = error.code() if hasattr(error, "code") else None
        details = (error.details() if hasattr(error, "details") else str(error)) or ""
        return cls(code, details, _classify(code, details, tls), target, request_id_of(error), attempts)


_REASONS_WITH_SUMMARY = frozenset(
    {UNREACHABLE, DNS, PLAINTEXT_TO_TLS, TLS_NOT_SUPPORTED, TLS_UNTRUSTED, TLS_NAME, TLS_REFUSED, CONFIG, UNAUTHENTICATED, PERMISSION_DENIED}
    | {BUSY, SHUTTING_DOWN, LOADING, TIMEOUT, TOO_LARGE}
)


def trailing_metadata(error: grpc.RpcError) -> tuple[tuple[str, str | bytes], ...]:
    try:
        return tuple(error.trailing_metadata() or ())
    except Exception:  # not a call object (e.g. a bare RpcError)
        return ()


def request_id_of(error: grpc.RpcError) -> str:
    for key, value in trailing_metadata(error):
        if key == "x-request-id":
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return ""
