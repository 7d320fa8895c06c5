"""``paraformer-asr``: serve, transcribe, and the small tools around them."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
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
    from app.engine.loader import ModelLoadError, is_disabled, resolve_configured_model
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
            source = resolve_configured_model(role, spec, settings, allow_random=settings.allow_random_weights)
            print(f"{role}: {source.path}")
    except ModelLoadError as e:
        print(f"paraformer-asr: {e}", file=sys.stderr)
        return 3
    return 0


def _build_demo(args: argparse.Namespace) -> int:
    from app.engine.tiny_models import LARGE_ASR, TINY_ASR, build_demo_models

    dirs = build_demo_models(Path(args.directory), seed=args.seed, asr_dims=LARGE_ASR if args.large else TINY_ASR)
    print(json.dumps({k: str(v) for k, v in dataclasses.asdict(dirs).items()}))
    return 0


def _client_command(name: str):
    """Run a client command from app.client.commands, imported only when one runs (it imports gRPC).

    gRPC's C core logs TLS handshake failures and the like to stderr on its own; the commands
    report them as one clear line, so its logging is off unless GRPC_VERBOSITY asks for it.
    """

    def run(args: argparse.Namespace) -> int:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
        from app.client import commands

        try:
            return getattr(commands, f"{name}_command")(args)
        except BrokenPipeError:  # `paraformer-asr transcribe ... | head`: the reader left, stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141

    return run


def _add_connection_arguments(parser: argparse.ArgumentParser, timeout: float | None, timeout_help: str) -> None:
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--target",
        default=None,
        help="server address: HOST:PORT, or a gRPC target such as dns:///asr-headless.ns.svc:50051 (default: $PARAFORMER_ASR_TARGET, else localhost:50051)",
    )
    conn.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs (implied by --ca-file/--cert-file)")
    conn.add_argument("--ca-file", help="PEM CA certificate(s) to trust for the server's certificate (implies --tls)")
    conn.add_argument("--cert-file", help="PEM client certificate, for mutual TLS (with --key-file)")
    conn.add_argument("--key-file", help="PEM private key of --cert-file")
    conn.add_argument("--server-name", help="expect this name on the server's certificate (when dialling an IP address or an alias)")
    conn.add_argument("--token-file", help="file holding the bearer token (read again for every call)")
    conn.add_argument("--token", help="bearer token (visible to other local users in the process list: prefer --token-file or $PARAFORMER_ASR_TOKEN)")
    conn.add_argument(
        "--load-balancing",
        choices=("pick_first", "round_robin"),
        default=None,
        help="round_robin spreads calls over every address the target resolves to (a headless Kubernetes Service)",
    )
    conn.add_argument("--timeout", type=float, default=timeout, help=timeout_help)
    conn.add_argument("--retries", type=int, default=4, help="retries on UNAVAILABLE and RESOURCE_EXHAUSTED, with exponential backoff (default: 4)")


def _add_recognition_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--words", action="store_true", help="ask for word timings (shown in JSON)")
    parser.add_argument("--no-punctuation", action="store_true", help="unpunctuated text")
    parser.add_argument("--hotword", action="append", default=[], metavar="PHRASE[:BOOST]", help="a phrase to favour (repeatable)")
    parser.add_argument("--model", default="", help="model pipeline name (default: the server's)")


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

    tr = sub.add_parser(
        "transcribe",
        help="transcribe audio files with a running server",
        description="Transcribe files, globs or directories with a running server. Output goes to stdout (or one file "
        "per input with --output-dir); errors and progress to stderr. Exit code 0 when every file was transcribed, "
        "1 when any failed (with a summary), 2 for a bad command line.",
    )
    tr.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, quoted globs ('calls/**/*.mp3') or directories (searched recursively)")
    tr.add_argument("--format", "-f", choices=("text", "json", "srt", "vtt"), default="text", help="output format (default: text)")
    tr.add_argument("--json", action="store_true", help="same as --format json: one JSON object per file (the RecognizeResponse)")
    tr.add_argument("--output-dir", "-o", help="write one file per input here (NAME.txt/.json/.srt/.vtt) instead of printing")
    tr.add_argument("--concurrency", "-j", type=int, default=4, help="files in flight at once (default: 4)")
    tr.add_argument("--max-cue-chars", type=int, default=0, help="srt/vtt: cut sentences longer than this into several cues, by word timings")
    progress = tr.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="progress on stderr (default: on a terminal, for several files or a large one)"
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")
    _add_recognition_arguments(tr)
    _add_connection_arguments(tr, 600.0, "deadline per file in seconds, retries included (default: 600)")
    tr.set_defaults(func=_client_command("transcribe"))

    st = sub.add_parser(
        "stream",
        help="stream an audio file to the server at real-time pace, printing interim and final results",
        description="Decode FILE (any format), play it to StreamingRecognize at real-time pace and print the results: "
        "interim ones rewritten in place on one line, finals on lines of their own.",
    )
    st.add_argument("file", help="audio file (wav, flac, ogg, mp3, m4a, webm, ...)")
    st.add_argument("--speed", type=float, default=1.0, help="play faster than real time, e.g. 2 (default: 1)")
    st.add_argument("--no-realtime", action="store_true", help="send the audio as fast as the connection takes it")
    st.add_argument("--no-interim", action="store_true", help="final results only")
    st.add_argument("--mode", choices=("auto", "two-pass", "online", "offline"), default="auto", help="which models run (default: the server's choice)")
    st.add_argument("--single-utterance", action="store_true", help="stop after the first final result")
    st.add_argument("--timestamps", action="store_true", help="prefix final results with their start and end time")
    st.add_argument("--json", action="store_true", help="print every result and speech event as a JSON line")
    st.add_argument("--chunk-ms", type=int, default=100, help="audio per message, milliseconds (default: 100)")
    _add_recognition_arguments(st)
    _add_connection_arguments(st, None, "deadline for the whole stream in seconds (default: none)")
    st.set_defaults(func=_client_command("stream"))

    hc = sub.add_parser(
        "health",
        help="check a server's gRPC health; exit 0 when SERVING",
        description="Print the server's health status. Exit code 0 when SERVING, 1 for any other status, 2 when the server cannot be asked.",
    )
    hc.add_argument("--service", default="", help="service name; empty for the whole server")
    hc.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait up to this long for SERVING before answering")
    _add_connection_arguments(hc, 5.0, "deadline of the check in seconds (default: 5)")
    hc.set_defaults(func=_client_command("health"), retries=0)

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
