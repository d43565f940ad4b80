"""`toolkit serve` over HTTP/REST: a real server process on 127.0.0.1, the protocol's own client (tritonclient.http),
the image route against `toolkit predict`'s CSV, errors as the protocol says, batching seen in /metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serve_process import (SAMPLES, Server, digits, infer_body, linear_model, model, predict_csv,  # noqa: F401
                           reference, sample)

import tritonclient.http as httpclient  # noqa: E402  (skipped above when missing)
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with Server([model, "--max-batch", "16"], tmp_path_factory.mktemp("log")) as s:
        yield s


def test_health_and_metadata_through_tritonclient(server, reference):
    client = httpclient.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta["name"] == "toolkit" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits")
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert model["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [-1, 10]}


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_tensors_binary_and_json(server, reference, binary_in, binary_out):
    client = httpclient.InferenceServerClient(server.url)
    pixels = digits(5)
    x = reference.contract.preprocess.normalize(pixels)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out)
               for n in ("logits", "probabilities", "label", "confidence")]
    result = client.infer("digits", [inp], outputs=outputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    want = reference.logits(x)
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-6)
    probs = reference.to_probabilities(want)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-7)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [reference.classes[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(result.as_numpy("confidence"), probs.max(axis=1), rtol=1e-5)


def test_infer_default_outputs_are_binary_logits(server, reference):
    client = httpclient.InferenceServerClient(server.url)
    x = reference.contract.preprocess.normalize(digits(1))
    inp = httpclient.InferInput("input", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("digits", [inp])  # no outputs named: tritonclient asks binary_data_output
    assert [o["name"] for o in result.get_response()["outputs"]] == ["logits"]
    assert "binary_data_size" in result.get_response()["outputs"][0]["parameters"]
    np.testing.assert_allclose(result.as_numpy("logits"), reference.logits(x), rtol=1e-5, atol=1e-6)


def test_image_route_returns_what_predict_writes(server, model, tmp_path):
    rows = predict_csv(model, SAMPLES, tmp_path)
    for path in SAMPLES:
        status, body, headers = server.post("/v2/models/digits/classify", path.read_bytes())
        assert status == 200, body
        answer = json.loads(body)
        row = rows[str(path)]
        assert answer["model_name"] == "digits" and answer["blank"] is False
        assert answer["label"] == row["label"]
        assert f"{answer['confidence']:.6f}" == row["confidence"]
        from_csv = {row[f"top{i}_label"]: row[f"top{i}_prob"] for i in range(1, 11)}
        assert {k: f"{v:.6f}" for k, v in answer["probabilities"].items()} == from_csv
        assert "view" not in answer


def test_image_route_view_and_blank(server, tmp_path):
    import base64
    import io

    from PIL import Image

    status, body, _ = server.post("/v2/models/digits/classify?view=1", SAMPLES[0].read_bytes())
    assert status == 200
    view = Image.open(io.BytesIO(base64.b64decode(json.loads(body)["view"])))
    assert view.size == (28, 28) and view.mode == "L"
    from toolkit.predict import prepare

    assert np.array_equal(np.asarray(view), prepare(SAMPLES[0]))
    white = io.BytesIO()
    Image.new("L", (64, 64), 255).save(white, format="PNG")
    status, body, _ = server.post("/v2/models/digits/classify", white.getvalue())
    answer = json.loads(body)
    assert status == 200 and answer["blank"] is True and answer["label"] is None and answer["probabilities"] is None


def test_images_as_bytes_elements_match_the_image_route(server):
    client = httpclient.InferenceServerClient(server.url)
    files = [p.read_bytes() for p in SAMPLES[:4]]
    for binary in (True, False):
        inp = httpclient.InferInput("image", [len(files)], "BYTES")
        if binary:
            inp.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
        else:  # JSON carries an image file as base64 text
            import base64

            inp.set_data_from_numpy(np.array([base64.b64encode(f) for f in files], dtype=object), binary_data=False)
        result = client.infer("digits", [inp])
        routed = [json.loads(server.post("/v2/models/digits/classify", f)[1]) for f in files]
        assert [x.decode() for x in result.as_numpy("label")] == [r["label"] for r in routed]
        assert [round(float(c), 6) for c in result.as_numpy("confidence")] == [r["confidence"] for r in routed]
        assert not result.as_numpy("blank").any()


def _error(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, str]:
    status, data, _ = server.post(path, body, headers=headers)
    return status, json.loads(data)["error"]


def test_protocol_errors(server):
    x = np.zeros((1, 1, 28, 28), np.float32).reshape(-1).tolist()

    def infer(inputs, model="digits"):
        return _error(server, f"/v2/models/{model}/infer", json.dumps({"inputs": inputs}).encode())

    good = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": x}
    status, message = infer([good], model="nope")
    assert status == 404 and "nope" in message
    assert infer([dict(good, name="pixels")])[0] == 400
    assert infer([dict(good, datatype="FP64")])[0] == 400
    status, message = infer([dict(good, shape=[1, 28, 28])])
    assert status == 400 and "shape" in message
    assert infer([dict(good, shape=[2, 1, 28, 28])])[0] == 400  # 1568 elements claimed, 784 sent
    assert _error(server, "/v2/models/digits/versions/7/infer", b"{}")[0] == 404
    assert server.get("/v2/models/digits/nothing")[0] == 404
    status, message = _error(server, "/v2/models/digits/classify", b"not an image")
    assert status == 400 and "image" in message
    client = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("input", [1, 28, 28], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("digits", [inp])


def test_body_limit_413_and_full_queue_429(model, tmp_path):
    """A small --max-body is 413; with --max-queue 1 and large requests arriving together, the ones that find the
    queue full get 429 with Retry-After at once, and the metrics count exactly those."""
    with Server([model, "--max-body", "64k", "--max-queue", "1", "--max-batch", "1"], tmp_path, grpc=False) as s:
        big = b"0" * (65 * 1024)
        assert s.post("/v2/models/digits/infer", big)[0] == 413
        status, body, _ = s.post("/v2/models/digits/classify", big)
        assert status == 413 and b"--max-body" in body
    with Server([model, "--max-queue", "1", "--max-batch", "1"], tmp_path, grpc=False) as s:
        client = httpclient.InferenceServerClient(s.url, concurrency=24, network_timeout=60)
        x = np.random.default_rng(0).random((1024, 1, 28, 28), dtype=np.float32)
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        pending = [client.async_infer("digits", [inp]) for _ in range(48)]
        ok = refused = 0
        for p in pending:
            try:
                p.get_result()
                ok += 1
            except InferenceServerException as e:
                assert "retry" in str(e), e
                refused += 1
        assert ok >= 1 and refused >= 1, (ok, refused)
        m = s.metrics()
        assert sample(m, "toolkit_rejected_requests_total", model="digits", reason="queue_full") == refused
        assert sample(m, "nv_inference_request_success", model="digits") == ok
        status, _, headers = _refused_once(s, x)
        assert status in (200, 429)
        if status == 429:
            assert headers.get("retry-after") == "1"


def _refused_once(server, x):
    """One raw request racing others, to read a 429's headers (tritonclient hides them)."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(body))}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: server.post("/v2/models/digits/infer", body + x.tobytes(),
                                                      headers=headers), range(8)))
    refused = [a for a in answers if a[0] == 429]
    return refused[0] if refused else answers[0]


@pytest.mark.parametrize("max_batch", [16, 1])
def test_batching_is_seen_in_metrics(tmp_path, max_batch):
    """32 clients at once: with --max-batch 16, executions gather several requests (fewer executions than
    inferences, some batch over 1 row); with --max-batch 1 every execution is one request. The model costs
    ~2 ms a run (20 wide layers), so requests arrive while one runs, on any machine."""
    model = linear_model(tmp_path / "digits.onnx", depth=20)
    with Server([model, "--max-batch", str(max_batch)], tmp_path, grpc=False) as s:
        body, headers = infer_body(np.zeros((1, 1, 28, 28), np.float32))
        # 32 threads, each its own connection (tritonclient's gevent pool sent one request at a time here)
        with ThreadPoolExecutor(32) as pool:
            statuses = list(pool.map(lambda _: s.post("/v2/models/digits/infer", body, headers=headers,
                                                      timeout=60)[0], range(320)))
        assert statuses == [200] * 320
        m = s.metrics()
        count = sample(m, "nv_inference_count", model="digits")
        executions = sample(m, "nv_inference_exec_count", model="digits")
        assert count == 320  # warm-up runs before serving are not counted
        singles = sample(m, "toolkit_batch_size_bucket", model="digits", le="1")
        assert sample(m, "toolkit_batch_size_count", model="digits") == executions
        if max_batch == 1:
            assert executions == count and singles == executions
        else:
            assert executions < count and singles < executions
            assert sample(m, "toolkit_batch_compute_duration_us_total", model="digits") > 0
