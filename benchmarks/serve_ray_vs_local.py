"""The cost of the Ray Serve hop: single-box `toolkit serve` against `toolkit serve --engine ray`, end to end.

Prints numbers; it is not a test. Both servers run in fresh processes, side by side in the same run, with
the same model, one ONNX Runtime thread per session (--threads 1) and one Ray Serve replica (a local Ray
instance), so the difference is the Serve hop (its proxy, the router, the replica's ASGI wrapper) and
nothing else. The same clients (threads in this process, one persistent HTTP/1.1 connection each, a 30 s
timeout per request) send binary-tensor infer requests of one row (what tritonclient sends) for --seconds
at 1 and at 32 clients, after a warm-up. The measurements alternate between the two servers for --rounds
rounds, so a machine whose other load drifts (a shared one) weighs on both alike; the idle server costs
the measured one little (Ray's idle processes: a few % of a CPU). Per server and client count: p50/p99 of
each request's wall time over every round, and the requests per second (median of the rounds).

    flock /tmp/toolkit-bench.lock python benchmarks/serve_ray_vs_local.py --onnx model.onnx [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], port: int, log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", *args, "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"toolkit serve {' '.join(args)} exited {proc.returncode}: {log.read_text()[-2000:]}")
        if "ready" in log.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"not ready within 300 s: {log.read_text()[-2000:]}")


def request_body(model: str) -> tuple[str, bytes, dict]:
    from toolkit.runtime import Predictor

    shape = [1, *Predictor.open(model, "cpu").contract.preprocess.input_shape]
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    name = Path(model).stem
    return (f"/v2/models/{name}/infer", head + x.tobytes(),
            {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})


def load(port: int, clients: int, seconds: float, request) -> dict:
    path, body, headers = request
    times: list[float] = []
    failures = [0]
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not stop.is_set():
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            if ok:
                times.append(time.perf_counter() - t)
            else:
                failures[0] += 1
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    ms = np.array(times) * 1e3
    return {"clients": clients, "requests": len(times), "failed": failures[0], "rps": len(times) / seconds,
            "ms": ms}


def summary(runs: list[dict]) -> dict:
    ms = np.concatenate([r["ms"] for r in runs])
    return {"clients": runs[0]["clients"], "requests": int(sum(r["requests"] for r in runs)),
            "failed": int(sum(r["failed"] for r in runs)), "rps": float(np.median([r["rps"] for r in runs])),
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, help="the model both servers serve")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per client count")
    parser.add_argument("--clients", default="1,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logs", default="/tmp", help="folder for the servers' logs")
    args = parser.parse_args()
    request = request_body(args.onnx)
    counts = [int(c) for c in args.clients.split(",")]
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    engines = {"single box": [args.onnx, "--threads", "1", "--grpc-port", "0", "--provider", "cpu"],
               "Ray Serve": [args.onnx, "--threads", "1", "--engine", "ray", "--replicas", "1", "--provider", "cpu"]}
    procs, ports = {}, {}
    try:
        for engine, serve_args in engines.items():
            ports[engine] = free_port()
            started = time.perf_counter()
            procs[engine] = start(serve_args, ports[engine], Path(args.logs) / f"serve-{ports[engine]}.log")
            print(f"{engine}: ready after {time.perf_counter() - started:.1f} s")
            load(ports[engine], 4, 3.0, request)  # warm-up: connections, the batcher, Serve's router
        runs = {(e, n): [] for e in engines for n in counts}
        for _ in range(args.rounds):
            for n in counts:
                for engine in engines:
                    runs[engine, n].append(load(ports[engine], n, args.seconds, request))
    finally:
        for engine, proc in procs.items():
            proc.send_signal(signal.SIGTERM)
            print(f"{engine}: exit {proc.wait(120)} after SIGTERM")
    results = {e: [summary(runs[e, n]) for n in counts] for e in engines}
    for engine in engines:
        print(f"{engine}:")
        for r in results[engine]:
            print(f"  {r['clients']:>2} client(s): p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                  f"{r['rps']:.0f} requests/s ({r['requests']} answered, {r['failed']} failed)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for i, n in enumerate(counts):
        local, ray = results["single box"][i], results["Ray Serve"][i]
        print(f"Serve hop at {n} client(s): p50 +{ray['p50_ms'] - local['p50_ms']:.2f} ms, "
              f"p99 +{ray['p99_ms'] - local['p99_ms']:.2f} ms, throughput {ray['rps'] / local['rps']:.0%} of "
              "the single box")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
