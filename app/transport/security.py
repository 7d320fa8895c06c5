"""TLS (with certificates re-read when their files change) and bearer-token authentication."""

from __future__ import annotations

import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from app.transport.handlers import rebuild

log = logging.getLogger(__name__)

AUTH_KEY = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."


class ConfigurationError(RuntimeError):
    """A security file is missing or unreadable; the server must not start without it."""


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigurationError(f"cannot read {what} {path}: {e.strerror}") from None


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str = ""

    def _stamp(self) -> tuple:
        stamps = []
        for path in (self.cert, self.key, self.client_ca):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append((st.st_mtime_ns, st.st_size, st.st_ino) if st else None)
        return tuple(stamps)

    def _config(self):
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key, "TLS key"), _read(self.cert, "TLS certificate"))],
            root_certificates=_read(self.client_ca, "client CA") if self.client_ca else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up rotated files for new connections, without a restart.

        gRPC asks the fetcher before each handshake; it answers with a new configuration only when a
        file changed (cert-manager and Kubernetes secret volumes replace files in place), so
        established connections and streams are untouched.
        """
        state = {"stamp": self._stamp()}
        initial = self._config()

        def fetch():
            stamp = self._stamp()
            if stamp == state["stamp"]:
                return None
            try:
                config = self._config()
            except ConfigurationError as e:
                # A half-written rotation: keep serving with the old certificate and try again next time.
                log.warning("TLS files changed but could not be read (%s); keeping the current certificate", e)
                return None
            state["stamp"] = stamp
            log.info("TLS certificate files changed: new connections use the new certificate")
            return config

        return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=bool(self.client_ca))


class TokenStore:
    """Bearer tokens from a file (one per line, re-read when it changes) and/or a fixed list.

    Rotation without downtime: add the new token, roll the clients, then remove the old one.
    """

    def __init__(self, file: str = "", inline: tuple[str, ...] = (), recheck_s: float = 2.0):
        self._file = file
        self._inline = tuple(t for t in inline if t)
        self._recheck_s = recheck_s
        self._checked_at = 0.0
        self._stamp = None
        self._from_file: tuple[bytes, ...] = ()
        if file:
            self._load(force=True)

    @property
    def enabled(self) -> bool:
        return bool(self._file or self._inline)

    def _load(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        try:
            st = os.stat(self._file)
        except OSError as e:
            if force:
                raise ConfigurationError(f"cannot read auth tokens file {self._file}: {e.strerror}") from None
            log.warning("auth tokens file %s is unreadable (%s); keeping the tokens already loaded", self._file, e.strerror)
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        lines = _read(self._file, "auth tokens file").decode("utf-8", "replace").splitlines()
        tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))
        if not tokens and not self._inline:
            log.warning("auth tokens file %s holds no tokens: every authenticated call will be refused", self._file)
        self._from_file, self._stamp = tokens, stamp
        if not force:
            log.info("auth tokens reloaded from %s (%d tokens)", self._file, len(tokens))

    def accepts(self, presented: str) -> bool:
        if self._file:
            self._load()
        candidate = presented.encode()
        # Compare against every token, always, in constant time: no early exit that a timer could see.
        ok = False
        for token in (*self._from_file, *(t.encode() for t in self._inline)):
            ok |= hmac.compare_digest(candidate, token)
        return ok


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request_or_iterator, context):
        await context.abort(code, message)

    return refuse


ADMIN_PREFIX = "/paraformer.asr.v1.Admin/"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Bearer tokens: UNAUTHENTICATED when missing or wrong, PERMISSION_DENIED for the Admin API without an admin token.

    Health (and optionally reflection) can stay open. The Admin API is refused outright unless admin
    tokens are configured; an admin token is also accepted wherever a user token is.
    """

    def __init__(self, tokens: TokenStore, admin_tokens: TokenStore, health_open: bool = True, reflection_open: bool = False):
        self._tokens = tokens
        self._admin = admin_tokens
        self._open = tuple(p for p, is_open in ((HEALTH_PREFIX, health_open), (REFLECTION_PREFIX, reflection_open)) if is_open)

    def _refusal(self, details: grpc.HandlerCallDetails) -> tuple[grpc.StatusCode, str] | None:
        method = details.method
        if method.startswith(ADMIN_PREFIX):
            if not self._admin.enabled:
                return grpc.StatusCode.PERMISSION_DENIED, "the Admin API is disabled on this server (no admin_tokens_file)"
            stores = (self._admin,)
        elif not self._tokens.enabled or method.startswith(self._open):
            return None
        else:
            stores = (self._tokens, self._admin)
        header = next((v for k, v in details.invocation_metadata or () if k == AUTH_KEY), None)
        if header is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing credentials: send an 'authorization: Bearer <token>' metadata header"
        token = header[7:].strip() if isinstance(header, str) and header.startswith("Bearer ") else None
        if token and any(store.enabled and store.accepts(token) for store in stores):
            return None
        if token and method.startswith(ADMIN_PREFIX) and self._tokens.enabled and self._tokens.accepts(token):
            return grpc.StatusCode.PERMISSION_DENIED, "this token may not use the Admin API"
        return grpc.StatusCode.UNAUTHENTICATED, "invalid credentials: the bearer token is not accepted"

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        refusal = self._refusal(details)
        handler = await continuation(details)
        if refusal is None or handler is None:
            return handler
        refuse = _deny(*refusal)
        return rebuild(handler, lambda kind, behavior: refuse)
