"""``paraformer-asr``: serve, transcribe, and the small tools around them."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path

from app import __version__
from app.config import ConfigError, Settings, add_arguments, load_settings, reference_markdown

DEMO_BANNER = """
################################################################################
#  DEMO MODE: serving tiny RANDOM-WEIGHT models. Transcripts are NONSENSE.     #
#  Everything else is real: gRPC API, health, reflection, batching, metrics.   #
#  For real recognition pass --asr-model/--vad-model/--punc-model (dirs or ids)#
################################################################################
"""


def demo_settings(settings: Settings) -> Settings:
    """Build (or reuse) the demo models and point the settings at them."""
    from app.engine.tiny_models import build_demo_models

    dirs = build_demo_models(Path(settings.demo_dir).expanduser())
    return dataclasses.replace(settings, asr_model=str(dirs.asr), vad_model=str(dirs.vad), punc_model=str(dirs.punc), online_model=str(dirs.online))


def _serve(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    # FunASR reconfigures logging on import: import it first, then configure ours.
    import app.engine.funasr_engine  # noqa: F401
    from app.logging_setup import configure
    from app.transport.security import ConfigurationError
    from app.transport.server import serve

    configure(settings.log_level, settings.log_format)
    if settings.demo:
        print(DEMO_BANNER, file=sys.stderr, flush=True)
        settings = demo_settings(settings)
    try:
        return asyncio.run(serve(settings))
    except (ConfigurationError, OSError) as e:
        print(f"paraformer-asr: cannot start: {e}", file=sys.stderr)
        return 2


def _fetch_models(args: argparse.Namespace) -> int:
    from app.engine.loader import ModelLoadError, is_disabled, resolve_model_dir
    from app.logging_setup import configure

    settings = load_settings(args)
    configure(settings.log_level, "text")
    try:
        for role, spec in (
            ("asr", settings.asr_model),
            ("vad", settings.vad_model),
            ("punc", settings.punc_model),
            ("online", settings.online_model),
        ):
            if is_disabled(spec):
                continue
            source = resolve_model_dir(
                role,
                spec,
                revision=settings.model_revision,
                cache_dir=settings.model_cache_dir,
                offline=settings.offline,
                download_timeout_s=settings.download_timeout_s,
                allow_random=settings.allow_random_weights,
            )
            print(f"{role}: {source.path}")
    except ModelLoadError as e:
        print(f"paraformer-asr: {e}", file=sys.stderr)
        return 3
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc

    failed = 0
    options = [("grpc.max_send_message_length", 512 * 1024 * 1024), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(args.target, options=options) as channel:
        stub = asr_pb2_grpc.RecognizerStub(channel)
        for path in args.files:
            try:
                content = Path(path).read_bytes()
            except OSError as e:
                print(f"{path}: cannot read: {e.strerror}", file=sys.stderr)
                failed += 1
                continue
            config = asr_pb2.RecognitionConfig(enable_word_time_offsets=args.words)
            if args.no_punctuation:
                config.enable_automatic_punctuation = False
            request = asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=content))
            try:
                response = stub.Recognize(request, timeout=args.timeout)
            except grpc.RpcError as e:
                print(f"{path}: {e.code().name}: {e.details()}", file=sys.stderr)
                failed += 1
                continue
            if args.json:
                print(json.dumps(MessageToDict(response), ensure_ascii=False, indent=2))
            else:
                print(f"{path}\t{response.transcript}" if len(args.files) > 1 else response.transcript)
    return 1 if failed else 0


def _build_demo(args: argparse.Namespace) -> int:
    from app.engine.tiny_models import LARGE_ASR, TINY_ASR, build_demo_models

    dirs = build_demo_models(Path(args.directory), seed=args.seed, asr_dims=LARGE_ASR if args.large else TINY_ASR)
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(dirs).items()}))
    return 0


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(args.target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paraformer-asr", description="Paraformer speech recognition over gRPC.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gRPC server", description="Run the gRPC server. Every flag has an ASR_* environment variable.")
    add_arguments(serve)
    serve.set_defaults(func=_serve)

    fetch = sub.add_parser("fetch-models", help="download the configured hub models into the cache and exit")
    add_arguments(fetch)
    fetch.set_defaults(func=_fetch_models)

    tr = sub.add_parser("transcribe", help="transcribe audio files with a running server")
    tr.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3, m4a, ...)")
    tr.add_argument("--target", default="localhost:50051", help="server address HOST:PORT")
    tr.add_argument("--json", action="store_true", help="print the whole response as JSON")
    tr.add_argument("--words", action="store_true", help="ask for word timings (shown with --json)")
    tr.add_argument("--no-punctuation", action="store_true", help="unpunctuated text")
    tr.add_argument("--timeout", type=float, default=600.0, help="deadline per file, seconds")
    tr.set_defaults(func=_transcribe)

    hc = sub.add_parser("health", help="check a server's gRPC health; exit 0 when SERVING")
    hc.add_argument("--target", default="localhost:50051")
    hc.add_argument("--service", default="", help="service name; empty for the whole server")
    hc.add_argument("--timeout", type=float, default=5.0)
    hc.set_defaults(func=_health)

    demo = sub.add_parser("build-demo-models", help="build random-weight FunASR models (tests, demo, benchmarks)")
    demo.add_argument("directory")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--large", action="store_true", help="ASR model with Paraformer-large's architecture (220M parameters)")
    demo.set_defaults(func=_build_demo)

    ref = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    ref.set_defaults(func=lambda _: print(reference_markdown(), end="") or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"paraformer-asr: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
