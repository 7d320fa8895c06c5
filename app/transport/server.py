"""Server assembly: the gRPC server, its services, health, reflection, start-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import platform
import signal
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

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *SERVICES):
            await self.health.set(name, status)


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.max_send_message_bytes),
    ]


async def start_server(settings: Settings) -> RunningServer:
    """Listen at once (health NOT_SERVING) so probes and clients get answers while models load."""
    metrics.BUILD_INFO.info({"version": __version__, "grpcio": grpc.__version__, "python": platform.python_version()})
    server = grpc.aio.server(interceptors=[RequestInterceptor()], options=channel_options(settings))
    service = RecognitionService()
    asr_pb2_grpc.add_RecognizerServicer_to_server(RecognizerServicer(service, settings.stream_idle_timeout_s), server)
    asr_service_pb2_grpc.add_ASRServiceServicer_to_server(LegacyAsrServicer(service, settings.legacy_max_upload_bytes), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.host)
        log.info("metrics on http://%s:%d/metrics", settings.host, settings.metrics_port)
    running = RunningServer(server, port, service, health_servicer)
    await running.set_serving(False)
    log.info("listening on %s:%d (not serving until models are loaded)", settings.host, port)
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


async def serve(settings: Settings, started: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    from app.engine.loader import ModelLoadError

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
            await running.server.stop(0)
            return 3
        running.service.ready(pipeline)
        await running.set_serving(True)
        log.info("serving %s on port %d", pipeline.model_name, running.port)
        if started is not None:
            started.set()
        await stop.wait()
    else:
        load.cancel()
    log.info("shutting down: refusing new requests, letting in-flight ones finish (up to %.0f s)", settings.shutdown_grace_s)
    running.service.drain()
    await running.health.enter_graceful_shutdown()
    await running.server.stop(settings.shutdown_grace_s)
    if pipeline is not None:
        await pipeline.close()
    log.info("stopped")
    return 0
