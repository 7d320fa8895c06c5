"""Server assembly: the gRPC server, its services, health, reflection, security, start-up and drain."""

from __future__ import annotations

import asyncio
import logging
import platform
import signal
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app import __version__, metrics
from app.config import Settings
from app.core.pipeline import RecognitionPipeline
from app.core.service import RecognitionService
from app.gen import asr_service_pb2, asr_service_pb2_grpc
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from app.transport.interceptor import RequestInterceptor
from app.transport.legacy_servicer import LegacyAsrServicer
from app.transport.security import AuthInterceptor, TlsFiles, TokenStore
from app.transport.v1_servicer import RecognizerServicer

log = logging.getLogger(__name__)

V1_SERVICE = asr_pb2.DESCRIPTOR.services_by_name["Recognizer"].full_name
LEGACY_SERVICE = asr_service_pb2.DESCRIPTOR.services_by_name["ASRService"].full_name
SERVICES = (V1_SERVICE, LEGACY_SERVICE)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: RecognitionService
    health: health.aio.HealthServicer
    health_server: grpc.aio.Server | None = None
    health_port: int = 0

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)

    async def stop(self, grace: float | None) -> None:
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    options = [
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
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


async def start_server(settings: Settings) -> RunningServer:
    """Listen at once (health NOT_SERVING) so probes and clients get answers while models load."""
    metrics.BUILD_INFO.info({"version": __version__, "grpcio": grpc.__version__, "python": platform.python_version()})
    interceptors: list[grpc.aio.ServerInterceptor] = [RequestInterceptor()]
    tokens = TokenStore(settings.auth_tokens_file, tuple(t.strip() for t in settings.auth_tokens.split(",")))
    if tokens.enabled:
        interceptors.append(AuthInterceptor(tokens, settings.auth_health_open, settings.auth_reflection_open))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=channel_options(settings),
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs or None,
    )
    service = RecognitionService()
    asr_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(service, settings.stream_idle_timeout_s), server)
    asr_service_pb2_grpc.add_ASRServiceServicer_to_server(LegacyAsrServicer(service, settings.legacy_max_upload_bytes), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    credentials = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file).credentials() if settings.tls else None
    port = _listen(server, f"{settings.host}:{settings.port}", credentials)
    await server.start()
    running = RunningServer(server, port, service, health_servicer)
    if settings.health_port:
        # Kubernetes' native gRPC probes cannot speak TLS: a plaintext port that serves health and nothing else.
        running.health_server = grpc.aio.server()
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


def derive_model_name(settings: Settings) -> str:
    if settings.model_name:
        return settings.model_name
    if settings.demo:
        return "demo-random-weights"
    return settings.asr_model.rstrip("/").rsplit("/", 1)[-1]


async def load_pipeline(settings: Settings) -> RecognitionPipeline:
    from app.engine.funasr_engine import FunasrEngine  # imports torch and funasr: seconds

    name = derive_model_name(settings)
    metrics.MODEL_READY.labels(name).set(0)
    engine = await asyncio.to_thread(FunasrEngine.load, settings)
    for role, seconds in engine.report.load_seconds.items():
        metrics.MODEL_LOAD_SECONDS.labels(name, role).set(seconds)
    for role, seconds in engine.report.warmup_seconds.items():
        metrics.MODEL_WARMUP_SECONDS.labels(name, role).set(seconds)
    pipeline = RecognitionPipeline(engine, settings, name)
    await pipeline.start()
    metrics.MODEL_READY.labels(name).set(1)
    return pipeline


async def drain(running: RunningServer, pipeline: RecognitionPipeline | None, settings: Settings) -> dict[str, int]:
    """Graceful shutdown: NOT_SERVING at once, refuse new work, let in-flight work finish, then stop.

    Unary calls get up to shutdown_grace_s; open streams get stream_grace_s (within it) to end on
    their own before they are cancelled. Returns what was in flight when the drain began.
    """
    running.service.drain()
    await running.set_serving(False)
    if pipeline is not None:
        metrics.MODEL_READY.labels(pipeline.model_name).set(0)
    start = time.monotonic()
    requests = pipeline.admission.items if pipeline else 0
    streams = pipeline.streams.open if pipeline else 0
    log.info("draining: %d requests and %d streams in flight", requests, streams)
    if pipeline is not None:
        stream_deadline = start + min(settings.stream_grace_s, settings.shutdown_grace_s)
        deadline = start + settings.shutdown_grace_s
        while time.monotonic() < deadline:
            streams_done = pipeline.streams.open == 0 or time.monotonic() >= stream_deadline
            if pipeline.admission.items == 0 and streams_done:
                break
            await asyncio.sleep(0.05)
    # What is still running now (streams past their grace) is cancelled; new calls are refused.
    await running.stop(grace=1.0)
    if pipeline is not None:
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
    load = asyncio.create_task(load_pipeline(settings))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopper}, return_when=asyncio.FIRST_COMPLETED)
    pipeline = None
    if load.done():
        try:
            pipeline = load.result()
        except ModelLoadError as e:
            log.error("cannot start: %s", e)
            running.service.fail()
            await running.stop(0)
            return 3
        running.service.ready(pipeline)
        await running.set_serving(True)
        log.info("serving %s on port %d", pipeline.model_name, running.port)
        await stop.wait()
    else:
        load.cancel()
    log.info("signal received: shutting down")
    await drain(running, pipeline, settings)
    log.info("stopped")
    return 0
