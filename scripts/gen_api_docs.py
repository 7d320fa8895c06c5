#!/usr/bin/env python3
"""Generate docs/api.md, the API reference, from the comments in proto/.

protoc (grpcio-tools) parses the protos with their source info; every service, RPC, message,
field, enum and value is written out with its comment, so the reference says exactly what the
proto says. tests/test_client_docs.py fails when docs/api.md differs from what this prints.

    .venv/bin/python scripts/gen_api_docs.py              # rewrite docs/api.md
    .venv/bin/python scripts/gen_api_docs.py --check      # exit 1 when docs/api.md is stale
    .venv/bin/python scripts/gen_api_docs.py --stdout
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUTPUT = ROOT / "docs" / "api.md"

# FileDescriptorProto / DescriptorProto / ... field numbers, for SourceCodeInfo paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE, FILE_SYNTAX = 4, 5, 6, 12
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE = 2
SERVICE_METHOD = 2

SCALARS = {
    descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE: "double",
    descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT: "float",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT64: "int64",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT64: "uint64",
    descriptor_pb2.FieldDescriptorProto.TYPE_INT32: "int32",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64: "fixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_FIXED32: "fixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_BOOL: "bool",
    descriptor_pb2.FieldDescriptorProto.TYPE_STRING: "string",
    descriptor_pb2.FieldDescriptorProto.TYPE_BYTES: "bytes",
    descriptor_pb2.FieldDescriptorProto.TYPE_UINT32: "uint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED32: "sfixed32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SFIXED64: "sfixed64",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT32: "sint32",
    descriptor_pb2.FieldDescriptorProto.TYPE_SINT64: "sint64",
}
LABEL_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def descriptor_set(proto_dir: Path) -> descriptor_pb2.FileDescriptorSet:
    import grpc_tools
    from grpc_tools import protoc

    files = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        include = Path(grpc_tools.__file__).parent / "_proto"
        args = ["protoc", f"-I{proto_dir}", f"-I{include}", "--include_source_info", f"--descriptor_set_out={out}", *files]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed: " + " ".join(args))
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def clean_comment(text: str) -> str:
    """A proto comment as Markdown: one paragraph per blank-line-separated block, lint directives dropped."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if not line.startswith("buf:lint:")]
    paragraphs, current = [], []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def cell(text: str) -> str:
    return clean_comment(text).replace("\n\n", "<br><br>").replace("|", "\\|")


class FileDoc:
    def __init__(self, fd: descriptor_pb2.FileDescriptorProto, types: dict[str, str]):
        self.fd = fd
        self.types = types  # ".pkg.Name" -> anchor
        self.comments = {tuple(loc.path): loc for loc in fd.source_code_info.location}

    def comment(self, *path: int) -> str:
        loc = self.comments.get(path)
        if loc is None:
            return ""
        return clean_comment(loc.leading_comments or loc.trailing_comments)

    def line(self, *path: int) -> int:
        loc = self.comments.get(path)
        return loc.span[0] if loc else 0

    @property
    def package(self) -> str:
        return self.fd.package

    def qualified(self, name: str) -> str:
        return f"{self.package}.{name}" if self.package else name

    def link(self, type_name: str) -> str:
        short = type_name.lstrip(".")
        anchor = self.types.get(type_name)
        display = short.removeprefix(self.package + ".") if self.package else short
        return f"[`{display}`](#{anchor})" if anchor else f"`{short}`"

    def field_type(self, field: descriptor_pb2.FieldDescriptorProto, maps: dict[str, descriptor_pb2.DescriptorProto]) -> str:
        if field.type_name in maps:
            entry = maps[field.type_name]
            key, value = entry.field[0], entry.field[1]
            return f"map<{self.field_type(key, maps)}, {self.field_type(value, maps)}>"
        base = self.link(field.type_name) if field.type_name else f"`{SCALARS[field.type]}`"
        return f"repeated {base}" if field.label == LABEL_REPEATED else base


def anchor_of(qualified: str) -> str:
    return qualified.replace(".", "-").lower()


def collect_types(files: list[descriptor_pb2.FileDescriptorProto]) -> dict[str, str]:
    types: dict[str, str] = {}

    def walk_message(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        if not message.options.map_entry:
            types[name] = anchor_of(name.lstrip("."))
        for nested in message.nested_type:
            walk_message(name, nested)
        for enum in message.enum_type:
            types[f"{name}.{enum.name}"] = anchor_of(f"{name}.{enum.name}".lstrip("."))

    for fd in files:
        prefix = f".{fd.package}" if fd.package else ""
        for message in fd.message_type:
            walk_message(prefix, message)
        for enum in fd.enum_type:
            types[f"{prefix}.{enum.name}"] = anchor_of(f"{prefix}.{enum.name}".lstrip("."))
    return types


def render_enum(doc: FileDoc, enum: descriptor_pb2.EnumDescriptorProto, qualified: str, path: tuple[int, ...]) -> list[str]:
    out = [f'<a id="{anchor_of(qualified)}"></a>', f"### enum {qualified.removeprefix(doc.package + '.') if doc.package else qualified}", ""]
    if text := doc.comment(*path):
        out += [text, ""]
    out += ["| value | number | meaning |", "| --- | --- | --- |"]
    for i, value in enumerate(enum.value):
        out.append(f"| `{value.name}` | {value.number} | {cell(doc.comment(*path, ENUM_VALUE, i))} |")
    return [*out, ""]


def render_message(doc: FileDoc, message: descriptor_pb2.DescriptorProto, qualified: str, path: tuple[int, ...]) -> list[str]:
    maps = {f".{qualified}.{n.name}": n for n in message.nested_type if n.options.map_entry}
    title = qualified.removeprefix(doc.package + ".") if doc.package else qualified
    out = [f'<a id="{anchor_of(qualified)}"></a>', f"### {title}", ""]
    if text := doc.comment(*path):
        out += [text, ""]
    if message.field:
        out += ["| field | type | number | meaning |", "| --- | --- | --- | --- |"]
        for i, field in enumerate(message.field):
            notes = []
            if field.HasField("oneof_index") and not field.proto3_optional:
                notes.append(f"One of `{message.oneof_decl[field.oneof_index].name}`.")
            if field.proto3_optional:
                notes.append("Optional: unset differs from false or 0.")
            meaning = " ".join([cell(doc.comment(*path, MESSAGE_FIELD, i)), *notes]).strip()
            out.append(f"| `{field.name}` | {doc.field_type(field, maps)} | {field.number} | {meaning} |")
    else:
        out.append("No fields.")
    out.append("")
    for j, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            out += render_message(doc, nested, f"{qualified}.{nested.name}", (*path, MESSAGE_NESTED, j))
    for j, enum in enumerate(message.enum_type):
        out += render_enum(doc, enum, f"{qualified}.{enum.name}", (*path, MESSAGE_ENUM, j))
    return out


def render_file(doc: FileDoc) -> list[str]:
    fd = doc.fd
    out: list[str] = []
    for s, service in enumerate(fd.service):
        name = doc.qualified(service.name)
        out += [f'<a id="{anchor_of(name)}"></a>', f"### service {name}", ""]
        if text := doc.comment(FILE_SERVICE, s):
            out += [text, ""]
        for m, method in enumerate(service.method):
            request = ("stream " if method.client_streaming else "") + doc.link(method.input_type)
            response = ("stream " if method.server_streaming else "") + doc.link(method.output_type)
            out += [f"#### {method.name}", "", f"`/{name}/{method.name}`: {request} → {response}", ""]
            if text := doc.comment(FILE_SERVICE, s, SERVICE_METHOD, m):
                out += [text, ""]
    items = [(doc.line(FILE_MESSAGE, i), "m", i) for i in range(len(fd.message_type))]
    items += [(doc.line(FILE_ENUM, i), "e", i) for i in range(len(fd.enum_type))]
    for _, kind, i in sorted(items):
        if kind == "m":
            message = fd.message_type[i]
            out += render_message(doc, message, doc.qualified(message.name), (FILE_MESSAGE, i))
        else:
            enum = fd.enum_type[i]
            out += render_enum(doc, enum, doc.qualified(enum.name), (FILE_ENUM, i))
    return out


HEADER = """# API reference

Generated from the comments in [`proto/`](../proto) by `scripts/gen_api_docs.py`; do not edit by
hand (a test fails when this file and the protos disagree). Every server also answers the standard
[`grpc.health.v1.Health`](https://github.com/grpc/grpc/blob/master/doc/health-checking.md) service
and server reflection, so `grpcurl list` and `describe` work without the proto files
([docs/grpcurl.md](grpcurl.md)).

Errors are gRPC status codes: INVALID_ARGUMENT for audio or settings the server cannot use (the
message says which, and names the limit when one was exceeded), RESOURCE_EXHAUSTED when the server
is saturated (retry with backoff), UNAVAILABLE while models load or the server drains (retry,
possibly on another replica), UNAUTHENTICATED for a missing or wrong bearer token,
DEADLINE_EXCEEDED, and INTERNAL with a request id for bugs. Every response carries the request id
in the `x-request-id` trailing metadata. The legacy `ASRService` reports errors in its response
instead ([docs/legacy-migration.md](legacy-migration.md)).
"""


def render(proto_dir: Path = PROTO_DIR) -> str:
    files = [fd for fd in descriptor_set(proto_dir).file if not fd.name.startswith("google/")]
    # The versioned packages first, the legacy (package-less) proto last.
    files.sort(key=lambda fd: (fd.package == "", fd.name))
    types = collect_types(files)
    out = [HEADER, "## Contents", ""]
    for fd in files:
        title = f"package `{fd.package}`" if fd.package else "legacy `ASRService` (no package)"
        out.append(f"- [{title}](#{anchor_of('file-' + fd.name.replace('/', '-').removesuffix('.proto'))}) — `proto/{fd.name}`")
    out.append("")
    for fd in files:
        doc = FileDoc(fd, types)
        title = f"Package `{fd.package}`" if fd.package else "Legacy `ASRService` (no package)"
        out += [f'<a id="{anchor_of("file-" + fd.name.replace("/", "-").removesuffix(".proto"))}"></a>', f"## {title}", "", f"Source: `proto/{fd.name}`", ""]
        if text := doc.comment(FILE_SYNTAX):  # the comment above `syntax = "proto3";`
            out += [text, ""]
        out += render_file(doc)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is stale")
    group.add_argument("--stdout", action="store_true", help="print instead of writing docs/api.md")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR)
    args = parser.parse_args(argv)
    text = render(args.proto_dir)
    if args.stdout:
        sys.stdout.write(text)
    elif args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print("docs/api.md is stale: run .venv/bin/python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
    else:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
