"""Channels: target, TLS / mutual TLS, bearer tokens, load balancing and the options we always set.

Load balancing: a plain ``host:port`` target connects to one address (gRPC's ``pick_first``).
Behind a headless Kubernetes Service, whose DNS name resolves to every ready pod, give
``dns:///name.namespace.svc.cluster.local:50051`` and ``load_balancing="round_robin"``: the
channel then connects to all pods and spreads calls over them. gRPC re-resolves the name when a
connection drops; set the server's ``--max-connection-age-s`` so that clients also find new pods
while old ones stay healthy (docs/clients.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.client import errors
from app.client.errors import AsrError

DEFAULT_TARGET = "localhost:50051"
LOAD_BALANCING = ("pick_first", "round_robin")

# A whole file goes in one Recognize message: gRPC's default 4 MiB receive limit would refuse
# a long transcript with word times, and the sender's side must allow files as large as the
# server accepts (64 MiB by default; the server answers RESOURCE_EXHAUSTED above its limit).
MAX_SEND_BYTES = 512 * 1024 * 1024
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the channel. All PEM; ``None`` root certificates means the system's trust store.

    ``certificate_chain`` + ``private_key`` make it mutual TLS (the client proves who it is).
    ``server_name`` checks the server's certificate for that name instead of the target's host
    (for example when dialling an IP address).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise AsrError(None, "mutual TLS needs both a client certificate and its private key", errors.CONFIG)

    @classmethod
    def from_files(
        cls, ca_file: str | Path | None = None, cert_file: str | Path | None = None, key_file: str | Path | None = None, server_name: str | None = None
    ) -> TlsConfig:
        def read(path: str | Path | None, what: str) -> bytes | None:
            if not path:
                return None
            try:
                data = Path(path).expanduser().read_bytes()
            except OSError as e:
                raise AsrError(None, f"cannot read the {what} {path}: {e.strerror}", errors.CONFIG) from None
            if b"-----BEGIN" not in data:
                raise AsrError(None, f"the {what} {path} is not PEM", errors.CONFIG)
            return data

        return cls(read(ca_file, "CA certificate file"), read(cert_file, "client certificate file"), read(key_file, "client key file"), server_name or None)

    def credentials(self):
        import grpc

        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def resolve_tls(tls: bool | TlsConfig | None) -> TlsConfig | None:
    if tls is None or tls is False:
        return None
    return TlsConfig() if tls is True else tls


def channel_options(load_balancing: str | None, tls: TlsConfig | None, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        # Come back quickly after a restart (gRPC's default first reconnect pause is 1 s, up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 10_000),
        # Notice a dead connection (a node gone, a NAT entry expired) during a quiet stream. The
        # server refuses pings more often than every 10 s (--keepalive-min-ping-interval-s).
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
    ]
    if load_balancing:
        if load_balancing not in LOAD_BALANCING:
            raise ValueError(f"load_balancing must be one of {', '.join(LOAD_BALANCING)}, not {load_balancing!r}")
        options.append(("grpc.service_config", json.dumps({"loadBalancingConfig": [{load_balancing: {}}]})))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    names = {name for name, _ in extra}
    return [o for o in options if o[0] not in names] + list(extra)


TokenSource = str | Callable[[], str] | None


def call_metadata(token: TokenSource, request_id: str | None, extra: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Per-call metadata: the bearer token (read again for every call when it is a function), the request id."""
    metadata = list(extra)
    value = token() if callable(token) else token
    if value:
        metadata.append(("authorization", f"Bearer {value.strip()}"))
    if request_id:
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)
