"""`predict --engine ray` on the cases issue 19 found (items 9-14): a join that cannot succeed fails fast and is
told apart by type, a model with external data runs in the tasks, a graph that fails on the cluster is one
line, and --force replaces only an earlier Parquet output. The cluster is test_ray.py's layout (head + a second
node, one CPU each, token authentication) started in a process of its own, so that this pytest process never
imports Ray (Ray reads its auth mode and caches a token when imported: a second cluster in the process that ran
test_ray.py's would refuse it). Runs are few: each Ray start costs seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_ray import images, toolkit, without_ray_auth  # noqa: F401  (the images fixture reused)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the cluster extra is not installed"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc")]


@pytest.fixture(scope="module")
def cluster():
    """(address, token) of a two-node cluster run by a child process; it stops the nodes when its stdin closes
    (also when this process dies)."""
    token = secrets.token_hex(16)
    env = without_ray_auth(os.environ) | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                                          "RAY_USAGE_STATS_ENABLED": "0"}
    code = ("import sys\nfrom ray.cluster_utils import Cluster\n"
            "nodes = Cluster(initialize_head=True, head_node_args={'num_cpus': 1, 'include_dashboard': False})\n"
            "try:\n    nodes.add_node(num_cpus=1)\n    print(nodes.address, flush=True)\n    sys.stdin.read()\n"
            "finally:\n    nodes.shutdown()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        address = proc.stdout.readline().strip()
        assert address, f"the cluster process ended with {proc.wait()}"
        yield address, token
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("toolkit: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: nothing listens there


def test_a_closed_port_fails_at_once(images, tmp_path):
    """Ray's own client waited minutes on a closed port; the TCP probe answers before ray.init is called.
    The subprocess timeout is the bound (well below Ray's retries), not a timed assert."""
    folder, model, _ = images
    port = closed_port()
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": "0" * 32, "HOME": str(tmp_path)}
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        result = subprocess.run([sys.executable, "-m", "toolkit", "predict", str(folder), "--model", str(model),
                                 "--engine", "ray", "--address", address], capture_output=True, text=True, env=env,
                                timeout=90)
        assert result.returncode == 5, result.stderr
        line = one_error_line(result.stderr)
        assert f"cannot join the Ray cluster at {address} (connection refused" in line
        assert result.stderr.count("\n") == 1


def external_data_copy(model: Path, folder: Path) -> Path:
    """The same model saved as model.onnx + model.onnx.data (ONNX external data), in its own folder."""
    import onnx

    folder.mkdir()
    proto = onnx.load(str(model))
    onnx.save(proto, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def failing_on_digits(model: Path, path: Path) -> Path:
    """The linear model plus a Gather whose index is out of range exactly when every image of a batch has an
    empty corner and some ink (MNIST digits): it opens and passes probes of random or empty images, and fails
    in ONNX Runtime at run time on the cluster's first real batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(str(model))
    graph = proto.graph
    final = graph.output[0].name
    for node in graph.node:
        node.output[:] = ["linear_out" if o == final else o for o in node.output]
    x = graph.input[0].name
    consts = {"starts": np.array([0, 0], np.int64), "ends": np.array([1, 1], np.int64),
              "axes": np.array([2, 3], np.int64), "empty": np.array(-0.4, np.float32),
              "ink": np.array(0.0, np.float32), "hundred": np.array(100, np.int64),
              "table": np.array([1.0], np.float32), "zero": np.array(0.0, np.float32)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    graph.node.extend([
        helper.make_node("Slice", [x, "starts", "ends", "axes"], ["corner"]),
        helper.make_node("ReduceMax", ["corner"], ["corner_max"], keepdims=0),
        helper.make_node("ReduceMax", [x], ["all_max"], keepdims=0),
        helper.make_node("Less", ["corner_max", "empty"], ["corners_empty"]),
        helper.make_node("Greater", ["all_max", "ink"], ["has_ink"]),
        helper.make_node("And", ["corners_empty", "has_ink"], ["digits"]),
        helper.make_node("Cast", ["digits"], ["digits_int"], to=TensorProto.INT64),
        helper.make_node("Mul", ["digits_int", "hundred"], ["index"]),
        helper.make_node("Gather", ["table", "index"], ["picked"], axis=0),
        helper.make_node("Mul", ["picked", "zero"], ["nothing"]),
        helper.make_node("Add", ["linear_out", "nothing"], [final]),
    ])
    onnx.save(proto, str(path))
    return path


def test_external_data_runs_in_the_tasks_and_a_failing_graph_is_one_line(cluster, images, tmp_path):
    address, token = cluster
    folder, model, local = images
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": token}
    external = external_data_copy(model, tmp_path / "ext")
    out = tmp_path / "ext.csv"
    result = toolkit("predict", folder, "--model", external, "--provider", "cpu", "-o", out, "--engine", "ray",
                     "--address", address, env=env)
    assert result.returncode == 3, result.stderr  # the broken PNG, as with the file that holds its own tensors
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == local.read_bytes()

    bad = failing_on_digits(model, tmp_path / "bad.onnx")
    result = toolkit("predict", folder, "--model", bad, "--provider", "cpu", "--engine", "ray", "--address", address,
                     env=env)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    # the local engine's line (the run guard's ModelError raised in the task), naming the user's file, not the
    # task's copy; an error without a toolkit type would read "failed on the cluster: REASON (Type)"
    assert line.startswith(f"toolkit: error: {bad}: ") and "Gather" in line and "ray::" not in line, line
    # the start-up notice and the error: no Ray log pages, no worker tracebacks
    assert len(result.stderr.splitlines()) <= 3, result.stderr


def test_force_replaces_an_earlier_parquet_output_only(cluster, images, tmp_path):
    pytest.importorskip("pyarrow.parquet")
    address, token = cluster
    folder, model, _ = images
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": token}
    out = tmp_path / "rows.parquet"
    run = ["predict", folder, "--model", model, "--provider", "cpu", "-o", out, "--engine", "ray", "--address",
           address]
    assert toolkit(*run, env=env).returncode == 3
    manifest = json.loads((out / "_toolkit_predict.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir() if p.name != "_toolkit_predict.json")
    assert manifest["rows"] == 300 and all(name.endswith(".parquet") for name in manifest["files"])
    first = set(manifest["files"])
    result = toolkit(*run, "--force", env=env)
    assert result.returncode == 3, result.stderr
    second = set(json.loads((out / "_toolkit_predict.json").read_text())["files"])
    assert second and not first & second  # the old parts replaced, not mixed in
    (out / "my-notes.txt").write_text("mine")
    result = toolkit(*run, "--force", env=env)
    assert result.returncode == 1 and "nothing is removed" in one_error_line(result.stderr)
    assert (out / "my-notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rows.parquet")]


def test_two_ctrl_c_on_a_parquet_run_end_as_cleanly_as_one(images, tmp_path):
    """Item 12: a local Ray instance writing -o NAME.parquet; Ctrl-C while it runs, a second one 1.4 s later:
    exit 130, no traceback or "Exception ignored", the last line says nothing was kept, and nothing is left
    (no directory claimed, no hidden part directory)."""
    import signal
    import threading
    import time

    from hostile_graphs import endless_loop

    folder, _, _ = images
    # ~0.1 s a batch on any machine (a Loop of 100,000 trips): with 3,000 images the run lasts well past both
    # signals on a fast machine too
    model = endless_loop(tmp_path / "slow.onnx", trips=100_000)
    many = tmp_path / "many"
    for k in range(10):  # 3,000 hard links
        for p in sorted(folder.rglob("*.png")):
            if p.name != "broken.png":
                target = many / p.parent.name / f"{k:02d}-{p.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(p, target)
    out = tmp_path / "out" / "rows.parquet"
    out.parent.mkdir()
    env = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(many), "--model", str(model),
                             "--provider", "cpu", "-o", str(out), "--engine", "ray"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "--engine ray:" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(180), "".join(lines)
        time.sleep(1.0)
        assert proc.poll() is None, "the run ended before the first signal: use more images"
        proc.send_signal(signal.SIGINT)
        time.sleep(1.4)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    reader.join(10)
    err = "".join(lines)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert lines[-1].startswith("toolkit: interrupted after") and "a partial Parquet directory is never kept" in \
        lines[-1], err
    assert list(out.parent.iterdir()) == []


def test_join_failures_are_told_by_type_never_by_wording(tmp_path):
    """Item 9's Ray half: the same classification whatever Ray's messages say (in a child process: this pytest
    process must not import Ray, see the module's docstring)."""
    code = r'''
import json, sys
import ray
from toolkit.predict.ray.cluster import _join_failure, host_port
cases = {
    "auth, any words": ray.exceptions.AuthenticationError("words Ray may change"),
    "connection, no words": ConnectionError(""),
    "runtime error quoting the old words": RuntimeError("Unauthenticated: InvalidAuthToken: no authentication token was found"),
}
out = {k: _join_failure(ray, "10.0.0.5:6379", e) for k, e in cases.items()}
out["ports"] = [host_port(a) for a in ("h:6379", "ray://h:10001", "[::1]:6379", "auto", "h:x")]
print(json.dumps(out))
'''
    base = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}
    said = {}
    for name, env in (("none", base), ("token", base | {"RAY_AUTH_TOKEN": "0" * 32})):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        said[name] = json.loads(done.stdout)
    assert "requires its authentication token and this machine has none" in said["none"]["auth, any words"]
    assert "refused this driver" in said["token"]["auth, any words"]
    for name in said:
        assert "refused this driver" in said[name]["connection, no words"]
        assert said[name]["runtime error quoting the old words"].startswith(
            "cannot join the Ray cluster at 10.0.0.5:6379 (RuntimeError: ")  # the old wording decides nothing
    assert said["none"]["ports"] == [["h", 6379], ["h", 10001], ["::1", 6379], None, None]
