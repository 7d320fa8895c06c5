"""TLS, mutual TLS, certificate rotation on disk, bearer tokens (and their rotation), the health port."""

from __future__ import annotations

import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from app.gen.paraformer.asr.v1 import asr_pb2, asr_pb2_grpc
from tests.certs import make_pki
from tests.helpers import encode, utterances

pytestmark = pytest.mark.integration

AUDIO = encode(utterances(("silence", 0.2), ("speech", 1.0), ("silence", 0.2)))
REQUEST = asr_pb2.RecognizeRequest(audio=asr_pb2.RecognitionAudio(content=AUDIO))


@pytest.fixture(scope="module")
def pki():
    return make_pki()


def call(channel, metadata=(), timeout=10):
    return asr_pb2_grpc.RecognizerStub(channel).Recognize(REQUEST, metadata=metadata, timeout=timeout)


def tls_channel(target, pki, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.cert, private_key=client.key if client else None, certificate_chain=client.cert if client else None
    )
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def test_tls(make_server, pki, tmp_path):
    files = pki.write(tmp_path)
    srv = make_server(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]))
    with tls_channel(srv.target, pki) as channel:
        assert call(channel).transcript
    with grpc.insecure_channel(srv.target) as plain, pytest.raises(grpc.RpcError) as err:
        call(plain, timeout=3)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_clients_without_a_valid_certificate(make_server, pki, tmp_path):
    files = pki.write(tmp_path)
    srv = make_server(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]), tls_client_ca_file=str(files["ca"]))
    with tls_channel(srv.target, pki, client=pki.client) as channel:
        assert call(channel).transcript
    for client in (None, pki.stranger_client):
        with tls_channel(srv.target, pki, client=client) as channel, pytest.raises(grpc.RpcError) as err:
            call(channel, timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # refused at the handshake, before any RPC


def test_certificate_rotation_on_disk_reaches_new_connections(make_server, pki, tmp_path):
    files = pki.write(tmp_path)
    srv = make_server(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]))
    old = tls_channel(srv.target, pki)
    assert call(old).transcript
    # Rotate in place, the way a Kubernetes secret volume does (write new files, swap them in).
    for name, data in (("key", pki.server2.key), ("cert", pki.server2.cert)):
        staged = files[name].with_suffix(".new")
        staged.write_bytes(data)
        os.replace(staged, files[name])
    with tls_channel(srv.target, pki) as fresh:
        assert call(fresh).transcript
    assert call(old).transcript  # the established connection keeps working
    old.close()
    # Both certificates come from the same CA, so look at what a new handshake presents.
    assert _served_certificate(srv.running.port) == pki.server2.cert.decode().strip()


def _served_certificate(port: int) -> str:
    import socket
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).strip()


def test_tokens_from_file_with_rotation_and_open_health(make_server, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# one token per line\nold-token\n")
    srv = make_server(auth_tokens_file=str(tokens))
    with grpc.insecure_channel(srv.target) as channel:
        for metadata, fragment in (
            ((), "missing credentials"),
            ((("authorization", "Bearer nope"),), "invalid credentials"),
            ((("authorization", "old-token"),), "invalid credentials"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call(channel, metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and fragment in err.value.details()
        assert call(channel, (("authorization", "Bearer old-token"),)).transcript
        # Rotation: add the new token, then remove the old one; no restart.
        tokens.write_text("old-token\nnew-token\n")
        time.sleep(2.2)
        assert call(channel, (("authorization", "Bearer new-token"),)).transcript
        assert call(channel, (("authorization", "Bearer old-token"),)).transcript
        tokens.write_text("new-token\n")
        time.sleep(2.2)
        with pytest.raises(grpc.RpcError) as err:
            call(channel, (("authorization", "Bearer old-token"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health stays open for probes; reflection is closed by default.
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            list(ProtoReflectionDescriptorDatabase(channel).get_services())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_inline_tokens_and_closed_health(make_server):
    srv = make_server(auth_tokens="a-token, b-token", auth_health_open=False, auth_reflection_open=True)
    with grpc.insecure_channel(srv.target) as channel:
        assert call(channel, (("authorization", "Bearer b-token"),)).transcript
        with pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "paraformer.asr.v1.Recognizer" in ProtoReflectionDescriptorDatabase(channel).get_services()


def test_plaintext_health_port_next_to_tls(make_server, pki, tmp_path):
    files = pki.write(tmp_path)
    srv = make_server(tls_cert_file=str(files["cert"]), tls_key_file=str(files["key"]), health_port=_free_port())
    with grpc.insecure_channel(f"127.0.0.1:{srv.running.health_port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="paraformer.asr.v1.Recognizer"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            call(channel)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # health only


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tokens_never_reach_the_logs(make_server, caplog):
    srv = make_server(auth_tokens="super-secret-token")
    with grpc.insecure_channel(srv.target) as channel:
        call(channel, (("authorization", "Bearer super-secret-token"),))
        with pytest.raises(grpc.RpcError):
            call(channel, (("authorization", "Bearer wrong-secret-token"),))
    assert "secret-token" not in caplog.text
    assert "<set>" in str(srv.settings.public_dict()["auth_tokens"])
