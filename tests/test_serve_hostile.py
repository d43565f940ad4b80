"""Hostile requests against one real `toolkit serve` process: bad JSON, a wrong Inference-Header-Content-Length,
truncated binary data, shapes that would need gigabytes, thousands of inputs, decompression-bomb images, slow
clients that never finish their body. Each gets its status and one line of JSON within the socket's timeout;
afterwards the server still answers a normal request and its resident memory stayed bounded."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np
import pytest

from serve_process import SAMPLES, Server, infer_body, linear_model, logits_of, rss_kib

grpcclient = pytest.importorskip("tritonclient.grpc", reason="tritonclient's gRPC client needs grpcio and protobuf")
from tritonclient.utils import InferenceServerException  # noqa: E402

BODY_TIMEOUT = 1.0
INFER = "/v2/models/m/infer"
GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.5] * 784}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    s = Server([linear_model(tmp / "m.onnx"), "--body-timeout", str(BODY_TIMEOUT)], tmp).start()
    _normal(s)
    s.baseline_kib = rss_kib(s.proc.pid)
    yield s
    s.stop()


def _normal(server) -> None:
    body, headers = infer_body(np.zeros((2, 1, 28, 28), np.float32), ("logits",))
    status, answer, _ = server.post(INFER, body, headers=headers)
    assert status == 200, answer
    assert logits_of(answer).shape == (2, 10)


def _refused(server, body: bytes, status: int, words: str = "", headers: dict | None = None,
             path: str = INFER) -> str:
    """POST ``body``: the answer must be ``status`` with one line of JSON {"error": ...} naming ``words``."""
    got, answer, _ = server.post(path, body, headers=headers, timeout=30)
    assert got == status, (got, answer[:300])
    assert answer.strip().count(b"\n") == 0
    message = json.loads(answer)["error"]
    assert isinstance(message, str) and words in message, message
    return message


def _json(inputs=None, **doc) -> bytes:
    return json.dumps({"inputs": [GOOD] if inputs is None else inputs, **doc}).encode()


class TestBadJson:
    @pytest.mark.parametrize("body", [b"", b"{", b"{'inputs': []}", b'{"inputs": [}', b"\xff\xfe\x00{}",
                                      b'{"inputs": [{"name": "input",}]}', b"nul", b'{"inputs": [] "x": 1}',
                                      b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],'
                                      b' "data": [NaN]}]}',
                                      b'{"inputs": [{"data": [Infinity]}]}',
                                      b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}"])
    def test_syntax(self, server, body):
        _refused(server, body, 400, "JSON")

    @pytest.mark.parametrize("body,words", [
        (b"[1, 2]", "object"), (b"null", "object"), (b'"inputs"', "object"),
        (_json(inputs={}), "inputs"), (_json(inputs=[]), "inputs"), (_json(inputs=[1]), "object"),
        (_json(inputs=[dict(GOOD, name=5)]), "name"), (_json(inputs=[dict(GOOD, name="x" * 300)]), "name"),
        (_json(inputs=[dict(GOOD, datatype=7)]), "datatype"), (_json(inputs=[dict(GOOD, datatype="FLOAT")]), "datatype"),
        (_json(inputs=[dict(GOOD, shape="1,1,28,28")]), "shape"), (_json(inputs=[dict(GOOD, shape=[1.0, 1, 28, 28])]),
                                                                   "shape"),
        (_json(inputs=[dict(GOOD, shape=[-1, 1, 28, 28])]), "shape"), (_json(inputs=[dict(GOOD, shape=[True, 1, 28, 28])]),
                                                                       "shape"),
        (_json(inputs=[dict(GOOD, data="0.5")]), "data"), (_json(inputs=[dict(GOOD, data=[["a"]] * 784)]), "data"),
        (_json(inputs=[dict(GOOD, data={"0": 1})]), "data"), (_json(inputs=[dict(GOOD, parameters=[])]), "parameters"),
        (_json(outputs="logits"), "outputs"), (_json(outputs=[5]), "output"), (_json(id=5), "id"),
        (_json(parameters={"timeout": "soon"}), "timeout"), (_json(parameters={"timeout": -1}), "timeout"),
        (_json(parameters=[1]), "parameters"),
    ])
    def test_wrong_types(self, server, body, words):
        _refused(server, body, 400, words)

    @pytest.mark.parametrize("drop,words", [("name", "name"), ("datatype", "datatype"), ("shape", "shape"),
                                            ("data", "data")])
    def test_missing_fields(self, server, drop, words):
        _refused(server, _json(inputs=[{k: v for k, v in GOOD.items() if k != drop}]), 400, words)
        _refused(server, b"{}", 400, "inputs")

    @pytest.mark.parametrize("data,words", [([1e39] * 784, "range"), ([-1e300] * 784, "range"),
                                            ([1.0] * 783 + [1e39], "range"), (None, "JSON")])
    def test_huge_numbers(self, server, data, words):
        if data is None:  # an integer past 64 bits is not read at all
            body = _json().replace(b"0.5]", b"1" + b"0" * 400 + b"]")
        else:
            body = _json(inputs=[dict(GOOD, data=data)])
        _refused(server, body, 400, words)

    def test_huge_integers_in_shape_and_timeout(self, server):
        _refused(server, _json(inputs=[dict(GOOD, shape=[2 ** 63, 1, 28, 28])]), 400)
        _refused(server, _json().replace(b'"shape": [1,', b'"shape": [' + b"9" * 30 + b","), 400)
        _refused(server, _json(parameters={"timeout": 2 ** 64}), 400)


def _binary(x: np.ndarray, size: int | None = None, header_length: str | None = None) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": x.nbytes if size is None else size}}]}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)) if header_length is None else header_length}


class TestHeaderLength:
    @pytest.mark.parametrize("value", ["-5", "abc", "1e3", "0x10", "²", "١٢".encode(), " 12", "+12", "12.0", "",
                                       "9" * 40, "99999999"])
    def test_not_a_length_within_the_body(self, server, value):
        body, headers = _binary(np.zeros((1, 1, 28, 28), np.float32), header_length=value)
        words = "Inference-Header-Content-Length" if value not in ("",) else ""
        message = _refused(server, body, 400, headers=headers)
        assert words in message or "JSON" in message

    @pytest.mark.parametrize("delta", [-1, -20, 1, 100])
    def test_a_length_that_cuts_the_json_or_eats_the_data(self, server, delta):
        body, headers = _binary(np.zeros((1, 1, 28, 28), np.float32))
        headers["Inference-Header-Content-Length"] = str(int(headers["Inference-Header-Content-Length"]) + delta)
        _refused(server, body, 400, headers=headers)

    def test_zero_and_the_whole_body(self, server):
        body, headers = _binary(np.zeros((1, 1, 28, 28), np.float32))
        _refused(server, body, 400, "JSON", headers={**headers, "Inference-Header-Content-Length": "0"})
        _refused(server, body, 400, headers={**headers, "Inference-Header-Content-Length": str(len(body))})


class TestTruncatedBinary:
    def test_data_shorter_than_binary_data_size(self, server):
        x = np.zeros((4, 1, 28, 28), np.float32)
        body, headers = _binary(x)
        _refused(server, body[:-100], 400, "binary_data_size", headers=headers)
        _refused(server, body[:int(headers["Inference-Header-Content-Length"])], 400, "binary_data_size",
                 headers=headers)

    @pytest.mark.parametrize("size,words", [(-4, "binary_data_size"), ("12", "binary_data_size"),
                                            (1.5, "binary_data_size"), (3136 - 2, "needs 3136 bytes")])
    def test_wrong_binary_data_size(self, server, size, words):
        x = np.zeros((1, 1, 28, 28), np.float32)
        body, headers = _binary(x, size=size)
        _refused(server, body, 400, headers=headers)

    def test_bytes_past_the_inputs(self, server):
        body, headers = _binary(np.zeros((1, 1, 28, 28), np.float32))
        _refused(server, body + b"\x00" * 8, 400, "after", headers=headers)

    @pytest.mark.parametrize("raw,words", [
        (b"\x05\x00\x00\x00abc", "runs past"), (b"\x01\x00", "length"), (b"\xff\xff\xff\xffab", "runs past"),
        (b"\x01\x00\x00\x00ab", "left over"), (b"", "length")])
    def test_truncated_bytes_elements(self, server, raw, words):
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        _refused(server, head + raw, 400, words, headers={"Inference-Header-Content-Length": str(len(head))})


class TestHugeShapes:
    @pytest.mark.parametrize("shape", [[10 ** 9, 1, 28, 28], [2 ** 40, 1, 28, 28], [1, 1, 28, 28 * 10 ** 8],
                                       [2 ** 62, 2 ** 62, 2 ** 62, 2 ** 62], [1] * 9, [10 ** 6, 10 ** 6, 10 ** 6]])
    def test_json_and_binary(self, server, shape):
        _refused(server, _json(inputs=[dict(GOOD, shape=shape)]), 400)
        body, headers = _binary(np.zeros((1, 1, 28, 28), np.float32))
        _refused(server, body.replace(b"[1, 1, 28, 28]", json.dumps(shape).encode()), 400,
                 headers={"Inference-Header-Content-Length": str(int(headers["Inference-Header-Content-Length"])
                                                                 + len(json.dumps(shape)) - 14)})

    def test_more_rows_than_a_request_may_carry(self, server):
        x = np.zeros((1025, 1, 28, 28), np.float32)
        body, headers = _binary(x)
        _refused(server, body, 400, "rows", headers=headers)
        _refused(server, _json(inputs=[dict(GOOD, shape=[0, 1, 28, 28], data=[])]), 400, "rows")

    @pytest.mark.parametrize("count", [1025, 10 ** 6, 3 * 10 ** 6])
    def test_millions_of_bytes_elements(self, server, count):
        """Each element is a Python object once split: refused by its count before any is made."""
        raw = b"\x01\x00\x00\x00a" * count
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count],
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        _refused(server, head + raw, 400, "BYTES elements", headers={"Inference-Header-Content-Length":
                                                                      str(len(head))})
        _refused(server, json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count],
                                                 "data": ["YQ=="] * min(count, 10 ** 6)}]}).encode(), 400, "BYTES")

    def test_over_max_body_over_grpc(self, server):
        client = grpcclient.InferenceServerClient(server.grpc)
        x = grpcclient.InferInput("input", [5500, 1, 28, 28], "FP32")  # 17.2 MB > the default 16M --max-body
        x.set_data_from_numpy(np.zeros((5500, 1, 28, 28), np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("m", [x])
        assert "RESOURCE_EXHAUSTED" in str(e.value.status())
        assert client.is_server_ready()
        client.close()

    def test_over_max_body(self, server):
        """18 MB against the default 16M --max-body: 413 from the Content-Length alone, on a keep-alive connection
        (urllib's Connection: close would see the connection reset while it still sends)."""
        body = b"[" + b"0," * (9 << 20) + b"0]"
        got, _ = _raw(server, _head(len(body)).replace(b"Host:", b"Connection: keep-alive\r\nHost:") + body,
                      until=b"}")
        assert got.startswith(b"HTTP/1.1 413") and b"--max-body" in got, got[:300]


class TestThousandsOfTensors:
    @pytest.mark.parametrize("count", [17, 5000])
    def test_inputs_and_outputs(self, server, count):
        inputs = [{"name": f"i{i}", "datatype": "FP32", "shape": [1], "data": [0]} for i in range(count)]
        _refused(server, _json(inputs=inputs), 400, "inputs")
        _refused(server, _json(outputs=[{"name": f"o{i}"} for i in range(count)]), 400, "outputs")

    def test_over_grpc(self, server):
        client = grpcclient.InferenceServerClient(server.grpc)
        inputs = []
        for i in range(5000):
            inp = grpcclient.InferInput(f"i{i}", [1], "FP32")
            inp.set_data_from_numpy(np.zeros(1, np.float32))
            inputs.append(inp)
        with pytest.raises(InferenceServerException) as e:
            client.infer("m", inputs)
        assert "INVALID_ARGUMENT" in str(e.value.status()) and "at most" in e.value.message()
        x = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
        with pytest.raises(InferenceServerException) as e:
            client.infer("m", [x], outputs=[grpcclient.InferRequestedOutput(f"o{i}") for i in range(5000)])
        assert "INVALID_ARGUMENT" in str(e.value.status())
        client.close()


def _png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb(width: int, height: int) -> bytes:
    """A valid gray PNG of zeros: a few hundred KB that decode to width*height bytes."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [compressor.compress(row) for _ in range(height)]
    return _png(width, height, b"".join(parts) + compressor.flush())


class TestImageBombs:
    @pytest.mark.parametrize("image", [
        _png(50000, 50000, zlib.compress(b"\x00" * 100)),  # the header claims 2.5 G pixels, the file is tiny
        _png(2 ** 31 - 1, 2 ** 31 - 1, b""),
        _png(65535, 1, zlib.compress(b"\x00" * 10)),  # truncated data: fewer bytes than the header claims
        _png(0, 0, b""),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00" * 20,
        b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff\x03" + b"\x00" * 30,  # a JPEG frame of 65535 x 65535
    ], ids=["png-2.5Gpx-header", "png-max-header", "png-truncated", "png-0x0", "png-garbage", "gif-huge",
            "jpeg-huge"])
    def test_refused_on_the_image_route_and_as_bytes(self, server, image):
        _refused(server, image, 400, path="/v2/models/m/classify")
        head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                       "parameters": {"binary_data_size": len(image) + 4}}]}).encode()
        _refused(server, head + struct.pack("<I", len(image)) + image, 400, "image 0",
                 headers={"Inference-Header-Content-Length": str(len(head))})

    def test_a_real_decompression_bomb(self, server):
        """A real 10000 x 10000 PNG (100 M pixels, ~100 KB): past Pillow's pixel limit, refused before decoding."""
        bomb = _bomb(10000, 10000)
        assert len(bomb) < 1 << 20
        message = _refused(server, bomb, 400, path="/v2/models/m/classify")
        assert "pixels" in message or "bomb" in message.lower(), message

    def test_a_large_image_under_the_limit_is_answered(self, server):
        """4000 x 4000 (16 M pixels) is decoded and answered like any image (blank: all black)."""
        status, answer, _ = server.post("/v2/models/m/classify", _bomb(4000, 4000), timeout=60)
        assert status == 200 and json.loads(answer)["blank"] is True

    def test_a_good_image_still_classifies(self, server):
        status, answer, _ = server.post("/v2/models/m/classify", SAMPLES[0].read_bytes())
        assert status == 200 and json.loads(answer)["label"] in [str(i) for i in range(10)]


def _raw(server, data: bytes, then: float = 0.0, trickle: bytes = b"", until: bytes | None = None) \
        -> tuple[bytes, float]:
    """Send ``data`` on a raw socket, then ``trickle`` one byte every ``then`` s; what came back before the server
    closed (or 30 s, or ``until`` was read), and the seconds that took."""
    host, port = server.url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        start = time.monotonic()
        sock.sendall(data)
        sock.setblocking(False)
        got = b""
        for byte in trickle:
            time.sleep(then)
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            try:
                got += sock.recv(65536)
            except BlockingIOError:
                pass
            if got:
                break
        sock.settimeout(30)
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            got += chunk
            if until is not None and until in got:
                break
        return got, time.monotonic() - start


def _head(length: int | None = 1000, chunked: bool = False) -> bytes:
    lines = [f"POST {INFER} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TestSlowClients:
    def _assert_408(self, got: bytes, seconds: float) -> None:
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert b"connection: close" in got.lower()
        assert b"not complete within" in got
        assert seconds < 30  # answered and closed by the server, not by this socket's own timeout

    def test_a_body_that_never_ends(self, server):
        self._assert_408(*_raw(server, _head(1000) + b'{"inputs"'))

    def test_a_chunked_body_that_never_ends(self, server):
        self._assert_408(*_raw(server, _head(chunked=True) + b"9\r\n{\"inputs\"\r\n"))

    def test_a_body_trickled_one_byte_at_a_time(self, server):
        """--body-timeout bounds the whole body, not the gap between bytes."""
        self._assert_408(*_raw(server, _head(1000), then=0.1, trickle=b"x" * 200))

    def test_many_slow_clients_do_not_stop_the_others(self, server):
        results = []
        threads = [threading.Thread(target=lambda: results.append(_raw(server, _head(5000) + b"{"))) for _ in
                   range(16)] + \
            [threading.Thread(target=lambda: results.append(_raw(server, b"POST / HTTP/1.1\r\n"))) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(BODY_TIMEOUT / 4)
        _normal(server)  # while all of them hold their connections
        client = grpcclient.InferenceServerClient(server.grpc)
        assert client.is_server_ready()
        client.close()
        for t in threads:
            t.join(40)
        assert len(results) == 24
        for got, seconds in results:
            assert got.startswith(b"HTTP/1.1 408") and seconds < 30, got[:200]

    @pytest.mark.parametrize("data", [b"", b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"PO"],
                             ids=["nothing", "headers-unfinished", "request-line-unfinished"])
    def test_headers_that_never_end(self, server, data):
        """uvicorn has no deadline of its own on the request line and headers (slowloris): the server's. A begun
        request gets 408; a connection that never sent a byte is closed without one (a client that reuses an idle
        connection must not read a stale 408 as its answer)."""
        got, seconds = _raw(server, data)
        if data:
            assert got.startswith(b"HTTP/1.1 408") and b"headers were not complete" in got, got[:200]
        else:
            assert got == b""
        assert seconds < 30

    def test_unfinished_headers_on_a_keep_alive_connection(self, server):
        """After one answered request, the next request's headers get the same deadline."""
        body, headers = infer_body(np.zeros((1, 1, 28, 28), np.float32))
        first = (f"POST {INFER} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                 + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode() + body
        got, seconds = _raw(server, first, then=0.1, trickle=b"POST / HTTP/1.1\r\nX-Slow: " + b"y" * 200)
        assert got.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in got, got[-300:]

    def test_a_client_that_disconnects_mid_body(self, server):
        host, port = server.url.split(":")
        for _ in range(10):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(_head(100000) + b"{" * 1000)
        _normal(server)


def test_after_everything_the_server_answers_with_bounded_memory(server):
    _normal(server)
    assert server.proc.poll() is None
    grown = rss_kib(server.proc.pid) - server.baseline_kib
    assert grown < 256 * 1024, f"resident memory grew by {grown} KiB"
    log = server.output()
    assert "Traceback" not in log and "Exception" not in log, log[-3000:]
    assert "RuntimeWarning" not in log, log[-3000:]
