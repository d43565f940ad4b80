"""A real `toolkit serve` process on 127.0.0.1 for the serve tests: free ports, wait for ready, stop by signal."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient (dev extra) is not installed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``toolkit serve ARGS`` with its own HTTP and gRPC ports; ``url``/``grpc`` are host:port."""

    def __init__(self, args: list[str], tmp: Path, grpc: bool = True, scheme: str = "http"):
        self.port, self.grpc_port = free_port(), (free_port() if grpc else 0)
        self.url = f"127.0.0.1:{self.port}"
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.scheme = scheme
        self.log = tmp / f"serve-{self.port}.log"
        self.args = [sys.executable, "-m", "toolkit", "serve", *map(str, args), "--port", str(self.port),
                     "--grpc-port", str(self.grpc_port), "--provider", "cpu"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Server":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"toolkit serve exited {self.proc.returncode}: {self.output()}")
            if self.get("/v2/health/ready")[0] == 200:
                return self
            time.sleep(0.1)
        raise AssertionError(f"toolkit serve not ready within {timeout} s: {self.output()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 10.0) -> tuple[int, bytes, dict]:
        context = None
        if self.scheme == "https":
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(f"{self.scheme}://{self.url}{path}", data=body, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return 0, b"", {}

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: bytes, **kw):
        return self.request("POST", path, body, **kw)

    def metrics(self, headers: dict | None = None) -> dict[str, float]:
        """Every sample of /metrics: 'name{labels}' -> value."""
        status, body, _ = self.get("/metrics", headers=headers)
        assert status == 200, body
        samples = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                samples[key] = float(value)
        return samples

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def sample(metrics: dict[str, float], name: str, **labels) -> float:
    """The value of ``name`` whose labels include ``labels`` (summed over the other labels)."""
    total, found = 0.0, False
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p) if rest else {}
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total, found = total + value, True
    assert found, f"no sample {name} {labels} in /metrics"
    return total
