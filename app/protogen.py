"""Generate the Python gRPC stubs in app/gen/ from proto/.

The stubs are committed (installing the package needs no protoc), and a test regenerates
them into a temporary directory and fails when they differ, so they never go stale.
Run: ``python -m app.protogen`` (from the repository root).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_PACKAGE = "app.gen"


def proto_files() -> list[Path]:
    return sorted(p.relative_to(PROTO_DIR) for p in PROTO_DIR.rglob("*.proto"))


def _fix_imports(text: str) -> str:
    # protoc writes imports relative to the proto root ("from paraformer.asr.v1 import asr_pb2",
    # "import asr_service_pb2"); ours live inside the app.gen package.
    text = re.sub(r"^from (paraformer\.\S+) import", rf"from {GEN_PACKAGE}.\1 import", text, flags=re.M)
    text = re.sub(r"^import (\w+_pb2) as (\w+)$", rf"from {GEN_PACKAGE} import \1 as \2", text, flags=re.M)
    return text


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # a build-time tool: imported only here

    out_dir.mkdir(parents=True, exist_ok=True)
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        if path.suffix in (".py", ".pyi"):
            path.write_text(_fix_imports(path.read_text()))
            written.append(path)
    for pkg in {p.parent for p in written} | {out_dir}:
        while True:
            init = pkg / "__init__.py"
            if not init.exists():
                init.write_text("")
            if pkg == out_dir:
                break
            pkg = pkg.parent
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "app" / "gen"
    for p in generate(target):
        print(p.relative_to(target))
