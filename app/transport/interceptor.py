"""One interceptor around every RPC: request id, status mapping, metrics and the access log line.

Servicers raise core exceptions; this is the only place that turns them into status codes
(through ``errors.status_for``), so no handler ever leaks a traceback to a client.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc.aio import AbortError

from app import metrics
from app.core.errors import Overloaded
from app.transport.errors import status_for
from app.transport.handlers import rebuild

log = logging.getLogger("app.access")
errlog = logging.getLogger(__name__)

REQUEST_ID_KEY = "x-request-id"
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
OVERLOAD_PUSHBACK_MS = 250  # about one batch of a loaded GPU: long enough for the queue to move
_VALID_ID = re.compile(r"[A-Za-z0-9._:/-]{1,128}")

# Read by the log formatter and by servicers that put the id into responses.
current_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestFacts:
    """What a servicer wants logged about its request (audio seconds, model)."""

    def __init__(self) -> None:
        self.audio_s: float | None = None
        self.model: str | None = None
        self.code: grpc.StatusCode | None = None  # set by servicers that answer errors in-band (legacy API)


current_facts: contextvars.ContextVar[RequestFacts] = contextvars.ContextVar("request_facts")


def _request_id(metadata) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _VALID_ID.fullmatch(value):
            return value
    return uuid.uuid4().hex


@dataclass
class _Call:
    facts: RequestFacts
    peer: str
    start: float


class RequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, quiet_methods: tuple[str, ...] = ("/grpc.health.v1.Health/", "/grpc.reflection.")):
        self._quiet = quiet_methods

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self._quiet):
            return handler
        rpc = details.method.rsplit("/", 2)[-2].rsplit(".", 1)[-1] + "." + details.method.rsplit("/", 1)[-1]
        rid = _request_id(details.invocation_metadata)

        def begin(context) -> _Call:
            # Each RPC runs in its own task, so these context variables need no reset; and a
            # streaming handler may be finalised in another context, so `end` gets the facts directly.
            current_request_id.set(rid)
            facts = RequestFacts()
            current_facts.set(facts)
            context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
            metrics.IN_FLIGHT.labels(rpc).inc()
            # Read the peer now: touching the context after a cancelled call has ended crashes grpc.aio.
            return _Call(facts, context.peer(), time.perf_counter())

        async def fail(error: BaseException, context) -> None:
            """Abort the call with the status the exception maps to (cancellation propagates)."""
            if isinstance(error, asyncio.CancelledError):
                raise error
            code, message = status_for(error, rid)
            if code is grpc.StatusCode.INTERNAL:
                errlog.error("unhandled error in %s", rpc, exc_info=error)
            if isinstance(error, Overloaded):
                # The standard retry hint: gRPC's built-in retry policies (Go, Java, Node, ...) and our client honour it.
                context.set_trailing_metadata(((REQUEST_ID_KEY, rid), (RETRY_PUSHBACK_KEY, str(OVERLOAD_PUSHBACK_MS))))
            await context.abort(code, message)

        def end(call: _Call, code: grpc.StatusCode) -> None:
            facts = call.facts
            code = facts.code or code
            elapsed = time.perf_counter() - call.start
            metrics.IN_FLIGHT.labels(rpc).dec()
            metrics.REQUESTS.labels(rpc, code.name).inc()
            metrics.REQUEST_LATENCY.labels(rpc, code.name).observe(elapsed)
            log.info(
                "%s %s",
                rpc,
                code.name,
                extra={
                    "rpc": rpc,
                    "code": code.name,
                    "latency_ms": round(elapsed * 1000, 1),
                    "audio_s": None if facts.audio_s is None else round(facts.audio_s, 3),
                    "model": facts.model,
                    "peer": call.peer,
                    "request_id": rid,
                },
            )

        def code_of(error: BaseException, context) -> grpc.StatusCode:
            if isinstance(error, AbortError):
                return context.code() or grpc.StatusCode.UNKNOWN
            if isinstance(error, asyncio.CancelledError | GeneratorExit):  # the client went away
                return grpc.StatusCode.CANCELLED
            return status_for(error, rid)[0]

        def wrap_unary_response(behavior):
            async def wrapped(request_or_iterator, context: grpc.aio.ServicerContext):
                call = begin(context)
                code = grpc.StatusCode.OK
                try:
                    return await behavior(request_or_iterator, context)
                except BaseException as error:  # every failure must become a status
                    code = code_of(error, context)
                    if isinstance(error, AbortError):
                        raise
                    await fail(error, context)
                finally:
                    end(call, code)

            return wrapped

        def wrap_stream_response(behavior):
            async def wrapped(request_or_iterator, context: grpc.aio.ServicerContext):
                call = begin(context)
                code = grpc.StatusCode.OK
                try:
                    async for response in behavior(request_or_iterator, context):
                        yield response
                except BaseException as error:  # every failure must become a status
                    code = code_of(error, context)
                    if isinstance(error, AbortError | GeneratorExit):
                        raise
                    await fail(error, context)
                finally:
                    end(call, code)

            return wrapped

        return rebuild(handler, lambda kind, behavior: (wrap_stream_response if kind.endswith("_stream") else wrap_unary_response)(behavior))
