"""Server assembly: the gRPC server, its services, health, reflection, security, start-up and drain."""

from __future__ import annotations

import asyncio
import logging
import platform
import signal
import sys
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app import __version__, metrics
from app.config import Settings, model_settings
from app.core.pipeline import RecognitionPipeline
from app.core.service import RecognitionService
from app.gen import asr_service_pb2, asr_service_pb2_grpc
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from app.transport.admin_servicer import AdminServicer
from app.transport.interceptor import RequestInterceptor
from app.transport.legacy_servicer import LegacyAsrServicer
from app.transport.security import AuthInterceptor, TlsFiles, TokenStore
from app.transport.v1_servicer import RecognizerServicer

log = logging.getLogger(__name__)

V1_SERVICE = asr_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name
ADMIN_SERVICE = asr_pb2.DESCRIPTOR.services_by_name["Admin"].full_name
LEGACY_SERVICE = asr_service_pb2.DESCRIPTOR.services_by_name["ASRService"].full_name
SERVICES = (V1_SERVICE, LEGACY_SERVICE)


def model_health_name(model: str) -> str:
    """The health service name of one model pipeline (probes and clients can check a model)."""
    return f"{V1_SERVICE}/{model}"


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: RecognitionService
    health: health.aio.HealthServicer
    default_model: str
    model_settings: dict[str, Settings]
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES, *(model_health_name(m.name) for m in self.service.models())):
            await self.health.set(name, status)

    async def set_model_serving(self, model: str, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(model_health_name(model), status)

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    options = [
        # Without this a second server on the same port starts silently and steals half the connections.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
        # Keepalive enforcement: pings more often than this are "strikes"; two strikes close the connection.
        ("grpc.http2.min_ping_interval_without_data_ms", int(settings.keepalive_min_ping_interval_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
    if settings.max_connection_age_s:
        options += [
            ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: the address is in use or not available here")
    return port


async def start_server(settings: Settings) -> RunningServer:
    """Listen at once (health NOT_SERVING) so probes and clients get answers while models load."""
    metrics.BUILD_INFO.info({"version": __version__, "grpcio": grpc.__version__, "python": platform.python_version()})
    metrics.time_garbage_collections()
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    default_model, per_model = model_settings(settings)  # a bad models_config fails here, before listening
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestInterceptor()]
    tokens = TokenStore(settings.auth_tokens_file, tuple(t.strip() for t in settings.auth_tokens.split(",")))
    admin_tokens = TokenStore(settings.admin_tokens_file, tuple(t.strip() for t in settings.admin_tokens.split(",")))
    # Always installed: even without user tokens it keeps the Admin API shut unless admin tokens exist.
    interceptors.append(AuthInterceptor(tokens, admin_tokens, settings.auth_health_open, settings.auth_reflection_open))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=channel_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    service = RecognitionService()
    asr_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(service, settings.stream_idle_timeout_s), server)
    asr_service_pb2_grpc.add_ASRServiceServicer_to_server(LegacyAsrServicer(service, settings.legacy_max_upload_bytes, settings.stream_idle_timeout_s), server)
    asr_pb2_grpc.add_AdminServicer_to_server(AdminServicer(service, per_model, default_model, settings.shutdown_grace_s), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    credentials = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file).credentials() if settings.tls else None
    port = _listen(server, f"{settings.host}:{settings.port}", credentials)
    await server.start()
    for name in per_model:
        metrics.MODEL_READY.labels(name).set(0)
    running = RunningServer(server, port, service, health_servicer, default_model, per_model)
    service.on_model_state = running.set_model_serving
    if settings.health_port:
        # Kubernetes' native gRPC probes cannot speak TLS: a plaintext port that serves health and nothing else.
        running.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, running.health_server)
        running.health_port = _listen(running.health_server, f"{settings.host}:{settings.health_port}", None)
        await running.health_server.start()
    if settings.metrics_port:
        from prometheus_client import disable_created_metrics, start_http_server

        disable_created_metrics()  # the *_created series double the series count and nobody graphs them
        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    await running.set_serving(False)
    security = ("mutual TLS" if settings.tls_client_ca_file else "TLS") if settings.tls else "plaintext"
    log.info(
        "listening on %s:%d (%s%s; not serving until models are loaded)",
        settings.host,
        port,
        security,
        ", token auth" if tokens.enabled else "",
    )
    return running


async def load_models(running: RunningServer) -> None:
    """Load every configured pipeline (one after the other: memory), then report SERVING."""
    pipelines = {}
    try:
        for name, model_settings_ in running.model_settings.items():
            pipelines[name] = await RecognitionPipeline.load(model_settings_)
    except BaseException:
        for pipeline in pipelines.values():
            await pipeline.close()
        raise
    running.service.ready(pipelines, running.default_model)
    await running.set_serving(True)


async def drain(running: RunningServer, settings: Settings) -> dict[str, int]:
    """Graceful shutdown: NOT_SERVING at once, refuse new work, let in-flight work finish, then stop.

    Unary calls get up to shutdown_grace_s; open streams get stream_grace_s (within it) to end on
    their own before they are cancelled. Returns what was in flight when the drain began.
    """
    running.service.drain()
    await running.set_serving(False)
    pipelines = running.service.pipelines
    for pipeline in pipelines:
        metrics.MODEL_READY.labels(pipeline.model_name).set(0)
    start = time.monotonic()
    requests = sum(p.admission.items for p in pipelines)
    streams = sum(p.streams.open for p in pipelines)
    log.info("draining: %d requests and %d streams in flight", requests, streams)
    stream_deadline = start + min(settings.stream_grace_s, settings.shutdown_grace_s)
    deadline = start + settings.shutdown_grace_s
    while time.monotonic() < deadline:
        streams_done = all(p.streams.open == 0 for p in pipelines) or time.monotonic() >= stream_deadline
        if all(p.admission.items == 0 for p in pipelines) and streams_done:
            break
        await asyncio.sleep(0.05)
    # What is still running now (streams past their grace) is cancelled; new calls are refused.
    await running.stop(grace=1.0)
    for pipeline in pipelines:
        await pipeline.close()
    log.info("drained in %.1f s", time.monotonic() - start)
    return {"requests": requests, "streams": streams}


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain. Returns the process exit code."""
    from app.engine.loader import ModelLoadError

    log.info("settings", extra={"settings": settings.public_dict()})
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    load = asyncio.create_task(load_models(running))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if load.done():
        try:
            load.result()
        except ModelLoadError as e:
            log.error("cannot start: %s", e)
            running.service.fail()
            await running.stop(0)
            return 3
        names = ", ".join(m.name for m in running.service.models())
        log.info("serving %s on port %d", names, running.port)
        await stop.wait()
    else:
        load.cancel()
    log.info("signal received: shutting down")
    await drain(running, settings)
    log.info("stopped")
    return 0
