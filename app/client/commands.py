"""The client commands of ``paraformer-asr``: transcribe, stream, health (argument parsing is in app/cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import sys
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from app.client import errors
from app.client.aio import AsyncClient
from app.client.channel import TlsConfig
from app.client.errors import AsrError
from app.client.formats import EXTENSIONS, render, timestamp
from app.client.retry import RetryPolicy
from app.client.sync import Client
from app.client.types import SpeechEvent, StreamingMode, StreamResult

PROG = "paraformer-asr"
TARGET_ENV = "PARAFORMER_ASR_TARGET"
TOKEN_ENV = "PARAFORMER_ASR_TOKEN"
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm", ".weba"}
    | {".mka", ".mkv", ".aif", ".aiff", ".wma", ".amr", ".3gp", ".caf", ".spx"}
)

LARGE_INPUT_BYTES = 8 * 1024 * 1024  # about 4 minutes of 16 kHz wav

# What to do about each connection or credential problem, in this command's own flags.
HINTS = {
    errors.UNREACHABLE: "check --target",
    errors.DNS: "check the host name in --target",
    errors.PLAINTEXT_TO_TLS: "add --tls, and --ca-file when its CA is not a public one",
    errors.TLS_NOT_SUPPORTED: "connect without --tls/--ca-file",
    errors.TLS_UNTRUSTED: "give the CA that signed it with --ca-file",
    errors.TLS_NAME: "give the name on its certificate with --server-name",
    errors.TLS_REFUSED: "give a client certificate with --cert-file and --key-file",
    errors.UNAUTHENTICATED: f"give a valid token with --token-file, --token or {TOKEN_ENV}",
}


class UsageError(Exception):
    """A problem with the command line itself: exit code 2."""


def explain(error: AsrError) -> str:
    hint = HINTS.get(error.reason)
    return f"{error}; {hint}" if hint else str(error)


def fail(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


# --- connection -------------------------------------------------------------------------------


def _token(args: argparse.Namespace):
    if args.token_file:
        path = Path(args.token_file).expanduser()

        def read() -> str:
            try:
                return path.read_text().strip()
            except OSError as e:
                raise AsrError(None, f"cannot read the token file {path}: {e.strerror}", errors.CONFIG) from None

        read()  # fail now, not on the first call
        return read
    return args.token or os.environ.get(TOKEN_ENV) or None


def _tls(args: argparse.Namespace) -> bool | TlsConfig:
    if args.ca_file or args.cert_file or args.key_file or args.server_name:
        return TlsConfig.from_files(args.ca_file, args.cert_file, args.key_file, args.server_name)
    return bool(args.tls)


def _retry(args: argparse.Namespace) -> RetryPolicy:
    return RetryPolicy(max_attempts=max(1, args.retries + 1))


def client_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        tls=_tls(args),
        token=_token(args),
        timeout=args.timeout,
        retry=_retry(args),
        load_balancing=args.load_balancing,
    )


def target_of(args: argparse.Namespace) -> str:
    return args.target or os.environ.get(TARGET_ENV) or "localhost:50051"


# --- transcribe -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    path: Path
    name: str  # relative name under --output-dir
    size: int


def _audio_files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def expand_inputs(inputs: list[str]) -> list[Job]:
    """Files, globs (quoted, so that the shell leaves them alone; ``**`` recurses) and directories -> jobs."""
    jobs: list[Job] = []
    seen: set[Path] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        jobs.append(Job(path, name, size))

    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = _audio_files_under(path)
            if not found:
                raise UsageError(f"no audio files under {spec} (looked for {', '.join(sorted(AUDIO_EXTENSIONS))})")
            for f in found:
                add(f, str(f.relative_to(path)))
        elif not path.exists() and glob.has_magic(spec):
            matches = sorted(glob.glob(os.path.expanduser(spec), recursive=True))
            files = [Path(m) for m in matches if Path(m).is_file()]
            for d in (Path(m) for m in matches if Path(m).is_dir()):
                files.extend(_audio_files_under(d))
            if not files:
                raise UsageError(f"no files match {spec}")
            for f in files:
                add(f, f.name)
        else:
            add(path, path.name)  # a missing file fails in its turn, with the others still done
    return jobs


def output_paths(jobs: list[Job], directory: Path, fmt: str) -> list[Path]:
    paths = [directory / Path(job.name).with_suffix(EXTENSIONS[fmt]) for job in jobs]
    clashes: dict[Path, list[str]] = {}
    for job, path in zip(jobs, paths, strict=True):
        clashes.setdefault(path, []).append(str(job.path))
    for path, sources in clashes.items():
        if len(sources) > 1:
            raise UsageError(f"{' and '.join(sources)} would both be written to {path}; give their directory instead, or run them separately")
    return paths


def display_width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 0 if unicodedata.combining(ch) else 1 for ch in text)


def fit_tail(text: str, width: int) -> str:
    """The end of ``text`` that fits in ``width`` terminal columns (interim results grow at the end)."""
    if display_width(text) <= width:
        return text
    out, used = [], 1  # room for the ellipsis
    for ch in reversed(text):
        w = display_width(ch)
        if used + w > width:
            break
        out.append(ch)
        used += w
    return "…" + "".join(reversed(out))


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One status line on stderr: files and bytes done, failures, elapsed time and an estimate.

    On a terminal it is redrawn in place (and cleared before anything else is printed); forced
    on for a pipe or a file (``--progress``) it prints one line per finished file instead.
    """

    def __init__(self, jobs: list[Job], enabled: bool, stream: TextIO = sys.stderr):
        self.total = len(jobs)
        self.total_bytes = sum(j.size for j in jobs) or 1
        self.enabled = enabled
        self.tty = stream.isatty()
        self.stream = stream
        self.done = self.failed = 0
        self.done_bytes = 0
        self.running = 0
        self.start = time.monotonic()
        self._shown = False

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        fraction = self.done_bytes / self.total_bytes
        width = 24
        filled = int(width * fraction)
        bar = "#" * filled + "." * (width - filled)
        parts = [f"[{bar}] {self.done}/{self.total} files", f"{fraction:4.0%} of {_human_bytes(self.total_bytes)}"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(_clock(elapsed))
        if 0 < fraction < 1 and elapsed > 2:
            parts.append(f"ETA {_clock(elapsed / fraction * (1 - fraction))}")
        return "  ".join(parts)

    def draw(self) -> None:
        if self.enabled and self.tty:
            columns = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r\x1b[K" + self.line()[: columns - 1])
            self.stream.flush()
            self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def finished(self, job: Job, ok: bool) -> None:
        self.done += 1
        self.done_bytes += job.size
        if not ok:
            self.failed += 1
        if self.enabled and not self.tty:
            self.stream.write(f"{PROG}: {self.line()}  {job.path}\n")
            self.stream.flush()
        else:
            self.draw()

    def say(self, text: str, stream: TextIO) -> None:
        """Print ``text`` without tearing the status line."""
        self.clear()
        stream.write(text)
        stream.flush()
        self.draw()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.partial")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)


async def _transcribe_all(args: argparse.Namespace, jobs: list[Job], fmt: str, outputs: list[Path] | None) -> int:
    many = len(jobs) > 1
    # Automatic on a terminal, for several files or a long one (a single call shows no inner progress,
    # but the ticking clock says it is still working).
    large = sum(job.size for job in jobs) > LARGE_INPUT_BYTES
    progress = Progress(jobs, enabled=args.progress if args.progress is not None else ((many or large) and sys.stderr.isatty()))
    rendered: dict[int, str | None] = {}
    next_to_print = 0
    failures: list[tuple[Job, str]] = []
    fatal: AsrError | None = None
    semaphore = asyncio.Semaphore(max(1, args.concurrency))
    hotwords = [_hotword(h) for h in args.hotword]

    def flush_in_order() -> None:
        nonlocal next_to_print
        while next_to_print in rendered:
            text = rendered.pop(next_to_print)
            if text:
                progress.say(text, sys.stdout)
            next_to_print += 1

    async with AsyncClient(target_of(args), **client_kwargs(args)) as client:

        async def one(index: int, job: Job) -> None:
            nonlocal fatal
            async with semaphore:
                if fatal is not None:
                    rendered[index] = None
                    return
                progress.running += 1
                ok = False
                try:
                    transcript = await client.transcribe(
                        job.path,
                        word_times=args.words or bool(args.max_cue_chars and fmt in ("srt", "vtt")),
                        punctuation=False if args.no_punctuation else None,
                        hotwords=hotwords,
                        model=args.model,
                    )
                    text = render(transcript, fmt, args.max_cue_chars, str(job.path) if fmt == "json" else None)
                    if outputs is not None:
                        await asyncio.to_thread(_write_atomically, outputs[index], text)
                        rendered[index] = None
                    elif fmt == "text" and many:
                        rendered[index] = f"{job.path}\t{transcript.text}\n"
                    else:
                        rendered[index] = text
                    ok = True
                except AsrError as e:
                    rendered[index] = None
                    if e.is_fatal:
                        if fatal is None:
                            fatal = e
                    else:
                        failures.append((job, str(e)))
                        progress.say(f"{job.path}: {e}\n", sys.stderr)
                except OSError as e:  # writing the output
                    rendered[index] = None
                    failures.append((job, f"cannot write output: {e}"))
                    progress.say(f"{job.path}: cannot write output: {e}\n", sys.stderr)
                finally:
                    progress.running -= 1
                    progress.finished(job, ok)
                    flush_in_order()

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.5)
                progress.draw()

        tick = asyncio.create_task(ticker())
        try:
            await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
        finally:
            tick.cancel()
            progress.clear()
    if fatal is not None:
        fail(explain(fatal) + (f" ({progress.done - progress.failed} of {len(jobs)} files transcribed)" if many else ""))
        return 1
    if failures:
        if many:
            fail(f"{len(failures)} of {len(jobs)} files failed:")
            for job, message in failures:
                print(f"  {job.path}: {message}", file=sys.stderr)
        return 1
    return 0


def _hotword(spec: str) -> str | tuple[str, float]:
    phrase, sep, boost = spec.rpartition(":")
    if sep and phrase:
        try:
            return (phrase, float(boost))
        except ValueError:
            pass
    return spec


def transcribe_command(args: argparse.Namespace) -> int:
    fmt = "json" if args.json else args.format
    try:
        jobs = expand_inputs(args.inputs)
        outputs = None
        if args.output_dir:
            outputs = output_paths(jobs, Path(args.output_dir), fmt)
        elif fmt in ("srt", "vtt") and len(jobs) > 1:
            raise UsageError(f"{len(jobs)} files as {fmt} would run together on stdout: give --output-dir (one .{fmt} per file)")
        if args.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        return asyncio.run(_transcribe_all(args, jobs, fmt, outputs))
    except UsageError as e:
        fail(str(e))
        return 2
    except AsrError as e:  # before any call: unreadable TLS or token files
        fail(explain(e))
        return 2
    except KeyboardInterrupt:
        fail("interrupted")
        return 130


# --- stream -----------------------------------------------------------------------------------


class LiveLine:
    """Interim results rewritten in place on one line (carriage return); finals on lines of their own."""

    def __init__(self, out: TextIO, timestamps: bool):
        self.out = out
        self.tty = out.isatty()
        self.timestamps = timestamps
        self._width = 0  # display width of the interim text now on the line

    def _columns(self) -> int:
        return shutil.get_terminal_size((100, 20)).columns - 1

    def interim(self, text: str) -> None:
        if self.tty:
            text = fit_tail(text, self._columns())
            self.out.write("\r\x1b[K" + text)
        else:
            pad = max(0, self._width - display_width(text))
            self.out.write("\r" + text + " " * pad)
        self._width = display_width(text)
        self.out.flush()

    def final(self, result: StreamResult) -> None:
        text = result.text
        if self.timestamps:
            text = f"[{timestamp(result.start_ms, '.')} --> {timestamp(result.end_ms, '.')}] {text}"
        if self.tty:
            self.out.write("\r\x1b[K" + text + "\n")
        elif self._width:
            self.out.write("\r" + text + " " * max(0, self._width - display_width(text)) + "\n")
        else:
            self.out.write(text + "\n")
        self._width = 0
        self.out.flush()

    def close(self) -> None:
        if self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0


def _item_json(item: StreamResult | SpeechEvent) -> str:
    if isinstance(item, SpeechEvent):
        return json.dumps({"event": item.type.name, "timeMs": item.time_ms, "requestId": item.request_id})
    data = {
        "isFinal": item.is_final,
        "utteranceIndex": item.utterance_index,
        "startTimeMs": item.start_ms,
        "endTimeMs": item.end_ms,
        "stability": round(item.stability, 3),
        "transcript": item.text,
        "requestId": item.request_id,
    }
    if item.words:
        data["words"] = [{"word": w.text, "startTimeMs": w.start_ms, "endTimeMs": w.end_ms} for w in item.words]
    return json.dumps(data, ensure_ascii=False)


def stream_command(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        fail("--speed must be positive")
        return 2
    try:
        with Client(target_of(args), **client_kwargs(args)) as client:
            line = LiveLine(sys.stdout, args.timestamps)
            items = client.stream(
                args.file,
                realtime=not args.no_realtime,
                speed=args.speed,
                interim_results=not args.no_interim,
                mode=StreamingMode[args.mode.upper().replace("-", "_")],
                single_utterance=args.single_utterance,
                punctuation=False if args.no_punctuation else None,
                word_times=args.words,
                hotwords=[_hotword(h) for h in args.hotword],
                model=args.model,
                chunk_ms=args.chunk_ms,
                events=args.json,
                timeout=args.timeout,
            )
            try:
                for item in items:
                    if args.json:
                        print(_item_json(item), flush=True)
                    elif isinstance(item, StreamResult):
                        if item.is_final:
                            line.final(item)
                        elif item.text:
                            line.interim(item.text)
            finally:
                line.close()
        return 0
    except AsrError as e:
        fail(explain(e))
        return 1
    except KeyboardInterrupt:
        fail("interrupted")
        return 130


# --- health -----------------------------------------------------------------------------------


def health_command(args: argparse.Namespace) -> int:
    try:
        with Client(target_of(args), **client_kwargs(args)) as client:
            if args.wait:
                try:
                    client.wait_until_serving(args.wait, args.service)
                except AsrError as e:
                    if e.reason != errors.TIMEOUT:
                        raise
            status = client.health(args.service, timeout=args.timeout)
    except AsrError as e:
        fail(explain(e))
        return 2
    print(status)
    return 0 if status == "SERVING" else 1
