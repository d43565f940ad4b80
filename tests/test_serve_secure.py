"""`toolkit serve` on a LAN: --token-file guards every route but live/ready (HTTP: Authorization header; gRPC:
metadata), TLS with --certfile/--keyfile for HTTPS and gRPC through tritonclient's own ssl options, 127.0.0.1 by
default. Real server processes, a self-signed certificate made in the test."""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from serve_process import Server, infer_body, linear_model, self_signed

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient's gRPC client needs grpcio and protobuf")
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "s3cret-token-for-the-tests-0123456789"
GUARDED = ["/v2", "/v2/models/m", "/v2/models/m/ready", "/v2/models/m/versions/1", "/metrics", "/page/models",
           "/v2/models/nope", "/v2/anything"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure")
    token = tmp / "token"
    token.write_text(TOKEN + "\n")
    cert, key = self_signed(tmp)
    return {"model": linear_model(tmp / "m.onnx"), "token": token, "cert": cert, "key": key, "tmp": tmp}


@pytest.fixture(scope="module")
def guarded(files):
    with Server([files["model"], "--token-file", files["token"]], files["tmp"]) as s:
        yield s


def _x(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(rows).random((rows, 1, 28, 28), dtype=np.float32)


class TestToken:
    def test_live_and_ready_need_no_token(self, guarded):
        assert guarded.get("/v2/health/live")[0] == 200 and guarded.get("/v2/health/ready")[0] == 200
        client = httpclient.InferenceServerClient(guarded.url)
        assert client.is_server_live() and client.is_server_ready()
        g = grpcclient.InferenceServerClient(guarded.grpc)
        assert g.is_server_live() and g.is_server_ready()

    @pytest.mark.parametrize("header", [None, "Bearer wrong-token-wrong-token-123", f"Bearer {TOKEN}x",
                                        f"bearer {TOKEN}", TOKEN, f"Basic {TOKEN}", f"Bearer  {TOKEN}"])
    def test_every_other_http_route_refuses_a_missing_or_wrong_token(self, guarded, header):
        headers = {} if header is None else {"Authorization": header}
        for path in GUARDED:
            status, body, answer_headers = guarded.get(path, headers=headers)
            assert status == 401, (path, status)
            assert "bearer token" in json.loads(body)["error"] and body.count(b"\n") == 0
            assert answer_headers.get("www-authenticate") == "Bearer"
        body, infer_headers = infer_body(_x())
        for route in ("infer", "classify"):
            status, _, _ = guarded.post(f"/v2/models/m/{route}", body, headers={**infer_headers, **headers})
            assert status == 401, route

    def test_the_right_token_opens_every_route(self, guarded):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for path in GUARDED[:6]:
            assert guarded.get(path, headers=auth)[0] == 200, path
        body, headers = infer_body(_x(), ("label",))
        assert guarded.post("/v2/models/m/infer", body, headers={**headers, **auth})[0] == 200
        assert guarded.metrics(headers=auth)

    def test_tritonclient_http_with_and_without_the_header(self, guarded):
        client = httpclient.InferenceServerClient(guarded.url)
        with pytest.raises(InferenceServerException, match="bearer token"):
            client.get_server_metadata()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get_server_metadata(headers=auth)["name"] == "toolkit"
        assert client.is_model_ready("m", headers=auth)
        inp = httpclient.InferInput("input", [2, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(_x(2))
        with pytest.raises(InferenceServerException):
            client.infer("m", [inp])
        assert client.infer("m", [inp], headers=auth).as_numpy("logits").shape == (2, 10)

    @pytest.mark.parametrize("metadata", [None, {"authorization": "Bearer nope-nope-nope-nope"},
                                          {"authorization": TOKEN}])
    def test_grpc_refuses_a_missing_or_wrong_token(self, guarded, metadata):
        client = grpcclient.InferenceServerClient(guarded.grpc)
        inp = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(_x())
        for call in (lambda: client.get_server_metadata(headers=metadata),
                     lambda: client.get_model_metadata("m", headers=metadata),
                     lambda: client.is_model_ready("m", headers=metadata),
                     lambda: client.infer("m", [inp], headers=metadata)):
            with pytest.raises(InferenceServerException) as e:
                call()
            assert "UNAUTHENTICATED" in str(e.value.status()) and "bearer token" in e.value.message()
        client.close()

    def test_grpc_with_the_token(self, guarded):
        client = grpcclient.InferenceServerClient(guarded.grpc)
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert client.get_server_metadata(headers=auth).name == "toolkit"
        assert client.is_model_ready("m", headers=auth)
        inp = grpcclient.InferInput("input", [3, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(_x(3))
        assert client.infer("m", [inp], headers=auth).as_numpy("logits").shape == (3, 10)
        client.close()

    @pytest.mark.parametrize("content", ["short", "has a space in it, sixteen+ chars"])
    def test_an_unusable_token_file_is_one_line(self, files, tmp_path, content):
        token = tmp_path / "token"
        token.write_text(content)
        proc = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(files["model"]), "--token-file",
                               str(token), "--port", "0", "--grpc-port", "0"], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and str(token) in proc.stderr


def _listening(port: int) -> set[str]:
    """Local addresses listening on TCP ``port`` (from /proc/net/tcp and tcp6), e.g. {'127.0.0.1'}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # addresses are 32-bit words in host (little) order
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                ip = ipaddress.ip_address(raw)
                found.add(str(getattr(ip, "ipv4_mapped", None) or ip))
    return found


def test_binds_loopback_only_by_default(guarded):
    assert _listening(guarded.port) == {"127.0.0.1"}
    assert _listening(guarded.grpc_port) == {"127.0.0.1"}


def test_tls_for_https_and_grpc(files, tmp_path):
    cert, key = files["cert"], files["key"]
    with Server([files["model"], "--certfile", cert, "--keyfile", key], tmp_path, scheme="https") as s:
        assert "https://127.0.0.1" in s.output() and "(TLS)" in s.output()
        verified = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"https://{s.url}/v2/health/ready", context=verified, timeout=10) as r:
            assert r.status == 200
        with pytest.raises(OSError):  # a client that does not trust the certificate refuses it
            urllib.request.urlopen(f"https://{s.url}/v2/health/ready", context=ssl.create_default_context(),
                                   timeout=10)
        with pytest.raises(OSError):  # plain HTTP to the TLS port gets no HTTP answer
            urllib.request.urlopen(f"http://{s.url}/v2/health/ready", timeout=10)
        client = httpclient.InferenceServerClient(s.url, ssl=True, ssl_options={"ca_certs": str(cert)})
        assert client.is_server_ready()
        inp = httpclient.InferInput("input", [2, 1, 28, 28], "FP32")
        inp.set_data_from_numpy(_x(2))
        over_https = client.infer("m", [inp]).as_numpy("logits")
        g = grpcclient.InferenceServerClient(s.grpc, ssl=True, root_certificates=str(cert))
        assert g.is_server_live() and g.is_server_ready() and g.is_model_ready("m")
        ginp = grpcclient.InferInput("input", [2, 1, 28, 28], "FP32")
        ginp.set_data_from_numpy(_x(2))
        assert np.array_equal(g.infer("m", [ginp]).as_numpy("logits"), over_https)
        g.close()
        plain = grpcclient.InferenceServerClient(s.grpc)
        with pytest.raises(InferenceServerException) as e:
            plain.is_server_live(client_timeout=5)
        assert "UNAVAILABLE" in str(e.value.status()) or "DEADLINE" in str(e.value.status())
        plain.close()


def test_a_key_that_does_not_match_the_certificate_is_one_line(files, tmp_path):
    _, other_key = self_signed(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(files["model"]), "--certfile",
                           str(files["cert"]), "--keyfile", str(other_key), "--port", "0", "--grpc-port", "0",
                           "--provider", "cpu"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "--certfile" in proc.stderr
