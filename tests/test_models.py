"""Several named model pipelines, per-request choice, ListModels, per-model health, hot reload under traffic."""

from __future__ import annotations

import shutil
import threading
import time
import weakref

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from app.config import ConfigError, Settings, model_settings
from app.engine.tiny_models import build_demo_models
from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.helpers import encode, utterances

pytestmark = pytest.mark.integration

AUDIO = encode(utterances(("silence", 0.2), ("speech", 1.5), ("silence", 0.2), seed=31))


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """A second set of tiny models with other random weights: another 'version' that reads differently."""
    return build_demo_models(tmp_path_factory.mktemp("other-models"), seed=7)


def write_config(path, tiny, other, default="alpha"):
    def entry(m):
        return {"asr_model": str(m.asr), "vad_model": str(m.vad), "punc_model": str(m.punc), "online_model": "none"}

    path.write_text(yaml.safe_dump({"default": default, "models": {"alpha": entry(tiny), "beta": entry(other) | {"max_batch_size": 4}}}))
    return path


def recognize(channel, model="", metadata=()):
    config = asr_pb2.RecognitionConfig(model=model)
    request = asr_pb2.RecognizeRequest(config=config, audio=asr_pb2.RecognitionAudio(content=AUDIO))
    return asr_pb2_grpc.RecognizerStub(channel).Recognize(request, metadata=metadata, timeout=30)


def test_models_config_parsing(tiny_models, other_models, tmp_path):
    default, per_model = model_settings(Settings(models_config=str(write_config(tmp_path / "m.yaml", tiny_models, other_models))))
    assert default == "alpha" and set(per_model) == {"alpha", "beta"}
    assert per_model["beta"].max_batch_size == 4 and per_model["beta"].model_name == "beta"
    (tmp_path / "bad.yaml").write_text("models:\n  x:\n    port: 1\n")
    with pytest.raises(ConfigError, match="sets port; allowed"):
        model_settings(Settings(models_config=str(tmp_path / "bad.yaml")))
    (tmp_path / "bad2.yaml").write_text("default: nope\nmodels:\n  x: {}\n")
    with pytest.raises(ConfigError, match="default 'nope'"):
        model_settings(Settings(models_config=str(tmp_path / "bad2.yaml")))


def test_per_request_model_choice_list_and_health(make_server, tiny_models, other_models, tmp_path):
    srv = make_server(models_config=str(write_config(tmp_path / "m.yaml", tiny_models, other_models)))
    with grpc.insecure_channel(srv.target) as channel:
        alpha, beta, default = recognize(channel, "alpha"), recognize(channel, "beta"), recognize(channel)
        assert (alpha.model, beta.model, default.model) == ("alpha", "beta", "alpha")
        assert alpha.transcript == default.transcript != beta.transcript
        with pytest.raises(grpc.RpcError) as err:
            recognize(channel, "gamma")
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alpha, beta" in err.value.details()
        models = asr_pb2_grpc.RecognizerStub(channel).ListModels(asr_pb2.ListModelsRequest(), timeout=5).models
        assert [m.name for m in models] == ["alpha", "beta"] and models[0].is_default and not models[1].is_default
        assert all(m.ready and m.device == "cpu" and m.random_weights and m.version and not m.streaming for m in models)
        assert models[0].sources["asr"] == str(tiny_models.asr)
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("alpha", "beta"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=f"paraformer.asr.v1.Recognizer/{name}"), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def admin_reload(channel, token, **fields):
    return asr_pb2_grpc.AdminStub(channel).ReloadModel(asr_pb2.ReloadModelRequest(**fields), metadata=(("authorization", f"Bearer {token}"),), timeout=120)


def test_admin_api_is_off_without_admin_tokens(server):
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as err:
        admin_reload(channel, "anything", name="tiny")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "disabled" in err.value.details()


def test_hot_reload_under_traffic_fails_no_request(make_server, tiny_models, other_models):
    srv = make_server(admin_tokens="admin-secret", auth_tokens="user-secret", model_name="live")
    user = (("authorization", "Bearer user-secret"),)
    old_pipeline = weakref.ref(srv.pipeline)
    old_engine = weakref.ref(srv.pipeline.engine)
    stop = threading.Event()
    outcomes: list[str] = []
    texts: set[str] = set()

    def traffic():
        with grpc.insecure_channel(srv.target) as channel:
            while not stop.is_set():
                try:
                    texts.add(recognize(channel, metadata=user).transcript)
                    outcomes.append("OK")
                except grpc.RpcError as e:
                    outcomes.append(e.code().name)

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        with grpc.insecure_channel(srv.target) as channel:
            with pytest.raises(grpc.RpcError) as err:  # a user token may not reload
                admin_reload(channel, "user-secret", name="live", asr_model=str(other_models.asr))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            info = admin_reload(channel, "admin-secret", name="live", asr_model=str(other_models.asr))
            assert info.ready and info.sources["asr"] == str(other_models.asr)
        time.sleep(0.8)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert outcomes and set(outcomes) == {"OK"}, {o for o in outcomes if o != "OK"}
    assert len(texts) == 2  # before and after the switch
    # The old version was drained, closed and let go of (its memory returned).
    deadline = time.monotonic() + 10
    while (old_pipeline() is not None or old_engine() is not None) and time.monotonic() < deadline:
        import gc

        gc.collect()
        time.sleep(0.1)
    assert old_engine() is None and old_pipeline() is None


def test_a_hot_reload_walks_the_heap_twice(make_server, other_models, monkeypatch):
    """Each full collection stops every call in flight (app/engine/heap.py): a reload makes two,
    one to freeze the new version once loaded and one to free the old version's cycles once it
    is gone. Closing the old engine made a third."""
    import gc

    srv = make_server(admin_tokens="admin-secret", model_name="live")
    old_engine = weakref.ref(srv.pipeline.engine)
    collections = []
    collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(args) or collect(*args))
    with grpc.insecure_channel(srv.target) as channel:
        admin_reload(channel, "admin-secret", name="live", asr_model=str(other_models.asr))
    deadline = time.monotonic() + 30
    while (old_engine() is not None or len(collections) < 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # nothing else follows the retirement's freeze
    assert old_engine() is None and len(collections) == 2
    assert gc.get_freeze_count() > 10_000  # the new version is frozen out of the collector


def test_a_broken_reload_keeps_the_old_version(make_server, tiny_models, tmp_path):
    srv = make_server(admin_tokens="admin-secret", model_name="steady")
    broken = tmp_path / "broken-asr"
    shutil.copytree(tiny_models.asr, broken)
    (broken / "model.pt").unlink()
    with grpc.insecure_channel(srv.target) as channel:
        before = recognize(channel).transcript
        with pytest.raises(grpc.RpcError) as err:
            admin_reload(channel, "admin-secret", name="steady", asr_model=str(broken))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "old version keeps serving" in err.value.details() and "weights file" in err.value.details()
        assert recognize(channel).transcript == before
        assert recognize(channel, "steady").model == "steady"


def test_reload_can_add_a_new_named_model(make_server, other_models):
    srv = make_server(admin_tokens="admin-secret", model_name="first")
    with grpc.insecure_channel(srv.target) as channel:
        admin_reload(channel, "admin-secret", name="second", asr_model=str(other_models.asr), make_default=True)
        models = asr_pb2_grpc.RecognizerStub(channel).ListModels(asr_pb2.ListModelsRequest(), timeout=5).models
        assert [(m.name, m.is_default) for m in models] == [("second", True), ("first", False)]
        assert recognize(channel).model == "second" and recognize(channel, "first").model == "first"
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="paraformer.asr.v1.Recognizer/second"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
