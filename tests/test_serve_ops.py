"""`toolkit serve` operations, on real server processes: ready only once warmed at every batch size, two models
and --name, Prometheus /metrics under Triton's names moving with the requests, --timeout, SIGTERM/SIGINT drain
under concurrent HTTP and gRPC load (accepted == answered, exit 0), SIGHUP reload of a replaced, a broken and a
not-warmable model file."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from serve_process import Server, infer_body, linear_model, logits_of, sample, save_digit_model

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient's gRPC client needs grpcio and protobuf")
from tritonclient.utils import InferenceServerException  # noqa: E402

TRITON_NAMES = ("nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
                "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                "nv_inference_compute_infer_duration_us")


def _predictor(path):
    from toolkit.runtime import Predictor

    return Predictor.open(path, "cpu")


def _x(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def _grpc_input(x):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    return {"fast": linear_model(tmp / "fast0.onnx", seed=0), "slow": linear_model(tmp / "slow.onnx", depth=150)}


@pytest.fixture(scope="module")
def pair(files, tmp_path_factory):
    """Two models in one server: fast0.onnx named 'fast' by --name, slow.onnx by its stem; --timeout 0.3 s, which
    256 rows of the slow model (~1 s here) cannot meet."""
    with Server([files["fast"], files["slow"], "--name", "fast", "--timeout", "0.3", "--max-batch", "8"],
                tmp_path_factory.mktemp("log")) as s:
        yield s


def test_two_models_named_by_name_and_stem(pair, files):
    for name, path in (("fast", files["fast"]), ("slow", files["slow"])):
        status, body, _ = pair.get(f"/v2/models/{name}")
        assert status == 200 and json.loads(body)["name"] == name
        assert pair.get(f"/v2/models/{name}/ready")[0] == 200
        x = _x(3)
        body, headers = infer_body(x, ("logits",))
        status, answer, _ = pair.post(f"/v2/models/{name}/infer", body, headers=headers)
        assert status == 200, answer
        np.testing.assert_allclose(logits_of(answer), _predictor(path).logits(x), rtol=1e-5, atol=1e-5)
    status, body, _ = pair.get("/v2/models/fast0")
    assert status == 404 and "fast0" in json.loads(body)["error"]


def test_metrics_have_tritons_names_and_move_with_requests(pair):
    before = pair.metrics()
    for name in TRITON_NAMES:
        sample(before, name, model="fast")
        sample(before, name, model="slow")
    body, headers = infer_body(_x(2), ("logits",))
    for _ in range(3):
        assert pair.post("/v2/models/fast/infer", body, headers=headers)[0] == 200
    client = grpcclient.InferenceServerClient(pair.grpc)
    for _ in range(2):
        client.infer("fast", [_grpc_input(_x(1))])
    bad = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 28, 28],
                                  "data": [0.0] * 784}]}).encode()
    assert pair.post("/v2/models/fast/infer", bad)[0] == 400
    after = pair.metrics()

    def moved(name, **labels):
        return sample(after, name, model="fast", **labels) - sample(before, name, model="fast", **labels)

    assert moved("nv_inference_request_success") == 5
    assert moved("nv_inference_request_failure", reason="OTHER") == 1
    assert moved("nv_inference_request_failure", reason="REJECTED") == 0
    assert moved("nv_inference_count") == 8  # rows
    assert 1 <= moved("nv_inference_exec_count") <= 5
    assert moved("toolkit_batch_size_count") == moved("nv_inference_exec_count")
    assert moved("toolkit_batch_size_sum") == 8
    for name in ("nv_inference_request_duration_us", "nv_inference_compute_infer_duration_us",
                 "toolkit_batch_compute_duration_us_total"):
        assert moved(name) > 0, name
    assert moved("nv_inference_queue_duration_us") >= 0
    for name in TRITON_NAMES:  # the other model's counts are its own
        assert sample(after, name, model="slow") == sample(before, name, model="slow"), name
    client.close()


def test_timeout_answers_504_and_deadline_exceeded(pair):
    """256 rows of the slow model outlast --timeout 0.3: HTTP 504 and gRPC DEADLINE_EXCEEDED, counted as
    rejected (timeout); the fast model, same server, still answers."""
    before = pair.metrics()
    body, headers = infer_body(_x(256), ("logits",))
    status, answer, _ = pair.post("/v2/models/slow/infer", body, headers=headers)
    assert status == 504 and "deadline" in json.loads(answer)["error"]
    client = grpcclient.InferenceServerClient(pair.grpc)
    with pytest.raises(InferenceServerException) as e:
        client.infer("slow", [_grpc_input(_x(256))])
    assert "DEADLINE_EXCEEDED" in str(e.value.status())
    after = pair.metrics()
    assert sample(after, "toolkit_rejected_requests_total", model="slow", reason="timeout") - \
        sample(before, "toolkit_rejected_requests_total", model="slow", reason="timeout") == 2
    body, headers = infer_body(_x(1), ("logits",))
    assert pair.post("/v2/models/fast/infer", body, headers=headers)[0] == 200
    client.close()


def _serve(args: list, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", "serve", *map(str, args), "--provider", "cpu",
                           "--port", "0", "--grpc-port", "0"], capture_output=True, text=True, timeout=timeout)


def value_failing_model(path: Path) -> Path:
    """A real graph that opens, warms up and runs on images, and fails on a request whose first value is past 9:
    it is a row index into a 10x10 table (ORT: index out of bounds), so the failure comes from the request."""
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(10, 10)).astype(np.float32), "table")
    consts = [table, numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("Slice", ["flat", "zero", "one", "one"], ["first"]),  # column 0, shape (N, 1)
             helper.make_node("Squeeze", ["first", "one"], ["first1"]),
             helper.make_node("Cast", ["first1"], ["index"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "index"], ["logits"], axis=0)]
    graph = helper.make_graph(nodes, "by_value",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], consts)
    return save_digit_model(graph, path)


def test_ready_only_once_the_batch_sizes_it_runs_are_known(tmp_path):
    """A graph that runs at no batch size the model's opening finds (3 rows only) is refused before the server is
    ever ready (exit 1, one line naming the file); one that runs at batch 1 only is served with --max-batch 4 in
    chunks of one row (as predict runs it), its answers those of single-row requests."""
    three_rows = linear_model(tmp_path / "three_rows.onnx", rows=3)
    proc = _serve([three_rows, "--max-batch", "4"])
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "serving" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(three_rows) in last and "batch" in last, last
    one_row = linear_model(tmp_path / "one_row.onnx", rows=1)
    with Server([one_row, "--max-batch", "4"], tmp_path) as s:
        assert sample(s.metrics(), "nv_inference_exec_count", model="one_row") == 0  # warm-up is not traffic
        def logits(x):
            body, headers = infer_body(x, ("logits",))
            status, answer, _ = s.post("/v2/models/one_row/infer", body, headers=headers)
            assert status == 200, answer
            return logits_of(answer)

        x = _x(2)
        np.testing.assert_allclose(logits(x), np.concatenate([logits(x[:1]), logits(x[1:])]), rtol=1e-6, atol=1e-6)
    assert "Traceback" not in s.output()


def test_a_model_failing_on_a_request_is_one_line_and_the_server_keeps_serving(tmp_path):
    by_value = value_failing_model(tmp_path / "by_value.onnx")
    with Server([by_value, "--max-batch", "1"], tmp_path) as s:
        ok = _x(1)
        body, headers = infer_body(ok, ("logits",))
        assert s.post("/v2/models/by_value/infer", body, headers=headers)[0] == 200
        bad = np.full((1, 1, 28, 28), 50.0, np.float32)
        body, headers = infer_body(bad, ("logits",))
        status, answer, _ = s.post("/v2/models/by_value/infer", body, headers=headers)
        assert status == 500 and answer.count(b"\n") == 0
        assert "failed on this request" in json.loads(answer)["error"]
        client = grpcclient.InferenceServerClient(s.grpc)
        with pytest.raises(InferenceServerException) as e:
            client.infer("by_value", [_grpc_input(bad)])
        assert "INTERNAL" in str(e.value.status()) and "failed on this request" in e.value.message()
        client.close()
        body, headers = infer_body(ok, ("logits",))
        assert s.post("/v2/models/by_value/infer", body, headers=headers)[0] == 200
    assert "Traceback" not in s.output()


class _Load:
    """Clients in threads sending requests until the server refuses them: HTTP on keep-alive connections and
    gRPC. Counts what came back; ``refusals`` are 503/UNAVAILABLE answers or connections the server closed."""

    def __init__(self, server, x: np.ndarray, http_clients: int, grpc_clients: int):
        self.server, self.x = server, x
        self.answered = self.refused = 0
        self.statuses: dict = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._http, daemon=True) for _ in range(http_clients)] + \
            [threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc_clients)]

    def _count(self, status) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status in (503, "UNAVAILABLE", "closed"):
                self.refused += 1
            else:
                self.answered += 1

    def _http(self) -> None:
        body, headers = infer_body(self.x, ("logits",))
        host, port = self.server.url.split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v2/models/work/infer", body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except ConnectionRefusedError:
                return  # never connected: nothing was accepted
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                status = "closed"  # checked below against what the server says it accepted
            self._count(status)
            if status != 200:
                return

    def _grpc(self) -> None:
        client = grpcclient.InferenceServerClient(self.server.grpc)
        inp = _grpc_input(self.x)
        while not self.stop.is_set():
            try:
                client.infer("work", [inp], client_timeout=30)
                status = 200
            except InferenceServerException as e:
                status = str(e.status()).removeprefix("StatusCode.")
            self._count(status)
            if status != 200:
                break
        client.close()

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _accepted(log: str) -> int:
    match = re.search(r"every accepted request was answered \((\d+) accepted\)", log)
    assert match, log
    return int(match.group(1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_drain_under_load_answers_every_accepted_request(tmp_path, sig):
    """12 HTTP and 4 gRPC clients keep a slow model's queue full (--max-batch 1); then the signal: readiness is
    false while the accepted requests are still being answered, a new request is refused with 503, every request
    the server accepted got its answer (the server's count == the clients' answers), exit 0 within
    --drain-timeout, no traceback."""
    work = linear_model(tmp_path / "work.onnx", depth=150)
    s = Server([work, "--max-batch", "1", "--drain-timeout", "30"], tmp_path).start()
    try:
        with _Load(s, _x(4), http_clients=12, grpc_clients=4) as load:
            deadline = time.monotonic() + 30
            while load.answered < 40 and time.monotonic() < deadline:
                time.sleep(0.02)
            m = s.metrics()
            executions = sample(m, "nv_inference_exec_count", model="work")
            assert sample(m, "toolkit_batch_size_bucket", model="work", le="1") == executions  # --max-batch 1
            assert sample(m, "nv_inference_count", model="work") == 4 * executions
            s.send(sig)
            signalled = time.monotonic()
            probes = []
            while s.proc.poll() is None and time.monotonic() - signalled < 30:
                status, body, _ = s.get("/v2/health/ready", timeout=5)
                probes.append(status)
                if status != 200:
                    break
            assert probes and probes[-1] == 503 and json.loads(body) == {"ready": False}, probes
            request, headers = infer_body(_x(1))
            status, body, _ = s.post("/v2/models/work/infer", request, headers=headers)
            assert status in (503, 0), body  # refused while draining, or the server has already gone
            if status == 503:
                assert "shutting down" in json.loads(body)["error"]
            rc = s.proc.wait(40)
        assert rc == 0, s.output()
        log = s.output()
        assert "Traceback" not in log and "draining" in log
        assert load.answered >= 40 and load.refused >= 1, load.statuses
        assert set(load.statuses) <= {200, 503, "UNAVAILABLE", "closed"}, load.statuses
        assert _accepted(log) == load.answered, (load.statuses, log)
    finally:
        s.stop()


def test_a_drain_timeout_that_runs_out_exits_1(tmp_path):
    """A request that needs ~1.5 s of compute is in flight and --drain-timeout is 0.2: exit 1, and the log says how
    many requests were left unanswered."""
    work = linear_model(tmp_path / "work.onnx", depth=150)
    s = Server([work, "--drain-timeout", "0.2", "--timeout", "60", "--threads", "1"], tmp_path).start()
    try:
        body, headers = infer_body(_x(384))
        thread = threading.Thread(target=lambda: s.post("/v2/models/work/infer", body, headers=headers, timeout=60),
                                  daemon=True)
        thread.start()
        time.sleep(0.3)  # the 1.2 MB request is read and computing by then
        s.send(signal.SIGTERM)
        assert s.proc.wait(60) == 1, s.output()
        assert "--drain-timeout 0.2 s ran out with 1 request(s) unanswered" in s.output(), s.output()
        thread.join(30)
    finally:
        s.stop()


def _replace(path, make) -> None:
    """Replace ``path`` the way a deployment does: write beside it, then rename over it (a new inode)."""
    tmp = path.with_suffix(".new")
    make(tmp)
    os.replace(tmp, path)


def _wait_metric(server, name: str, want: float, **labels) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = server.metrics()
        if sample(m, name, **labels) >= want:
            return m
        time.sleep(0.05)
    raise AssertionError(f"{name} {labels} never reached {want}: {server.output()}")


def test_sighup_reloads_a_replaced_file_and_keeps_the_old_model_when_the_new_one_fails(tmp_path):
    path = tmp_path / "live.onnx"
    linear_model(path, seed=0)
    a = _predictor(path)
    linear_model(tmp_path / "b.onnx", seed=1)
    b = _predictor(tmp_path / "b.onnx")
    x = _x(2, seed=3)
    want_a, want_b = a.logits(x), b.logits(x)
    assert not np.allclose(want_a, want_b)
    body, headers = infer_body(x, ("logits",))
    seen, errors, stop = [], [], threading.Event()

    def traffic(server):  # answers during every reload below: each one the old model's or the new one's
        while not stop.is_set():
            status, answer, _ = server.post("/v2/models/live/infer", body, headers=headers)
            if status != 200:
                errors.append((status, answer))
                return
            got = logits_of(answer)
            seen.append("a" if np.allclose(got, want_a, atol=1e-5) else "b" if np.allclose(got, want_b, atol=1e-5)
                        else "other")

    def ask(server):
        status, answer, _ = server.post("/v2/models/live/infer", body, headers=headers)
        assert status == 200, answer
        return logits_of(answer)

    with Server([path, "--max-batch", "4"], tmp_path) as s:
        np.testing.assert_allclose(ask(s), want_a, atol=1e-5)
        thread = threading.Thread(target=traffic, args=(s,), daemon=True)
        thread.start()
        _replace(path, lambda p: linear_model(p, seed=1))
        s.send(signal.SIGHUP)
        m = _wait_metric(s, "toolkit_model_reloads_total", 1, model="live", result="success")
        np.testing.assert_allclose(ask(s), want_b, atol=1e-5)
        assert sample(m, "toolkit_model_reload_failed", model="live") == 0
        # a broken file, then one that loads but runs at no batch size its opening finds: each refused, the new
        # model serves
        for failures, make in ((1, lambda p: p.write_bytes(b"not an ONNX model")),
                               (2, lambda p: linear_model(p, seed=2, rows=3))):
            _replace(path, make)
            s.send(signal.SIGHUP)
            m = _wait_metric(s, "toolkit_model_reloads_total", failures, model="live", result="failure")
            assert sample(m, "toolkit_model_reload_failed", model="live") == 1
            assert sample(m, "toolkit_model_reloads_total", model="live", result="success") == 1
            np.testing.assert_allclose(ask(s), want_b, atol=1e-5)
        log = s.output()
        assert log.count("the previous model keeps serving") == 2, log
        assert "at every other batch size tried" in log
        _replace(path, lambda p: linear_model(p, seed=0))
        s.send(signal.SIGHUP)
        m = _wait_metric(s, "toolkit_model_reloads_total", 2, model="live", result="success")
        assert sample(m, "toolkit_model_reload_failed", model="live") == 0
        np.testing.assert_allclose(ask(s), want_a, atol=1e-5)
        stop.set()
        thread.join(10)
        assert not errors and "other" not in seen and {"a", "b"} <= set(seen), (errors, set(seen))
        assert s.stop() == 0
    assert "Traceback" not in s.output()
