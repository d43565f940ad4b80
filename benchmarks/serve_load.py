"""`toolkit serve` under load, in one run, against the FastAPI baseline (benchmarks/serve_baseline.py).

Prints numbers and goal vs measured (issue 20); it is not a test. Every server is a real process on 127.0.0.1;
the protocol paths are timed with tritonclient (http, grpc), throughput with Debian's `wrk` (C, a Lua script
for the POST body) and the overload with `hey` (Go, per-request CSV: status and latency of each request),
so the load generator is not the Python-bound part. They share the machine's CPUs with the server: the
load average is printed beside the numbers.

    flock /tmp/toolkit-bench.lock python benchmarks/serve_load.py [--model model.onnx] [--quick]

Without --model a seed MLP is made by a tiny real training (`toolkit train --epochs 1 --train-subset 10000`,
then `toolkit export`, ~40 s). Needs the dev extra (serve, tritonclient, fastapi) and `apt-get install wrk hey`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = sorted((ROOT / "samples").glob("*/*.png"))[0]
NAME = "model"
CONNECTIONS = (1, 8, 32, 128)
GOALS = {"json_32_vs_baseline": 2.0, "json_1_vs_baseline": 1.0, "p50_ms": 0.5, "compute_cut_32": 3.0,
         "cost_at_1": 0.05, "rss_flat": 0.05}

# One Lua script for every wrk run: the body from a file; the totals and percentiles (us) as one line.
LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(ctype)s"
local f = io.open("%(body)s", "rb"); wrk.body = f:read("*a"); f:close()
function done(summary, latency, requests)
  io.write(string.format("WRK requests=%%d us=%%d connect=%%d read=%%d write=%%d status=%%d timeout=%%d " ..
    "p50=%%d p99=%%d\n", summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Load:
    """One wrk run: requests/s, latency percentiles (ms), errors (status: answers other than 2xx/3xx)."""

    connections: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: dict
    batch: float = 0.0  # mean rows per model execution (toolkit serve only)
    compute_us: float = 0.0  # model compute time per image (toolkit serve only)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def make_model(folder: Path) -> Path:
    """The seed MLP from a tiny real training and the toolkit's own export."""
    pth = folder / "model.pth"
    cli = [sys.executable, "-m", "toolkit"]
    subprocess.run([*cli, "train", "--epochs", "1", "--train-subset", "10000", "--device", "cpu", "--out", str(pth),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*cli, "export", str(pth), "--formats", "onnx"], check=True, stdout=subprocess.DEVNULL)
    return folder / "model.onnx"


class Process:
    """A server process on 127.0.0.1 (toolkit serve or the baseline), ready when ``probe`` answers."""

    def __init__(self, args: list[str], port: int, log: Path):
        self.port = port
        self.log = log
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, probe, timeout: float = 120.0) -> "Process":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.log}: the server exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if probe(self):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.log}: not ready within {timeout} s")

    def rss_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the process, KiB."""
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines())
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._out.close()


def serve(model: Path, tmp: Path, max_batch: int, grpc: bool = False) -> tuple[Process, int | None]:
    port, gport = free_port(), (free_port() if grpc else 0)
    args = [sys.executable, "-m", "toolkit", "serve", str(model), "--name", NAME, "--port", str(port),
            "--grpc-port", str(gport), "--provider", "cpu", "--max-batch", str(max_batch)]
    proc = Process(args, port, tmp / f"serve-{port}.log")
    return proc.wait(lambda p: urllib.request.urlopen(p.url("/v2/health/ready"), timeout=2).status == 200), gport


def baseline(model: Path, tmp: Path, json_body: Path) -> Process:
    port = free_port()
    proc = Process([sys.executable, str(ROOT / "benchmarks" / "serve_baseline.py"), str(model), str(port)], port,
                   tmp / f"baseline-{port}.log")
    body = json_body.read_bytes()

    def probe(p: Process) -> bool:
        req = urllib.request.Request(p.url(f"/v2/models/{NAME}/infer"), data=body,
                                     headers={"Content-Type": "application/json"})
        return urllib.request.urlopen(req, timeout=2).status == 200

    return proc.wait(probe)


def metrics(proc: Process) -> dict[str, float]:
    """/metrics of one model, summed over labels: name -> value."""
    text = urllib.request.urlopen(proc.url("/metrics"), timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            base = key.partition("{")[0]
            out[base] = out.get(base, 0.0) + float(value)
            if reason := re.search(r'reason="([^"]*)"', key):
                out[f"{base}.{reason.group(1)}"] = float(value)
    return out


def wrk(url: str, lua: Path, connections: int, seconds: float, timeout_s: int = 10) -> Load:
    threads = min(2, connections)
    duration = f"{max(1, round(seconds))}s"  # wrk takes whole seconds
    proc = subprocess.run(["wrk", "-t", str(threads), "-c", str(connections), "-d", duration, "--timeout",
                           f"{timeout_s}s", "-s", str(lua), url], capture_output=True, text=True,
                          timeout=seconds + 60)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK ")), None)
    if line is None:
        raise SystemExit(f"wrk gave no result: {proc.stdout}\n{proc.stderr}")
    values = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
    errors = {k: values[k] for k in ("connect", "read", "write", "status", "timeout") if values[k]}
    return Load(connections, values["requests"], values["us"] / 1e6, values["p50"] / 1e3, values["p99"] / 1e3,
                errors)


def measured(proc: Process, run) -> Load:
    """``run()`` (a wrk Load) with the model's metrics over it: mean batch and compute time per image."""
    before = metrics(proc)
    load = run()
    after = metrics(proc)
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    images = delta["nv_inference_count"]
    load.batch = images / max(delta["nv_inference_exec_count"], 1)
    load.compute_us = delta["toolkit_batch_compute_duration_us_total"] / max(images, 1)
    return load


def lua_script(tmp: Path, body: Path, ctype: str) -> Path:
    path = tmp / f"{body.stem}.lua"
    path.write_text(LUA % {"ctype": ctype, "body": body})
    return path


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


# ---------------------------------------------------------------- the measurements


def raw_session(model: Path, x: np.ndarray, runs: int) -> float:
    """p50 (ms) of session.run at batch 1 in this process, the session opened as the server opens it."""
    from toolkit.machine import cpu_budget
    from toolkit.runtime import create_session

    session = create_session(model, "cpu", cpu_budget(), spin=False)[0]
    feed = {session.get_inputs()[0].name: x}
    for _ in range(200):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return percentiles(times)[0]


def one_client(port: int, gport: int, x: np.ndarray, runs: int) -> tuple[dict, dict]:
    """p50/p99 (ms) of one tritonclient infer after another, per transport; and p50 of a no-op call (server live),
    the transport's own share."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    def http_call(binary: bool):
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        return lambda: client.infer(NAME, [inp], outputs=out).as_numpy("logits")

    def grpc_call():
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{gport}")
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        out = [grpcclient.InferRequestedOutput("logits")]
        return lambda: client.infer(NAME, [inp], outputs=out).as_numpy("logits")

    def timed(call) -> tuple[float, float]:
        for _ in range(max(50, runs // 10)):
            call()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return percentiles(times)

    http, grpc = httpclient.InferenceServerClient(f"127.0.0.1:{port}"), grpcclient.InferenceServerClient(
        f"127.0.0.1:{gport}")
    results = {label: timed(call) for label, call in (("HTTP binary", http_call(True)), ("HTTP JSON", http_call(False)),
                                                      ("gRPC", grpc_call()))}
    floors = {"HTTP binary": timed(http.is_server_live)[0], "gRPC": timed(grpc.is_server_live)[0]}
    floors["HTTP JSON"] = floors["HTTP binary"]
    return results, floors


def overload(proc: Process, body: Path, rate: float, seconds: float, workers: int = 512) -> dict:
    """hey at a target of ``rate`` requests/s (workers x per-worker rate); per-request status and latency."""
    per_worker = max(1, int(np.ceil(rate / workers)))
    before = metrics(proc)
    done = subprocess.run(["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", str(per_worker), "-t", "20",
                           "-m", "POST", "-T", "application/json", "-D", str(body), "-o", "csv",
                           proc.url(f"/v2/models/{NAME}/infer")], capture_output=True, text=True,
                          timeout=seconds + 120)
    after = metrics(proc)
    rows = [line.split(",") for line in done.stdout.splitlines()[1:] if line.count(",") >= 7]
    status = np.array([int(r[6]) for r in rows])
    latency = np.array([float(r[0]) for r in rows])
    ok = latency[status == 200]
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    server_seen = delta["nv_inference_request_success"] + delta["nv_inference_request_failure"]
    return {"target": per_worker * workers, "answered": len(rows), "rate": len(rows) / seconds,
            "ok": int((status == 200).sum()), "r429": int((status == 429).sum()),
            "r504": int((status == 504).sum()), "other": int(((status != 200) & (status != 429)
                                                             & (status != 504)).sum()),
            "p99_ok_ms": float(np.percentile(ok, 99) * 1e3) if len(ok) else float("nan"),
            "p50_ok_ms": float(np.percentile(ok, 50) * 1e3) if len(ok) else float("nan"),
            "server_timeouts": int(delta["toolkit_rejected_requests_total.timeout"]),
            "server_seen": int(server_seen), "lost_client_side": int(server_seen) - len(rows)}


async def _client(port: int, request: bytes, stop_at: float, counts: dict) -> None:
    """One keep-alive connection sending ``request`` after each answer, until ``stop_at``. Each request ends as a
    status, 'refused' (no connection: not accepted) or 'cut' (written, then the connection closed unanswered)."""
    import asyncio

    reader = writer = None
    while time.monotonic() < stop_at:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                counts["refused"] = counts.get("refused", 0) + 1
                await asyncio.sleep(0.01)
                continue
        try:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            await _read_body(reader, head)
        except (asyncio.IncompleteReadError, OSError):
            counts["cut"] = counts.get("cut", 0) + 1
            writer.close()
            writer = None
            continue
        status = int(head.split(b" ", 2)[1])
        counts[status] = counts.get(status, 0) + 1
        if re.search(rb"(?i)\r\nconnection: *close", head):
            writer.close()
            writer = None


async def _read_body(reader, head: bytes) -> None:
    """Consume one response body: Content-Length or chunked (uvicorn's framing when no length is given)."""
    if length := re.search(rb"(?i)\r\ncontent-length: *(\d+)", head):
        await reader.readexactly(int(length.group(1)))
        return
    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
        await reader.readexactly(size + 2)
    await reader.readuntil(b"\r\n")


def sigterm(model: Path, tmp: Path, body: bytes, seconds: float, connections: int = 32) -> dict:
    """``connections`` keep-alive clients (asyncio: every request's fate is known, which wrk does not tell);
    SIGTERM after ``seconds``; the clients go on until a second after the server exited."""
    import asyncio

    proc, _ = serve(model, tmp, 32)
    request = (f"POST /v2/models/{NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    counts: dict = {}
    result: dict = {"counts": counts}

    async def clients():
        stop_at = time.monotonic() + 3600
        tasks = [asyncio.ensure_future(_client(proc.port, request, stop_at, counts)) for _ in range(connections)]
        await asyncio.sleep(seconds)
        before = dict(counts)
        sent = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        while proc.proc.poll() is None:
            await asyncio.sleep(0.01)
        result["exit_s"] = time.monotonic() - sent
        result["before"] = before
        await asyncio.sleep(1.0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(clients())
    result["code"] = proc.stop()
    lines = proc.log.read_text().strip().splitlines()
    result["log"] = lines[-1] if lines else ""
    return result


def rss_run(proc: Process, lua: Path, total: int, chunk_s: float) -> dict:
    """32 connections of JSON requests until ``total`` were answered; the server's RSS sampled every 0.5 s."""
    samples: list[tuple[int, int]] = []  # (answered so far, RSS KiB)
    start_rss = proc.rss_kib()[0]
    base = metrics(proc)["nv_inference_request_success"]
    answered = errors = 0
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            samples.append((answered, proc.rss_kib()[0]))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        while answered < total:
            load = wrk(proc.url(f"/v2/models/{NAME}/infer"), lua, 32, chunk_s)
            answered = int(metrics(proc)["nv_inference_request_success"] - base)
            errors += sum(load.errors.values())
    finally:
        stop.set()
        sampler.join()
    warm = [rss for n, rss in samples if n >= total * 0.1] or [s[1] for s in samples]
    return {"answered": answered, "seconds": time.monotonic() - started, "start": start_rss, "warm": warm[0],
            "peak": max(warm), "final": proc.rss_kib()[0], "hwm": proc.rss_kib()[1], "errors": errors}


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Plan:
    """How long each part runs: seconds per wrk/hey run, requests of the RSS run, in-process timed calls and
    rounds at 1 connection in the sweeps."""

    seconds: float
    rss_total: int
    runs: int
    rounds: int


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an ONNX model (default: the seed MLP, trained tiny here)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke run of the benchmark itself)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run (default 10, --quick 2)")
    parser.add_argument("--rss-requests", type=int, help="requests of the RSS run (default 1,000,000, --quick 20,000)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its servers (finally)
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            raise SystemExit(f"`{tool}` is not installed: apt-get install -y wrk hey")
    plan = Plan(seconds=args.seconds or (2.0 if args.quick else 10.0),
                rss_total=args.rss_requests or (20_000 if args.quick else 1_000_000),
                runs=300 if args.quick else 3000, rounds=1 if args.quick else 7)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        return run_all(args.model or make_model(tmp), tmp, plan)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def machine() -> str:
    from toolkit.machine import cpu_budget

    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs (budget {cpu_budget()}), Python {platform.python_version()}"


def row(load: Load, serve_columns: bool = True) -> str:
    text = f"{load.rate:9,.0f} {load.p50_ms:8.2f} {load.p99_ms:8.2f}"
    if serve_columns:
        text += f" {load.batch:6.1f} {load.compute_us:8.1f}"
    return text + (f"  errors {load.errors}" if load.errors else "")


def sweep(servers: dict, route: str, lua: Path, connections, seconds: float, rounds_at_1: int) -> dict:
    """Every server at each connection count, one after another (interleaved, so that a change in the machine's
    load hits them alike). At 1 connection, where one stall of the process moves the rate most, ``rounds_at_1``
    shorter rounds (together twice ``seconds``), the run of median rate kept."""
    out: dict = {name: {} for name in servers}
    for c in connections:
        at_c = {name: (proc, is_serve) for name, (proc, is_serve, only) in servers.items() if only is None or c in only}
        runs: dict = {name: [] for name in at_c}
        rounds = rounds_at_1 if c == 1 else 1
        length = max(1.0, 2 * seconds / rounds) if rounds > 1 else seconds
        for _ in range(rounds):
            for name, (proc, is_serve) in at_c.items():
                go = lambda proc=proc, c=c: wrk(proc.url(route), lua, c, length)  # noqa: E731
                runs[name].append(measured(proc, go) if is_serve else go())
        for name, loads in runs.items():
            out[name][c] = sorted(loads, key=lambda load: load.rate)[len(loads) // 2]
    return out


def run_all(model, tmp, plan: Plan) -> int:
    from toolkit.predict import prepare
    from toolkit.runtime import Predictor

    spec = Predictor.open(model, "cpu").contract.preprocess
    x = spec.normalize(prepare(SAMPLE.read_bytes(), spec)[None])  # one real digit, as the model sees it
    import orjson

    json_body = tmp / "infer.json"
    json_body.write_bytes(orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                                    "data": x.ravel().tolist()}]}))
    png_body = tmp / "digit.png"
    png_body.write_bytes(SAMPLE.read_bytes())
    json_lua = lua_script(tmp, json_body, "application/json")
    png_lua = lua_script(tmp, png_body, "application/octet-stream")
    seconds, runs = plan.seconds, plan.runs
    print(f"# toolkit serve under load — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}; model {model.name} ({model.stat().st_size / 1e6:.2f} MB); wrk/hey runs of "
          f"{seconds:g} s")
    print(f"command: {' '.join(['python', Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}")
    print(f"load average at start: {load_average()}  (1, 5, 15 min; {os.cpu_count()} CPUs)\n")
    goals: list[tuple[str, str, str, bool]] = []
    raw = raw_session(model, x, runs)
    print(f"raw session.run, batch 1, in process: p50 {raw:.3f} ms")

    on, gport = serve(model, tmp, 32, grpc=True)
    off = peer = None
    try:
        off, _ = serve(model, tmp, 1, grpc=True)  # gRPC too, as `on`: the two differ in --max-batch alone
        peer = baseline(model, tmp, json_body)
        e2e, floor = one_client(on.port, gport, x, runs)
        print("\nend to end, 1 client (tritonclient, one call after another), batching on:")
        for label, (p50, p99) in e2e.items():
            print(f"  {label:12s} infer p50 {p50:.3f} ms  p99 {p99:.3f} ms;  a no-op call (server live) p50 "
                  f"{floor[label]:.3f} ms")
        for label in ("gRPC", "HTTP binary"):
            goals.append((f"e2e p50 at 1 client, {label}", f"{e2e[label][0]:.3f} ms", f"<= {GOALS['p50_ms']} ms",
                          e2e[label][0] <= GOALS["p50_ms"]))
        print(f"(load average {load_average()})")
        json = sweep({"on": (on, True, None), "off": (off, True, None), "peer": (peer, False, (1, 32))},
                     f"/v2/models/{NAME}/infer", json_lua, CONNECTIONS, seconds, plan.rounds)
        print(f"(load average {load_average()})")
        image = sweep({"on": (on, True, None), "off": (off, True, None)}, f"/v2/models/{NAME}/classify", png_lua,
                      (1, 32), seconds, plan.rounds)
        print(f"(load average {load_average()})")
        off.stop()
        peer.stop()
        capacity = max(load.rate for load in json["on"].values())
        over = overload(on, json_body, 4 * capacity, seconds)
        print(f"(load average {load_average()})")
    finally:
        for proc in (on, off, peer):
            if proc is not None:
                proc.stop()

    head = "  connections | batching on: req/s   p50 ms   p99 ms  batch  compute/image us | off: req/s   p50 ms   p99 ms"
    print("\nHTTP v2 JSON infer, batch-1 requests (wrk, keep-alive; --max-batch 32 vs --max-batch 1):")
    print(head + "  batch  compute/image us | FastAPI baseline: req/s   p50 ms   p99 ms")
    for c in CONNECTIONS:
        line = f"  {c:11d} | {row(json['on'][c]):>50s} | {row(json['off'][c]):>41s}"
        if c in json["peer"]:
            line += f" | {row(json['peer'][c], False):>35s}"
        print(line)
    print("\nimage route POST /v2/models/NAME/classify, one PNG per request (wrk):")
    print(head + "  batch  compute/image us")
    for c in (1, 32):
        print(f"  {c:11d} | {row(image['on'][c]):>50s} | {row(image['off'][c]):>41s}")
    print("(compute/image: toolkit_batch_compute_duration_us / nv_inference_count over the run, from /metrics)")

    on_c, off_c, peer_c = json["on"], json["off"], json["peer"]
    for c, factor in ((32, GOALS["json_32_vs_baseline"]), (1, GOALS["json_1_vs_baseline"])):
        ratio = on_c[c].rate / peer_c[c].rate
        goals.append((f"JSON req/s at {c} connection(s) vs the FastAPI baseline",
                      f"{on_c[c].rate:,.0f} vs {peer_c[c].rate:,.0f} = {ratio:.2f}x", f">= {factor:g}x",
                      ratio >= factor))
    for label, data in (("JSON", json), ("image route", image)):
        cut = data["off"][32].compute_us / data["on"][32].compute_us
        goals.append((f"batching: compute/image cut at 32 connections, {label}",
                      f"{data['off'][32].compute_us:.1f} -> {data['on'][32].compute_us:.1f} us = {cut:.1f}x",
                      f">= {GOALS['compute_cut_32']:g}x", cut >= GOALS["compute_cut_32"]))
    cost = on_c[1].compute_us / off_c[1].compute_us - 1
    goals.append(("batching: compute/image cost at 1 connection, JSON", f"{cost:+.1%}",
                  f"<= +{GOALS['cost_at_1']:.0%}", cost <= GOALS["cost_at_1"]))
    slower = 1 - on_c[1].rate / off_c[1].rate
    goals.append(("batching: req/s lost at 1 connection, JSON", f"{slower:+.1%} ({on_c[1].rate:,.0f} vs "
                  f"{off_c[1].rate:,.0f})", f"<= {GOALS['cost_at_1']:.0%}", slower <= GOALS["cost_at_1"]))

    print(f"\noverload: hey, 512 workers paced to a total of {over['target']:,} req/s = 4x capacity "
          f"({capacity:,.0f} req/s, the best batching-on JSON rate above):")
    print(f"  hey got {over['answered']:,} answers in {seconds:g} s ({over['rate']:,.0f}/s; the rest of its pace it "
          f"could not send, sharing the CPUs): 200 {over['ok']:,}, 429 {over['r429']:,} "
          f"({over['r429'] / max(over['answered'], 1):.0%}), 504 {over['r504']}, other {over['other']}")
    print(f"  accepted (200) p50 {over['p50_ok_ms']:.1f} ms, p99 {over['p99_ok_ms']:.1f} ms (Little's law for 512 "
          f"requests outstanding at {over['rate']:,.0f}/s: {512 / max(over['rate'], 1) * 1e3:.0f} ms); server-side "
          f"timeouts {over['server_timeouts']}; requests the server answered that hey did not report "
          f"{over['lost_client_side']}")
    goals.append(("4x capacity: nothing timed out", f"504 {over['r504']}, server timeouts {over['server_timeouts']}",
                  "0", over["r504"] == 0 and over["server_timeouts"] == 0))

    term = sigterm(model, tmp, json_body.read_bytes(), max(seconds, 2.0))
    counts = term["counts"]
    other = {k: v for k, v in counts.items() if k not in (200, 503, "refused", "cut")}
    # A request cut at the close was never read by the app (uvicorn lets a request whose headers it parsed finish):
    # the server's own count of the inference requests it answered must equal the answers the clients received.
    server = re.search(r"\((\d+) inference requests since start\)", term["log"])
    client = sum(v for k, v in counts.items() if isinstance(k, int))
    lost = None if server is None else int(server.group(1)) - client
    print(f"\nSIGTERM under 32 connections ({max(seconds, 2.0):g} s of load first): exit code {term['code']} "
          f"{term['exit_s']:.2f} s after the signal; answers 200 {counts.get(200, 0):,} "
          f"({counts.get(200, 0) - term['before'].get(200, 0)} after the signal), 503 (refused, draining) "
          f"{counts.get(503, 0):,}, other {other or 'none'}; connections refused {counts.get('refused', 0):,}; "
          f"written on a kept-alive connection and cut unread at the close {counts.get('cut', 0)}")
    print(f"  answers received {client:,}; the server's last line: {term['log']}")
    goals.append(("SIGTERM: accepted requests lost (server's answered - clients' received)",
                  f"{lost} (exit {term['code']})", "0", lost == 0 and term["code"] == 0 and not other))

    on, _ = serve(model, tmp, 32)
    try:
        rss = rss_run(on, json_lua, plan.rss_total, max(seconds * 3, 10.0))
    finally:
        on.stop()
    drift = rss["peak"] / rss["warm"] - 1
    print(f"\nRSS over {rss['answered']:,} JSON requests at 32 connections ({rss['seconds']:.0f} s, "
          f"{rss['answered'] / rss['seconds']:,.0f}/s): at ready {rss['start'] / 1024:.1f} MiB, after 10% "
          f"{rss['warm'] / 1024:.1f} MiB, peak after that {rss['peak'] / 1024:.1f} MiB, final "
          f"{rss['final'] / 1024:.1f} MiB, high-water mark {rss['hwm'] / 1024:.1f} MiB; wrk errors {rss['errors']}")
    goals.append((f"RSS flat over {rss['answered']:,} requests", f"{drift:+.1%} (peak vs after 10%)",
                  f"within +-{GOALS['rss_flat']:.0%}", abs(drift) <= GOALS["rss_flat"]))

    print(f"\nload average at the end: {load_average()}\n\n| goal | measured | target | met |\n|---|---|---|---|")
    for name, value, target, met in goals:
        print(f"| {name} | {value} | {target} | {'yes' if met else '**no**'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
