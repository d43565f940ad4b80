"""`toolkit serve --engine ray` on a real two-node Ray cluster of local processes (token authentication on).

The same requests go to the single-box server and to Ray Serve and must get the same bytes back; a replica
is killed with SIGKILL under load from a pool of client threads (every request with a timeout) and the
failures are counted during the kill and after Ray replaced it; tritonclient.grpc through Serve's gRPC proxy
gets the single-box server's messages and status codes; SIGTERM deletes the Serve application;
without --address a local Ray instance is started, --replicas auto scales up under load there, and nothing
of it is left after SIGTERM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from serve_process import Server, free_port
from test_runtime_contracts import linear_onnx

import tritonclient.http as httpclient  # noqa: E402  (serve_process skips the module when missing)

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient's gRPC client needs grpcio and protobuf")
from tritonclient.utils import InferenceServerException  # noqa: E402


def has_ray_serve() -> bool:
    """Found, not imported (find_spec of ray.serve would import ray): Ray reads its authentication mode when
    imported, and the cluster fixture sets it."""
    spec = importlib.util.find_spec("ray")
    return spec is not None and any((Path(p) / "serve" / "api.py").exists()
                                    for p in spec.submodule_search_locations or [])


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not has_ray_serve(), reason="the cluster extra (ray[serve]) is not installed"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc")]

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*/*.png"))[::7]
REPLICA = "ServeReplica:toolkit:ToolkitServe"
CLIENTS = 8


def without_ray_auth(env: dict) -> dict:
    return {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}


def parents() -> dict[int, int]:
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                found[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return found


def descendants(root: int) -> set[int]:
    """Every process below ``root``: what a process started (other engineers' Ray clusters are not counted)."""
    tree, out, todo = parents(), set(), [root]
    while todo:
        parent = todo.pop()
        children = [pid for pid, ppid in tree.items() if ppid == parent]
        out.update(children)
        todo.extend(children)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(pid)
        except (OSError, IndexError):
            continue
    return out


class RayServer(Server):
    """``toolkit serve MODEL --engine ray ...``: the Server helper's requests; --grpc-port only if ``grpc``
    (under Ray it is off unless given)."""

    def __init__(self, args: list, tmp: Path, env: dict, grpc: bool = False):
        super().__init__([], tmp, grpc=grpc)
        self.args = [sys.executable, "-m", "toolkit", "serve", *map(str, args), "--engine", "ray", "--port",
                     str(self.port), "--provider", "cpu", "--threads", "1"]
        if grpc:
            self.args += ["--grpc-port", str(self.grpc_port)]
        self.env = env

    def start(self, timeout: float = 150.0) -> "RayServer":
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env | {"PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"toolkit serve --engine ray exited {self.proc.returncode}: {self.output()}")
            if "; ready" in self.output():
                return self
            time.sleep(0.2)
        raise AssertionError(f"not ready within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")  # unbuffered child, and readable after stop()


# The cluster lives in a process of its own: Ray loads its token once per process, so a cluster started in the
# pytest process would clash with any other test file's (tests/test_ray.py's) token.
CLUSTER = r"""
import sys
from ray.cluster_utils import Cluster
nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
try:
    # The second node declares a GPU: this machine has none, so CUDA fails where a replica runs, which is
    # where the provider must be checked (test_provider_cuda_is_checked_where_a_replica_runs).
    nodes.add_node(num_cpus=1, num_gpus=1)
    print(nodes.address, flush=True)
    sys.stdin.read()
finally:
    nodes.shutdown()
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a second node on this machine, one CPU each, with Ray's token authentication.

    HOME is a fresh folder for the nodes and the drivers: a stray ~/.ray/auth_token cannot stand in for the
    token the test gives (or withholds)."""
    home = tmp_path_factory.mktemp("ray-home")
    token = secrets.token_hex(16)
    env = without_ray_auth(os.environ) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                                          "RAY_USAGE_STATS_ENABLED": "0", "HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    ours: set[int] = set()
    try:
        address = proc.stdout.readline().strip()
        assert address, f"the test cluster did not start (exit {proc.poll()})"
        ours = descendants(proc.pid)
        yield address, token, home
    finally:
        ours |= descendants(proc.pid)
        proc.stdin.close()
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 30
        while [p for p in alive(ours) if "raylet" in cmdline(p)] and time.monotonic() < deadline:
            time.sleep(0.2)
    assert not [p for p in alive(ours) if "raylet" in cmdline(p)], "a raylet of the test cluster was left running"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-ray") / "digits.onnx"
    linear_onnx(path)
    return path


@pytest.fixture(scope="module")
def ray_server(cluster, model, tmp_path_factory):
    """Two replicas on the two-node cluster, joined with only the token given."""
    address, token, home = cluster
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": token, "HOME": str(home)}
    server = RayServer([model, "--address", address, "--replicas", "2"], tmp_path_factory.mktemp("log"), env,
                       grpc=True)
    server.start()
    yield server
    server.stop(signal.SIGKILL) if server.proc.poll() is None else None


def serve_status(address: str, token: str, home: Path) -> dict:
    """Serve's applications on the cluster, seen by a separate driver with the token."""
    code = ("import json, ray; from ray import serve; ray.init(address=%r, logging_level='ERROR'); "
            "s = serve.status(); print(json.dumps({n: {d: dict(v.replica_states) for d, v in a.deployments.items()} "
            "for n, a in s.applications.items()}))" % address)
    env = without_ray_auth(os.environ) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "HOME": str(home)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def tensor_bodies(model: Path) -> list[tuple[str, bytes, dict]]:
    """Requests of the protocol, JSON and binary, with tensors and with encoded images."""
    from toolkit.predict import prepare
    from toolkit.runtime import Predictor

    spec = Predictor.open(model, "cpu").contract.preprocess
    x = spec.normalize(np.stack([prepare(p) for p in SAMPLES[:4]]))
    outputs = [{"name": n} for n in ("logits", "probabilities", "label", "confidence")]
    as_json = json.dumps({"id": "r1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                                  "data": x.ravel().tolist()}], "outputs": outputs}).encode()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    binary = (head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                   "Content-Type": "application/octet-stream"})
    files = [p.read_bytes() for p in SAMPLES[4:8]]
    import base64

    images = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                                     "data": [base64.b64encode(f).decode() for f in files]}]}).encode()
    requests = [("/v2/models/digits/infer", as_json, {}), ("/v2/models/digits/infer", *binary),
                ("/v2/models/digits/infer", images, {})]
    requests += [(f"/v2/models/digits/classify{q}", p.read_bytes(), {}) for p, q in zip(SAMPLES[8:12],
                                                                                        ["", "?view=1", "", ""])]
    return requests


def test_the_same_responses_as_the_single_box_server(ray_server, model, tmp_path):
    with Server([model, "--threads", "1"], tmp_path, grpc=False) as local:
        for path in ("/v2", "/v2/models/digits", "/v2/models/digits/ready", "/v2/health/ready", "/nope"):
            assert ray_server.get(path)[:2] == local.get(path)[:2], path
        for path, body, headers in tensor_bodies(model):
            got, want = ray_server.post(path, body, headers=headers), local.post(path, body, headers=headers)
            assert got[0] == want[0] == 200, (path, got[1][:300])
            assert got[1] == want[1], path  # byte for byte: the same app, the same session options
            for key in ("Content-Type", "Inference-Header-Content-Length"):
                assert got[2].get(key) == want[2].get(key), (path, key)
        bad = ray_server.post("/v2/models/digits/classify", b"not an image")
        assert bad[:2] == local.post("/v2/models/digits/classify", b"not an image")[:2] and bad[0] == 400
    client = httpclient.InferenceServerClient(ray_server.url)  # the protocol's own client, unchanged
    assert client.is_server_ready() and client.get_model_metadata("digits")["inputs"][0]["name"] == "input"


def grpc_calls(model: Path) -> list:
    """tritonclient.grpc calls, each (client -> tritonclient's answer or InferenceServerException): health,
    metadata, tensors with every output, BYTES images, and the protocol's errors."""
    from toolkit.predict import prepare
    from toolkit.runtime import Predictor

    spec = Predictor.open(model, "cpu").contract.preprocess
    x = spec.normalize(np.stack([prepare(p) for p in SAMPLES[:4]]))
    files = np.array([p.read_bytes() for p in SAMPLES[4:8]], dtype=object)

    def tensor(array: np.ndarray, name: str, datatype: str):
        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        return inp

    outputs = [grpcclient.InferRequestedOutput(n) for n in ("logits", "probabilities", "label", "confidence")]
    return [
        lambda c: c.is_server_live(), lambda c: c.is_server_ready(), lambda c: c.is_model_ready("digits"),
        lambda c: c.is_model_ready("nope"), lambda c: c.get_server_metadata(), lambda c: c.get_model_metadata("digits"),
        lambda c: c.infer("digits", [tensor(x, "input", "FP32")], outputs=outputs, request_id="g1").get_response(),
        lambda c: c.infer("digits", [tensor(x, "input", "FP32")]).get_response(),
        lambda c: c.infer("digits", [tensor(files, "image", "BYTES")]).get_response(),
        lambda c: c.infer("nope", [tensor(x, "input", "FP32")]),
        lambda c: c.get_model_metadata("nope"),
        lambda c: c.infer("digits", [tensor(x[:, 0], "input", "FP32")]),
        lambda c: c.infer("digits", [tensor(np.array([b"not an image"], dtype=object), "image", "BYTES")]),
    ]


def grpc_answer(call, client):
    """What a call gave, comparable across servers: a message as its bytes, an error as (status, message)."""
    try:
        answer = call(client)
    except InferenceServerException as e:
        return str(e.status()), e.message()
    return answer.SerializeToString() if hasattr(answer, "SerializeToString") else answer


def test_grpc_the_same_answers_as_the_single_box_server(ray_server, model, tmp_path):
    """tritonclient.grpc, unchanged (no `application` metadata), through Serve's gRPC proxy: every message
    byte for byte the single-box server's gRPC answer, every error the same status code and message."""
    ray = grpcclient.InferenceServerClient(ray_server.grpc)
    with Server([model, "--threads", "1"], tmp_path) as local:
        here = grpcclient.InferenceServerClient(local.grpc)
        answers = [(grpc_answer(call, ray), grpc_answer(call, here)) for call in grpc_calls(model)]
        here.close()
    ray.close()
    for i, (got, want) in enumerate(answers):
        assert got == want, (i, got if isinstance(got, tuple) else len(got), want if isinstance(want, tuple) else 0)
    assert answers[0][0] is answers[1][0] is answers[2][0] is True and answers[3][0] is False
    assert len(answers[6][0]) > 4 * 10 * 4 and len(answers[8][0]) > 4 * 10 * 4  # tensors came back, not nothing
    assert [a[0][0] for a in answers[9:]] == ["StatusCode.NOT_FOUND", "StatusCode.NOT_FOUND",
                                              "StatusCode.INVALID_ARGUMENT", "StatusCode.INVALID_ARGUMENT"]


def replicas(cluster_root: int) -> set[int]:
    return {p for p in alive(descendants(cluster_root)) if cmdline(p).startswith(f"ray::{REPLICA}")}


def test_a_replica_killed_under_load(ray_server, cluster, model):
    """SIGKILL to one of two replicas while 8 client threads send requests (each with a 10 s timeout)."""
    address, token, home = cluster
    path, body, headers = tensor_bodies(model)[1]
    before = replicas(os.getpid())
    assert len(before) == 2, before
    log: list[tuple[float, int, bytes, float]] = []  # (start, HTTP status or 0 for no answer, body, end)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status, answer, _ = ray_server.post(path, body, headers=headers, timeout=10.0)
            log.append((started, status, answer[:300], time.monotonic()))

    with ThreadPoolExecutor(CLIENTS) as pool:
        for _ in range(CLIENTS):
            pool.submit(client)
        time.sleep(3)
        killed = sorted(before)[0]
        kill_t = time.monotonic()
        os.kill(killed, signal.SIGKILL)
        replaced_t = None
        deadline = kill_t + 90
        while time.monotonic() < deadline:  # replaced: Serve runs two replicas again, one of them new
            now = replicas(os.getpid())
            if len(now) == 2 and killed not in now:
                states = serve_status(address, token, home).get("toolkit", {}).get("ToolkitServe", {})
                if states.get("RUNNING") == 2:
                    replaced_t = time.monotonic()
                    break
            time.sleep(0.5)
        assert replaced_t is not None, "Ray Serve did not replace the killed replica within 90 s"
        time.sleep(5)
        stop.set()
    earlier = [r for r in log if r[3] < kill_t]
    during = [r for r in log if r[3] >= kill_t and r[0] < replaced_t]  # in flight at the kill, or sent until replaced
    after = [r for r in log if r[0] >= replaced_t]
    failed_during = [r for r in during if r[1] != 200]
    failed_after = [r for r in after if r[1] != 200]
    print(f"\nreplica kill: {len(earlier)} requests before, {len(during)} during ({replaced_t - kill_t:.1f} s, "
          f"{len(failed_during)} failed = {len(failed_during) / max(1, len(during)):.2%}, HTTP "
          f"{sorted({r[1] for r in failed_during})}), {len(after)} after ({len(failed_after)} failed)")
    assert not [r for r in earlier if r[1] != 200]
    assert all(r[1] >= 400 for r in failed_during + failed_after), "a request got no HTTP answer (a hang or a reset)"
    assert not failed_after, failed_after[:3]
    # The goal is <= 1% during (docs/scale.md has the counts); asserted here is a bound that does not depend on
    # this machine's speed: what was on the killed replica plus what each client sent it before Serve noticed.
    assert len(failed_during) <= 2 * CLIENTS, (len(failed_during), len(during), failed_during[:3])
    assert len(after) > 20


def test_a_driver_without_the_token_is_refused(cluster, model, tmp_path):
    address, _, _ = cluster
    env = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}  # no token, no ~/.ray/auth_token
    result = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(model), "--engine", "ray", "--address",
                             address, "--port", str(free_port())], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 5
    assert result.stderr.count("\n") == 1 and "requires its authentication token" in result.stderr, result.stderr


def test_sigterm_deletes_the_serve_application(ray_server, cluster):
    """Last of the cluster tests: SIGTERM to the command, exit 0, no Serve application or replica left."""
    address, token, home = cluster
    assert replicas(os.getpid())  # the application runs (Serve said so in the kill test)
    started = time.monotonic()
    assert ray_server.stop(signal.SIGTERM, timeout=90) == 0, ray_server.output()
    print(f"\nSIGTERM to exit: {time.monotonic() - started:.1f} s")
    lines = ray_server.output().splitlines()
    assert all(line.startswith("toolkit serve: ") for line in lines), lines  # its own lines only, no Ray noise
    assert lines[-2:] == ["toolkit serve: stopping: deleting the Serve application 'toolkit'",
                          "toolkit serve: stopped"], lines
    assert serve_status(address, token, home) == {}
    deadline = time.monotonic() + 30
    while replicas(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not replicas(os.getpid())
    assert ray_server.get("/v2/health/live")[0] == 0  # the proxy is gone: Serve was shut down with its app


def test_provider_cuda_is_checked_where_a_replica_runs(cluster, model, tmp_path):
    """The command's machine never decides --provider cuda: a replica's node does (here the second node,
    which declares a GPU this machine does not have), in one line, exit 5, nothing deployed."""
    address, token, home = cluster
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": token, "HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(model), "--engine", "ray", "--address",
                             address, "--port", str(free_port()), "--provider", "cuda"], capture_output=True,
                            text=True, timeout=180, env=env)
    assert result.returncode == 5, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("toolkit: error: "), result.stderr
    assert "CUDA" in result.stderr and "has no GPU" not in result.stderr, result.stderr
    assert serve_status(address, token, home) == {}


def test_autoscaled_on_a_local_ray_instance_and_nothing_left(model, tmp_path):
    """No --address: the command starts a local Ray (this machine's CPUs). --replicas auto: one replica while
    idle, a second once the ongoing requests pass the target (--max-batch 2: two per replica) under 8 clients,
    never more than --max-replicas. After SIGTERM no process the command started is left."""
    env = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}
    token = secrets.token_hex(16)
    (tmp_path / "token").write_text(token)
    auth = {"Authorization": f"Bearer {token}"}
    server = RayServer([model, "--replicas", "auto", "--min-replicas", "1", "--max-replicas", "2",
                        "--max-batch", "2", "--token-file", tmp_path / "token"], tmp_path, env, grpc=True).start()
    stop = threading.Event()
    threads = [threading.Thread(target=lambda: None)]
    try:
        ours = descendants(server.proc.pid)
        assert [p for p in ours if "raylet" in cmdline(p)], "no raylet below the command"
        assert "1 to 2 replicas (autoscaled)" in server.output()
        assert len(replicas(server.proc.pid)) == 1
        path, body, headers = tensor_bodies(model)[1]
        headers |= auth
        assert server.post(path, body, headers=headers)[0] == 200
        assert_grpc_needs_the_token(server.grpc, token, model)

        def client() -> None:
            while not stop.is_set():
                server.post(path, body, headers=headers, timeout=10.0)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        while len(replicas(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(replicas(server.proc.pid)) == 2, "the autoscaler did not add a replica within 90 s"
        time.sleep(5)  # still under load: no third one (--max-replicas 2)
        assert len(replicas(server.proc.pid)) == 2
        ours |= descendants(server.proc.pid)
    finally:
        stop.set()
        for t in threads:
            t.join(15) if t.ident else None
        assert server.stop(signal.SIGTERM, timeout=90) == 0, server.output()
    deadline = time.monotonic() + 30
    while alive(ours) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(ours), [cmdline(p)[:100] for p in alive(ours)]


def assert_grpc_needs_the_token(address: str, token: str, model: Path) -> None:
    """--token-file under Ray: a gRPC call without the token (or with another) is UNAUTHENTICATED, as on the
    single box; live/ready stay open; with the token the same call is answered."""
    client = grpcclient.InferenceServerClient(address)
    infer = grpc_calls(model)[7]
    try:
        assert client.is_server_live() and client.is_server_ready()  # no token needed
        for headers in (None, {"authorization": "Bearer " + "0" * 32}):
            for call in (lambda c: c.get_model_metadata("digits", headers=headers),
                         lambda c: c.is_model_ready("digits", headers=headers),
                         lambda c: infer(c) if headers is None else c.get_server_metadata(headers=headers)):
                status, message = grpc_answer(call, client)
                assert status == "StatusCode.UNAUTHENTICATED" and "bearer token" in message, (status, message)
        good = {"authorization": f"Bearer {token}"}
        assert client.is_model_ready("digits", headers=good)
        assert client.get_model_metadata("digits", headers=good).name == "digits"
    finally:
        client.close()


@pytest.mark.parametrize("args,message", [
    (["--replicas", "2"], "--replicas deploys on Ray Serve: it needs --engine ray"),
    (["--engine", "ray", "--max-connections", "9"], "--max-connections is not available with --engine ray"),
    (["--engine", "ray", "--grpc-port", "9001", "--certfile", "{model}", "--keyfile", "{model}"],
     "Ray Serve's gRPC proxy has no TLS"),
    (["--engine", "ray", "--min-replicas", "2"], "give --replicas auto"),
    (["--engine", "ray", "--replicas", "auto", "--min-replicas", "3", "--max-replicas", "2"], "is above"),
    (["--engine", "ray", "--replicas", "zero"], "a number of replicas from 1 to 1024, or auto"),
])
def test_usage_errors(model, args, message):
    args = [a.replace("{model}", str(model)) for a in args]  # a file that exists: refused before it is read
    result = subprocess.run([sys.executable, "-m", "toolkit", "serve", str(model), *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr
