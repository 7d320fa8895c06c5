"""Where a status code is chosen: core exceptions -> gRPC status codes, in one table."""

from __future__ import annotations

import grpc

from app.core import errors

STATUS_OF: dict[type[errors.RecognitionError], grpc.StatusCode] = {
    errors.InvalidAudio: grpc.StatusCode.INVALID_ARGUMENT,
    errors.InvalidConfig: grpc.StatusCode.INVALID_ARGUMENT,
    errors.LimitExceeded: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.StreamLimit: grpc.StatusCode.OUT_OF_RANGE,
    errors.StreamIdle: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(error: BaseException, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The status code and client-safe message for an exception. Unknown ones are bugs: INTERNAL."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls], str(error)
    return grpc.StatusCode.INTERNAL, f"internal error; quote request id {request_id} when reporting it"
