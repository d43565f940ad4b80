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
        if not self._log.closed:
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


ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "samples").glob("*/*.png"))[::7]  # 15 digits of 10 classes


def digits(n: int, seed: int = 0):
    """``n`` sample digits as the model's uint8 pixels (N, 28, 28), as `toolkit predict` prepares them."""
    import numpy as np

    from toolkit.predict import prepare

    return np.stack([prepare(p) for p in SAMPLES[seed:seed + n]])


def linear_model(path: Path, seed: int = 0, rows: int | None = None, depth: int = 0) -> Path:
    """A real ONNX file in a millisecond, with the toolkit's digit contract: logits = flatten(x) @ W + b, W and b
    drawn from ``seed`` (two seeds: two models whose answers differ). ``rows``: the graph reshapes to exactly that
    many rows, so it loads and runs at batch ``rows`` and fails at any other batch size. ``depth``: that many
    1024-wide tanh layers first (one shared weight), ~2 MFLOP per row each: a model slow enough to keep a queue
    full or a request in flight."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    width = 1024 if depth else 784
    weights = [numpy_helper.from_array(rng.normal(0, width ** -0.5, (width, 10)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.normal(0, 0.1, (10,)).astype(np.float32), "b"),
               numpy_helper.from_array(np.array([rows or -1, 784], np.int64), "flat_shape")]
    nodes = [helper.make_node("Reshape", ["input", "flat_shape"], ["flat"])]
    last = "flat"
    if depth:
        weights += [numpy_helper.from_array(rng.normal(0, 784 ** -0.5, (784, width)).astype(np.float32), "w_in"),
                    numpy_helper.from_array(rng.normal(0, width ** -0.5, (width, width)).astype(np.float32), "w_h")]
        nodes += [helper.make_node("MatMul", ["flat", "w_in"], ["h0_"]), helper.make_node("Tanh", ["h0_"], ["h0"])]
        for i in range(depth):
            nodes += [helper.make_node("MatMul", [f"h{i}", "w_h"], [f"h{i + 1}_"]),
                      helper.make_node("Tanh", [f"h{i + 1}_"], [f"h{i + 1}"])]
        last = f"h{depth}"
    nodes += [helper.make_node("MatMul", [last, "w"], ["product"]),
              helper.make_node("Add", ["product", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    return save_digit_model(graph, path)


def save_digit_model(graph, path: Path) -> Path:
    """``graph`` (input 'input' [batch, 1, 28, 28] FP32, output 'logits' [batch, 10]) saved with the toolkit's
    digit contract."""
    import onnx
    from onnx import helper

    from toolkit.contract import ModelContract
    from toolkit.preprocess import PreprocessSpec

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    contract = ModelContract(input_name="input", input_shape=["batch", 1, 28, 28], input_dtype="float32",
                             output_name="logits", classes=[str(i) for i in range(10)], preprocess=PreprocessSpec(),
                             exporter="tests/serve_process.py", opset=17)
    helper.set_model_props(model, contract.to_metadata())
    onnx.save(model, str(path))
    return path


def predict_csv(model: Path, files: list[Path], tmp: Path) -> dict[str, dict]:
    """`toolkit predict`'s CSV rows for ``files`` (all ten classes' probabilities), by path."""
    import csv

    out = tmp / "rows.csv"
    proc = subprocess.run([sys.executable, "-m", "toolkit", "predict", *map(str, files), "--model", str(model),
                           "--provider", "cpu", "--top-k", "10", "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with open(out, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def self_signed(tmp: Path) -> tuple[Path, Path]:
    """(certfile, keyfile) of a fresh self-signed certificate for 127.0.0.1 and localhost: the `cryptography`
    package where installed, else the openssl command."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        import datetime
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                               x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


def rss_kib(pid: int) -> int:
    """The process's resident set (VmRSS) in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def model(tiny_onnx_session, tmp_path_factory) -> Path:
    """The tiny trained model, as digits.onnx (served as ``digits``)."""
    dst = tmp_path_factory.mktemp("serve") / "digits.onnx"
    dst.write_bytes(tiny_onnx_session.read_bytes())
    return dst


@pytest.fixture(scope="module")
def reference(model):
    """The same model on a plain ONNX Runtime session in this process: what the server must return."""
    from toolkit.runtime import Predictor

    return Predictor.open(model, "cpu")


def infer_body(x, outputs: tuple[str, ...] = ()) -> tuple[bytes, dict]:
    """A binary-extension infer request for the FP32 batch ``x``: (body, headers); outputs come back as JSON."""
    import json

    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    head = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes}}]}
    if outputs:
        head["outputs"] = [{"name": n, "parameters": {"binary_data": False}} for n in outputs]
    text = json.dumps(head).encode()
    return text + x.tobytes(), {"Inference-Header-Content-Length": str(len(text)),
                                "Content-Type": "application/octet-stream"}


def logits_of(answer: bytes):
    """The FP32 'logits' output of a JSON infer answer, as (N, classes)."""
    import json

    import numpy as np

    doc = json.loads(answer)
    (out,) = [o for o in doc["outputs"] if o["name"] == "logits"]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
