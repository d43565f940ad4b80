"""`toolkit predict --engine ray` on a real Ray cluster of local processes, through the real CLI.

One two-node cluster (head + a second node, one CPU each, token authentication on) serves the module;
its nodes are stopped by ray.cluster_utils.Cluster.shutdown, and the suite checks that no raylet of
its own is left. S3 is moto's server on 127.0.0.1. Kept few and small: Ray start-up costs seconds.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_runtime_contracts import linear_onnx

pytestmark = [pytest.mark.slow,
              # Found, not imported: Ray reads its authentication mode when imported, and the cluster fixture sets it.
              pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the cluster extra is not installed"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds Ray's processes through /proc")]

IMAGES = 300
TASK_TITLE = "ray::MapBatches(predict_block)"


def toolkit(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, **kw)


def without_ray_auth(env: dict) -> dict:
    return {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}


def processes(word: str) -> dict[int, str]:
    """pid -> command line of this machine's processes whose command line contains ``word``."""
    found = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if word in cmd:
                found[int(d.name)] = cmd
    return found


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.fixture(scope="module")
def images(tmp_path_factory, mnist):
    """300 MNIST test digits as PNGs in labelled folders, one broken PNG, one text file, a linear ONNX model."""
    root = tmp_path_factory.mktemp("ray")
    folder = root / "imgs"
    for i in range(IMAGES):
        label = int(mnist.test_labels[i])
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(mnist.test_images[i]).save(folder / str(label) / f"{i:05d}.png")
    (folder / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really")
    (folder / "notes.txt").write_text("not an image")
    linear_onnx(root / "m.onnx")
    local = root / "local.csv"
    result = toolkit("predict", folder, "--model", root / "m.onnx", "--provider", "cpu", "-o", local)
    assert result.returncode == 3, result.stderr
    return folder, root / "m.onnx", local


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node on this machine, one CPU each, with Ray's token authentication."""
    # Ray loads its token once per process: had a test before this one used Ray in the pytest process, the
    # cluster below would start with this token and connect with that one ("InvalidAuthToken").
    assert "ray" not in sys.modules, "a test before tests/test_ray.py imported ray in the pytest process"
    token = secrets.token_hex(16)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AWS_ACCESS_KEY_ID",
                                            "AWS_SECRET_ACCESS_KEY", "AWS_EC2_METADATA_DISABLED",
                                            "RAY_USAGE_STATS_ENABLED")}
    # The nodes' workers read S3 with these (moto accepts any key); never a metadata server on the network.
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_EC2_METADATA_DISABLED="true", RAY_USAGE_STATS_ENABLED="0")
    before = set(processes("raylet"))
    from ray.cluster_utils import Cluster  # after the environment is set: Ray reads it when imported

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        # The second node declares a GPU: this machine has none, so CUDA fails where a task runs, which is
        # where the provider must be checked (test_cuda_is_checked_where_the_model_runs).
        nodes.add_node(num_cpus=1, num_gpus=1)
        yield nodes.address, token
    finally:
        nodes.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    deadline = time.monotonic() + 30
    while set(processes("raylet")) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(processes("raylet")) - before, "a raylet of the test cluster was left running"


def test_two_nodes_give_the_local_engines_rows(cluster, images, tmp_path):
    """Head + second node, joined via the CLI with only the token given (the driver turns token mode on)."""
    address, token = cluster
    folder, model, local = images
    out = tmp_path / "ray.csv"
    env = without_ray_auth(os.environ) | {"RAY_AUTH_TOKEN": token}
    result = toolkit("predict", folder, "--model", model, "--provider", "cpu", "-o", out, "--engine", "ray",
                     "--address", address, env=env)
    assert result.returncode == 3, result.stderr  # the broken PNG, listed with its reason
    assert f"skipped {folder}/3/broken.png: truncated file" in result.stderr
    assert "2 CPU(s)" in result.stderr  # both nodes took part in the cluster it joined
    assert "Traceback" not in result.stderr
    assert out.read_bytes() == local.read_bytes()
    assert len(rows(out)) == IMAGES + 1
    png = tmp_path / "ray.confusion.png"
    assert png.read_bytes() == local.with_name("local.confusion.png").read_bytes()


def test_a_driver_without_the_token_is_refused(cluster, images, tmp_path):
    address, _ = cluster
    folder, model, _ = images
    no_token = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}  # no ~/.ray/auth_token either
    result = toolkit("predict", folder, "--model", model, "--provider", "cpu", "--engine", "ray",
                     "--address", address, env=no_token)
    assert result.returncode == 5
    assert result.stderr.count("\n") == 1 and "requires its authentication token" in result.stderr, result.stderr
    # A wrong token: Ray's client retries, then gives up (its retry budget shortened for the test).
    wrong = no_token | {"RAY_AUTH_TOKEN": "0" * 32, "RAY_gcs_server_port_wait_time_s": "2"}
    result = toolkit("predict", folder, "--model", model, "--provider", "cpu", "--engine", "ray",
                     "--address", address, env=wrong)
    assert result.returncode == 5
    assert result.stderr.count("\n") == 1 and "refused this driver" in result.stderr, result.stderr


def test_cuda_is_checked_where_the_model_runs(cluster, images, tmp_path):
    """The driver (a CPU-only head) never refuses --provider cuda itself: the cluster's GPU node does, where the
    model runs, in one line; a cluster without any GPU is refused before any work, in one line."""
    address, token = cluster
    folder, model, _ = images
    out = tmp_path / "cuda.csv"
    result = toolkit("predict", folder, "--model", model, "--provider", "cuda", "--engine", "ray", "--address",
                     address, "-o", out, env=os.environ | {"RAY_AUTH_TOKEN": token})
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "--provider cuda" in result.stderr.splitlines()[-1] and "CUDA" in result.stderr.splitlines()[-1]
    assert "has no GPU" not in result.stderr  # the driver did not decide it: a task on the GPU node did
    assert not out.exists()
    local_instance = toolkit("predict", folder, "--model", model, "--provider", "cuda", "--engine", "ray",
                             env=without_ray_auth(os.environ))  # a local instance on this GPU-less machine
    assert local_instance.returncode == 5, local_instance.stderr
    assert local_instance.stderr.strip().splitlines()[-1].endswith(
        "--provider cuda: the Ray cluster has no GPU (no node offers a GPU resource)"), local_instance.stderr


def test_without_ray_exit_5_names_the_install_command(images):
    folder, model, _ = images
    code = "import sys; sys.modules['ray'] = None; from toolkit.cli import main; main()"
    result = subprocess.run([sys.executable, "-c", code, "predict", str(folder), "--model", str(model),
                             "--engine", "ray"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 5
    assert "pip install 'toolkit[cluster]'" in result.stderr and "Traceback" not in result.stderr
    result = toolkit("predict", folder, "--model", model, "--address", "127.0.0.1:1")
    assert result.returncode == 2 and "--engine ray" in result.stderr


def test_s3_prefix_on_a_local_s3_server(cluster, images, tmp_path):
    """moto's S3 server on 127.0.0.1: the same files read through pyarrow.fs give the same rows (JSONL)."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    address, token = cluster
    folder, model, _ = images
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="digits")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                s3.put_object(Bucket="digits", Key=f"imgs/{path.relative_to(folder).as_posix()}",
                              Body=path.read_bytes())
        local = tmp_path / "local.jsonl"
        assert toolkit("predict", folder, "--model", model, "--provider", "cpu", "-o", local).returncode == 3
        out = tmp_path / "s3.jsonl"
        uri = f"s3://digits/imgs?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        result = toolkit("predict", uri, "--model", model, "--provider", "cpu", "-o", out, "--engine", "ray",
                         "--address", address, env=os.environ | {"RAY_AUTH_TOKEN": token})
    finally:
        server.stop()
    assert result.returncode == 3, result.stderr
    assert "skipped s3://digits/imgs/3/broken.png: truncated file" in result.stderr
    want = [json.loads(line) for line in local.read_text().splitlines()]
    got = [json.loads(line) for line in out.read_text().splitlines()]
    for row in want:
        row["path"] = "s3://digits/imgs/" + Path(row["path"]).relative_to(folder).as_posix()
    assert got == want and len(got) == IMAGES


def test_parquet_directory_holds_the_local_engines_rows(cluster, images, tmp_path):
    """-o NAME.parquet: Ray Data writes the CSV's rows (typed) into a directory; no clobber; local engine refused."""
    pq = pytest.importorskip("pyarrow.parquet")
    address, token = cluster
    folder, model, _ = images
    mixed = tmp_path / "imgs"
    shutil.copytree(folder, mixed)  # the 300 digits and the broken PNG
    (mixed / "7").mkdir(exist_ok=True)
    Image.new("L", (28, 28), 255).save(mixed / "7" / "blank.png")  # a labelled blank: no label, blank true
    (mixed / "unlabelled").mkdir()
    Image.open(sorted(folder.rglob("*.png"))[0]).save(mixed / "unlabelled" / "=sum.png")  # no folder label
    local = tmp_path / "local.csv"
    assert toolkit("predict", mixed, "--model", model, "--provider", "cpu", "-o", local).returncode == 3
    out = tmp_path / "rows.parquet"
    env = os.environ | {"RAY_AUTH_TOKEN": token}
    result = toolkit("predict", mixed, "--model", model, "--provider", "cpu", "-o", out, "--engine", "ray",
                     "--address", address, env=env)
    assert result.returncode == 3, result.stderr
    assert f"skipped {mixed}/3/broken.png: truncated file" in result.stderr and "Traceback" not in result.stderr
    assert out.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".rows.parquet")]
    table = pq.read_table(out)
    header, *want = rows(local)
    assert table.column_names == header
    text = {"confidence", *(c for c in header if c.endswith("_prob"))}

    def as_csv(column, value):
        if value is None:
            return ""
        if column == "blank":
            return "true" if value else "false"
        return f"{value:.6f}" if column in text else value

    got = [[as_csv(c, v) for c, v in zip(header, row.values())] for row in table.to_pylist()]
    assert sorted(got) == sorted(want) and len(want) == IMAGES + 2  # + the blank and the unlabelled; not broken.png
    assert any(r[header.index("blank")] == "true" for r in got)
    assert out.with_name("rows.confusion.png").read_bytes() == local.with_name("local.confusion.png").read_bytes()
    before = sorted(p.name for p in out.iterdir())
    again = toolkit("predict", mixed, "--model", model, "-o", out, "--engine", "ray", "--address", address, env=env)
    assert again.returncode == 1 and "already exists; pass --force" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    refused = toolkit("predict", mixed, "--model", model, "-o", tmp_path / "x.parquet")
    assert refused.returncode == 2 and "--engine ray only" in refused.stderr


@pytest.fixture(scope="module")
def many(images, tmp_path_factory):
    """12,000 PNGs (the 300 digits, forty times over, hard links) and the local engine's CSV for them."""
    folder, model, _ = images
    root = tmp_path_factory.mktemp("ray-many") / "imgs"
    sources = sorted(p for p in folder.rglob("*.png") if p.name != "broken.png")
    for k in range(40):
        for p in sources:
            target = root / p.parent.name / f"{k:02d}-{p.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, target)
    local = root.parent / "local.csv"
    assert toolkit("predict", root, "--model", model, "--provider", "cpu", "-o", local).returncode == 0
    return root, model, local


def wait_for_rows(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the run's temporary output holds rows past its header (the run is then under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        parts = list(out.parent.glob(f".{out.name}*"))
        if parts and parts[0].stat().st_size > 2000:
            return
        time.sleep(0.02)
    raise AssertionError(f"no rows appeared (exit {proc.poll()}): {proc.stderr.read() if proc.stderr else ''}")


def test_killed_workers_every_file_once(cluster, many, tmp_path):
    """SIGKILL to two workers running block tasks mid-run: Ray retries their blocks, the driver drops replays."""
    address, token = cluster
    folder, model, local = many
    out = tmp_path / "ray.csv"
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(folder), "--model", str(model),
                             "--provider", "cpu", "-o", str(out), "--engine", "ray", "--address", address],
                            stderr=subprocess.PIPE, text=True, env=os.environ | {"RAY_AUTH_TOKEN": token})
    try:
        wait_for_rows(out, proc)  # rows are flowing: the kills land mid-run
        killed: list[int] = []
        while len(killed) < 2:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None and not (
                    found := [pid for pid, cmd in processes(TASK_TITLE).items()
                              if cmd.startswith(TASK_TITLE) and pid not in killed]):
                time.sleep(0.01)
            assert proc.poll() is None, "the run ended before a worker could be killed: use more images"
            assert found, f"no process titled {TASK_TITLE}"
            os.kill(found[0], signal.SIGKILL)
            killed.append(found[0])
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.read_bytes() == local.read_bytes()  # every file once, in input order, the same values


def test_ctrl_c_keeps_rows_and_stops_the_local_instance(many, tmp_path):
    """No --address: a local Ray instance; SIGINT mid-run ends with exit 130, whole rows kept, no Ray left.

    The model costs ~0.1 s a batch whatever the machine (a Loop of 100,000 trips), so the run cannot have ended
    by the time the signal follows its first rows, on a fast machine too."""
    from hostile_graphs import endless_loop

    folder, _, _ = many
    model = endless_loop(tmp_path / "slow.onnx", trips=100_000)
    local = tmp_path / "local.csv"
    assert toolkit("predict", folder, "--model", model, "--provider", "cpu", "-o", local).returncode == 0
    out = tmp_path / "ray.csv"
    before = set(processes("raylet"))
    env = without_ray_auth(os.environ) | {"HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "predict", str(folder), "--model", str(model),
                             "--provider", "cpu", "-o", str(out), "--engine", "ray"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_rows(out, proc, timeout=180)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted;" in err and f"complete row(s) kept in {out}" in err and "Traceback" not in err
    kept, want = rows(out), rows(local)
    assert 1 < len(kept) < len(want) and kept == want[:len(kept)]
    deadline = time.monotonic() + 30
    while set(processes("raylet")) - before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(processes("raylet")) - before
