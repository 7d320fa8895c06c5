"""Settings precedence and validation, generated docs and stubs in sync, the legacy proto contract."""

from __future__ import annotations

import argparse
import filecmp
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, add_arguments, load_settings, reference_markdown
from app.protogen import generate

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flag_beats_env_beats_default():
    assert load_settings(parse(), {}).port == 50051
    assert load_settings(parse(), {"ASR_PORT": "6000"}).port == 6000
    assert load_settings(parse("--port", "7000"), {"ASR_PORT": "6000"}).port == 7000
    assert load_settings(parse(), {"ASR_DEMO": "true"}).demo is True
    assert load_settings(parse("--no-demo"), {"ASR_DEMO": "true"}).demo is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ASR_PORT": "x"}, "ASR_PORT"),
        ({"ASR_DEMO": "maybe"}, "true/false"),
        ({"ASR_DEVICE": "gpu"}, "device must be"),
        ({"ASR_MAX_BATCH_SIZE": "0"}, "max_batch_size must be positive"),
        ({"ASR_PORT": "70000"}, "below 65536"),
        ({"ASR_LOG_FORMAT": "xml"}, "log_format must be one of"),
    ],
)
def test_bad_settings_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(parse(), env)


def test_configuration_reference_is_generated_from_the_code():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == reference_markdown(), "docs/configuration.md is stale: run `make docs`"
    for name in Settings.__dataclass_fields__:
        assert Settings.env_name(name) in doc


def test_generated_stubs_are_fresh(tmp_path):
    generate(tmp_path)
    committed = ROOT / "app" / "gen"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    ours = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert fresh == ours
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, committed / p, shallow=False)]
    assert not stale, f"app/gen is stale against proto/ ({stale}): run `make protos`"


def test_legacy_contract_is_exactly_the_recipes():
    from app.gen import asr_service_pb2 as pb

    assert pb.DESCRIPTOR.package == ""
    service = pb.DESCRIPTOR.services_by_name["ASRService"]
    methods = {m.name: m for m in service.methods}
    assert set(methods) == {"Recognize", "StreamRecognize"}
    assert methods["Recognize"].input_type.name == "AudioRequest" and not methods["Recognize"].client_streaming
    assert methods["StreamRecognize"].input_type.name == "AudioChunk" and methods["StreamRecognize"].client_streaming
    assert not methods["StreamRecognize"].server_streaming
    fields = {m: {f.name: (f.number, f.type) for f in pb.DESCRIPTOR.message_types_by_name[m].fields} for m in ("AudioRequest", "AudioChunk", "TextResponse")}
    B, S, BOOL = 12, 9, 8  # FieldDescriptor.TYPE_BYTES, TYPE_STRING, TYPE_BOOL
    assert fields == {
        "AudioRequest": {"audio_data": (1, B), "format": (2, S)},
        "AudioChunk": {"data": (1, B), "is_final": (2, BOOL)},
        "TextResponse": {"text": (1, S), "success": (2, BOOL), "error_msg": (3, S)},
    }
