"""The client-facing docs stay true: the API reference matches the protos, examples parse, commands exist."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLIENT_DOCS = ("quickstart.md", "clients.md", "grpcurl.md", "legacy-migration.md", "api.md")


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_generated_from_the_protos():
    generator = load_generator()
    assert (DOCS / "api.md").read_text() == generator.render(), "docs/api.md is stale: run .venv/bin/python scripts/gen_api_docs.py"


def test_api_reference_covers_every_service_message_and_field():
    from app.gen import asr_service_pb2
    from app.gen.paraformer.asr.v1 import asr_pb2

    doc = (DOCS / "api.md").read_text()
    for module in (asr_pb2, asr_service_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            assert f"service {service.full_name}" in doc
            for method in service.methods:
                assert f"`/{service.full_name}/{method.name}`" in doc
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert f"### {message.name}\n" in doc
            for field in message.fields:
                assert f"| `{field.name}` |" in doc


def blocks(name: str, language: str) -> list[str]:
    text = (DOCS / name).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def test_python_examples_compile():
    count = 0
    for name in CLIENT_DOCS:
        for i, code in enumerate(blocks(name, "python")):
            compile(code, f"{name}[python {i}]", "exec")
            count += 1
    assert count >= 8


def test_node_examples_parse(tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: bash scripts/install-buf.sh installs Node.js and npm from Debian")
    examples = blocks("clients.md", "js")
    assert len(examples) == 2
    for i, code in enumerate(examples):
        path = tmp_path / f"example{i}.mjs"
        path.write_text(code)
        proc = subprocess.run([node, "--check", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def command_lines(name: str) -> list[list[str]]:
    """Every `paraformer-asr ...` command in the doc's bash blocks, as argv (redirections and pipes cut off)."""
    found = []
    for block in blocks(name, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if "paraformer-asr " not in line or line.lstrip().startswith("#"):
                continue
            words = shlex.split(line[line.index("paraformer-asr ") :], comments=True)
            argv = []
            for word in words[1:]:
                if word in ("|", ">", "<", "&&", ";") or word.startswith((">", "|")):
                    break
                argv.append(word)
            found.append(argv)
    return found


@pytest.mark.parametrize("name", ["quickstart.md"])
def test_documented_commands_exist(name):
    commands = command_lines(name)
    assert commands
    parser = build_parser()
    for argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{name}: `paraformer-asr {' '.join(argv)}` does not parse")


def test_links_between_docs_resolve():
    for name in CLIENT_DOCS:
        text = (DOCS / name).read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (DOCS / target).resolve().exists(), f"{name} links to {target}, which does not exist"
        for anchor in re.findall(r"\]\(api\.md#([^)]+)\)", text):
            assert f'<a id="{anchor}"></a>' in (DOCS / "api.md").read_text(), f"{name}: no anchor {anchor} in api.md"
