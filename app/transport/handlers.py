"""Rebuilding a gRPC method handler around a new behaviour (what server interceptors need)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_FACTORIES = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def rebuild(handler: grpc.RpcMethodHandler, wrap: Callable[[str, Callable], Callable]) -> grpc.RpcMethodHandler:
    """The same method with ``wrap(kind, behaviour)`` as its behaviour; kind is e.g. "stream_stream"."""
    for kind, factory in _FACTORIES.items():
        behavior = getattr(handler, kind)
        if behavior:
            return factory(wrap(kind, behavior), request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    return handler
