"""`toolkit serve` over gRPC: a real server process on 127.0.0.1 and the protocol's own client, tritonclient.grpc,
unchanged: health and metadata, tensors equal to the HTTP answer and to an in-process session, BYTES images equal
to `toolkit predict`'s CSV, the protocol's status codes, and a full queue refused at once."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest

from serve_process import SAMPLES, Server, digits, linear_model, model, predict_csv, reference, sample  # noqa: F401

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient's gRPC client needs grpcio and protobuf")
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

OUTPUTS = ("logits", "probabilities", "label", "confidence")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    with Server([model, "--max-batch", "16"], tmp_path_factory.mktemp("log")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc)
    yield c
    c.close()


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32"):
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def _status(error: InferenceServerException) -> str:
    return str(error.status()).removeprefix("StatusCode.")


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    meta = client.get_server_metadata()
    assert meta.name == "toolkit" and "binary_tensor_data" in meta.extensions and meta.version
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "toolkit"
    model = client.get_model_metadata("digits")
    assert model.name == "digits" and list(model.versions) == ["1"] and model.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("input", "FP32", [-1, 1, 28, 28])]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("logits", "FP32", [-1, 10]), ("probabilities", "FP32", [-1, 10]), ("label", "BYTES", [-1]),
        ("confidence", "FP32", [-1])]
    assert client.get_model_metadata("digits", as_json=True)["inputs"][0]["name"] == "input"


def test_model_ready_of_an_unknown_model_or_version_is_false(client):
    """As Triton answers (and tritonclient.http says): not ready, not an error."""
    assert client.is_model_ready("nope") is False
    assert client.is_model_ready("digits", "7") is False


def test_infer_equals_http_and_an_in_process_session(server, client, reference):
    x = reference.contract.preprocess.normalize(digits(6))
    result = client.infer("digits", [_input(x)], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                          request_id="g-1")
    assert result.get_response().id == "g-1" and result.get_response().model_name == "digits"
    http = httpclient.InferenceServerClient(server.url)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    over_http = http.infer("digits", [inp], outputs=[httpclient.InferRequestedOutput(n) for n in OUTPUTS])
    for name in OUTPUTS:
        assert np.array_equal(result.as_numpy(name), over_http.as_numpy(name)), name
    want = reference.logits(x)
    np.testing.assert_allclose(result.as_numpy("logits"), want, rtol=1e-5, atol=1e-6)
    probs = reference.to_probabilities(want)
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, rtol=1e-5, atol=1e-7)
    assert [b.decode() for b in result.as_numpy("label")] == [reference.classes[i] for i in probs.argmax(axis=1)]
    np.testing.assert_allclose(result.as_numpy("confidence"), probs.max(axis=1), rtol=1e-5)


def test_infer_default_output_and_async(client, reference):
    x = reference.contract.preprocess.normalize(digits(3, seed=4))
    result = client.infer("digits", [_input(x)])
    assert [o.name for o in result.get_response().outputs] == ["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), reference.logits(x), rtol=1e-5, atol=1e-6)
    done, answers = threading.Event(), []

    def callback(result, error):
        answers.append((result, error))
        if len(answers) == 8:
            done.set()

    for i in range(8):
        client.async_infer("digits", [_input(x[i % 3:i % 3 + 1])], callback, request_id=str(i))
    assert done.wait(30)
    assert all(error is None for _, error in answers)
    for result, _ in answers:
        i = int(result.get_response().id) % 3
        np.testing.assert_allclose(result.as_numpy("logits"), reference.logits(x[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_bytes_images_equal_what_predict_writes(client, model, tmp_path):
    rows = predict_csv(model, SAMPLES, tmp_path)
    files = np.array([p.read_bytes() for p in SAMPLES], dtype=object)
    result = client.infer("digits", [_input(files, "image", "BYTES")])
    assert [o.name for o in result.get_response().outputs] == ["label", "confidence", "probabilities", "blank"]
    labels = [b.decode() for b in result.as_numpy("label")]
    probs = result.as_numpy("probabilities")
    assert not result.as_numpy("blank").any()
    for i, path in enumerate(SAMPLES):
        row = rows[str(path)]
        assert labels[i] == row["label"]
        assert f"{result.as_numpy('confidence')[i]:.6f}" == row["confidence"]
        assert {str(c): f"{p:.6f}" for c, p in enumerate(probs[i])} == \
            {row[f"top{k}_label"]: row[f"top{k}_prob"] for k in range(1, 11)}


@pytest.mark.parametrize("call,code,words", [
    (lambda c, x: c.infer("nope", [_input(x)]), "NOT_FOUND", "nope"),
    (lambda c, x: c.infer("digits", [_input(x)], model_version="2"), "NOT_FOUND", "version"),
    (lambda c, x: c.get_model_metadata("nope"), "NOT_FOUND", "nope"),
    (lambda c, x: c.infer("digits", [_input(x[:, 0])]), "INVALID_ARGUMENT", "shape"),
    (lambda c, x: c.infer("digits", [_input(x.astype(np.float64), datatype="FP64")]), "INVALID_ARGUMENT", "FP32"),
    (lambda c, x: c.infer("digits", [_input(x, name="pixels")]), "INVALID_ARGUMENT", "pixels"),
    (lambda c, x: c.infer("digits", [_input(x), _input(x, name="other")]), "INVALID_ARGUMENT", "one input"),
    (lambda c, x: c.infer("digits", [_input(x)], outputs=[grpcclient.InferRequestedOutput("nothing")]),
     "INVALID_ARGUMENT", "nothing"),
    (lambda c, x: c.infer("digits", [_input(np.zeros((2, 1), np.float32), "image", "FP32")]), "INVALID_ARGUMENT",
     "image"),
    (lambda c, x: c.infer("digits", [_input(np.array([b"not an image"], dtype=object), "image", "BYTES")]),
     "INVALID_ARGUMENT", "image 0"),
    (lambda c, x: c.infer("digits", [_input(np.zeros((0, 1, 28, 28), np.float32))]), "INVALID_ARGUMENT", "rows"),
])
def test_errors_have_the_protocols_status(client, call, code, words):
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(InferenceServerException) as e:
        call(client, x)
    assert _status(e.value) == code, e.value
    assert words in e.value.message()
    assert client.is_server_live()


def test_full_queue_is_resource_exhausted_at_once(tmp_path):
    """--max-queue 1 and a model that needs ~0.3 s per request: of 24 requests sent together, the ones that find
    the queue full are refused RESOURCE_EXHAUSTED without waiting for the model, each sooner than one model
    execution takes; the accepted ones are answered and counted apart from the refused ones."""
    slow = linear_model(tmp_path / "slow.onnx", depth=150)
    with Server([slow, "--max-queue", "1", "--max-batch", "1", "--threads", "1"], tmp_path) as s:
        client = grpcclient.InferenceServerClient(s.grpc)
        x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
        lock, done, answers = threading.Lock(), threading.Event(), []

        def callback(sent, result=None, error=None):  # tritonclient passes result= and error= by keyword
            with lock:
                answers.append((time.perf_counter() - sent, error))
                if len(answers) == 24:
                    done.set()

        for _ in range(24):
            sent = time.perf_counter()
            client.async_infer("slow", [_input(x)], functools.partial(callback, sent))
        assert done.wait(60)
        refused = [seconds for seconds, error in answers if error is not None]
        errors = [error for _, error in answers if error is not None]
        ok = len(answers) - len(refused)
        assert ok >= 1 and refused, (ok, errors)
        assert all(_status(e) == "RESOURCE_EXHAUSTED" and "retry" in e.message() for e in errors), errors[0]
        m = s.metrics()
        execution_s = sample(m, "toolkit_batch_compute_duration_us_total", model="slow") / 1e6 / ok
        assert max(refused) < execution_s, (max(refused), execution_s)
        assert sample(m, "toolkit_rejected_requests_total", model="slow", reason="queue_full") == len(refused)
        assert sample(m, "nv_inference_request_success", model="slow") == ok
        assert sample(m, "nv_inference_request_failure", model="slow", reason="REJECTED") == len(refused)
        client.close()
