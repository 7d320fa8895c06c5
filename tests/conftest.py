from __future__ import annotations

import pytest

# FunASR reconfigures logging when imported; import it once, up front, like the server does.
import app.engine.funasr_engine  # noqa: F401
from app.engine.tiny_models import build_demo_models
from tests.helpers import ServerThread, settings_for


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random-weight FunASR models (ASR, VAD, punctuation), built once per test session."""
    return build_demo_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def engine(tiny_models):
    from app.engine.funasr_engine import FunasrEngine

    eng = FunasrEngine.load(settings_for(tiny_models))
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def server(tiny_models):
    """One real server on a loopback port, shared by the tests that do not change its settings."""
    srv = ServerThread(settings_for(tiny_models)).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tiny_models):
    """A real server with its own settings, stopped after the test."""
    started = []

    def make(load: bool = True, **overrides) -> ServerThread:
        srv = ServerThread(settings_for(tiny_models, **overrides), load=load).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
