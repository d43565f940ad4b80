"""The served models as one application: an ASGI app (HTTP/REST) and, from the same object, a gRPC servicer.

Nothing here owns a process, a socket or a signal: toolkit.serve.runner hosts it under uvicorn and
grpc.aio; another host (Ray Serve, issue 21) can mount the same ASGI callable. Routes:

  GET  /v2/health/live, /v2/health/ready          no token needed
  GET  /v2                                         server metadata
  GET  /v2/models/NAME[/versions/V]                model metadata
  GET  /v2/models/NAME[/versions/V]/ready
  POST /v2/models/NAME[/versions/V]/infer          JSON or binary tensor data extension
  POST /v2/models/NAME/classify[?view=1]           the body is one encoded image file
  GET  /metrics                                    Prometheus text format
  GET  /, /page/pad.css, /page/pad.js              the browser page (toolkit.serve.page), no token needed
  GET  /page/models                                what the page shows of each model
No route reads a file path from the request.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import zlib
from dataclasses import dataclass
from urllib.parse import parse_qs

import orjson

from .. import __version__
from .metrics import registry_for
from .model import ServedModel, timed
from .page import MODELS_ROUTE, models_info, static_file
from .protocol import ProtocolError, encode_infer, parse_infer

log = logging.getLogger("toolkit.serve")
JSON = [(b"content-type", b"application/json")]
EXTENSIONS = ["binary_tensor_data"]


@dataclass
class Limits:
    max_body: int = 16 << 20  # bytes of a request body (413 beyond)
    body_timeout_s: float = 10.0  # a client must finish sending its body within this (408 beyond)
    token: bytes | None = None  # bearer token; None: no authentication


class Disconnected(Exception):
    pass


class ServeApp:
    def __init__(self, models: list[ServedModel], limits: Limits | None = None):
        self.models = {m.name: m for m in models}
        self.limits = limits or Limits()
        self.started = False
        self.draining = False
        self.inflight = 0  # requests accepted and not yet answered (HTTP and gRPC)
        self.accepted = 0  # inference requests accepted since start (the drain's log line reports it)
        self.registry = registry_for(lambda: [m.stats for m in self.models.values()])

    # ------------------------------------------------------------ life cycle (host-independent)

    async def startup(self) -> None:
        if self.started:
            return
        for model in self.models.values():
            await model.start()
        self.started = True

    @property
    def ready(self) -> bool:
        return self.started and not self.draining and all(m.ready for m in self.models.values())

    def begin_drain(self) -> None:
        """Readiness false at once; new inference requests refused; the accepted ones still answered."""
        self.draining = True

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every accepted request is answered; False if ``timeout_s`` ran out first."""
        deadline = time.monotonic() + timeout_s
        while self.inflight or any(m.busy for m in self.models.values()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def shutdown(self) -> None:
        for model in self.models.values():
            await model.close()

    async def reload(self) -> list[str]:
        return [line for m in self.models.values() if (line := await m.reload())]

    def accept(self, model: ServedModel) -> None:
        if self.draining:
            model.stats.reject("draining")
            raise ProtocolError("the server is shutting down and takes no new requests", 503)
        self.accepted += 1

    def model(self, name: str, version: str = "") -> ServedModel:
        model = self.models.get(name)
        if model is None:
            raise ProtocolError(f"unknown model {name!r}; served: {', '.join(sorted(self.models))}", 404)
        if version not in ("", "1"):
            raise ProtocolError(f"model {name!r} has no version {version!r} (only 1)", 404)
        return model

    def authorized(self, header: bytes | None) -> bool:
        token = self.limits.token
        if token is None:
            return True
        return header is not None and hmac.compare_digest(header, b"Bearer " + token)

    def grpc_handler(self):
        """This app's inference.GRPCInferenceService, for any grpc.aio server (``server.add_generic_rpc_handlers``)."""
        from .grpc_service import InferenceServicer

        return InferenceServicer(self).handler()

    def server_metadata(self) -> dict:
        return {"name": "toolkit", "version": __version__, "extensions": EXTENSIONS}

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        held = []  # [True] once this request is accepted: in flight (the drain waits) until its answer is sent
        try:
            try:
                status, body, headers = await self._route(scope, receive, held)
            except ProtocolError as e:
                status, body, headers = e.status, orjson.dumps({"error": str(e)}), list(JSON)
                if e.retry_after is not None:
                    headers.append((b"retry-after", str(int(e.retry_after)).encode()))
                if e.status == 401:
                    headers.append((b"www-authenticate", b"Bearer"))
                if e.status == 408:  # a client too slow to send its body does not keep the connection
                    headers.append((b"connection", b"close"))
            except Disconnected:
                return
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            if held:
                self.inflight -= 1

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope, receive, held: list):
        path = scope["path"]
        method = scope["method"]
        if path == "/v2/health/live":
            return 200, orjson.dumps({"live": True}), list(JSON)
        if path == "/v2/health/ready":
            ready = self.ready
            return (200 if ready else 503), orjson.dumps({"ready": ready}), list(JSON)
        if method == "GET" and (page := static_file(path)) is not None:
            return page  # static, no model data: a browser opening the URL cannot send a token (see page.py)
        headers = dict(scope["headers"])
        if not self.authorized(headers.get(b"authorization")):
            raise ProtocolError("missing or wrong bearer token (Authorization: Bearer TOKEN)", 401)
        if path == MODELS_ROUTE and method == "GET":
            return 200, orjson.dumps(models_info(self.models.values())), list(JSON)
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, generate_latest(self.registry), [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        if path in ("/v2", "/v2/"):
            return 200, orjson.dumps(self.server_metadata()), list(JSON)
        parts = path.split("/")
        if len(parts) < 4 or parts[:3] != ["", "v2", "models"] or not parts[3]:
            raise ProtocolError(f"no route {method} {path[:200]}", 404)
        name, rest, version = parts[3], parts[4:], ""
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        model = self.model(name, version)
        action = rest[0] if rest else ""
        if len(rest) > 1 or (method == "GET") != (action in ("", "ready")) or action not in ("", "ready", "infer",
                                                                                            "classify"):
            raise ProtocolError(f"no route {method} {path[:200]}", 404 if action not in ("", "ready") else 405)
        if action == "":
            return 200, orjson.dumps(model.metadata()), list(JSON)
        if action == "ready":
            ready = model.ready and not self.draining
            return (200 if ready else 503), orjson.dumps({"name": name, "ready": ready}), list(JSON)
        self.accept(model)
        self.inflight += 1
        held.append(True)
        with timed(model.stats):
            body = await self._body(headers, receive)
            if action == "classify":
                view = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("view", ["0"])[0]
                answer = await model.classify(body, view not in ("0", "", "false"))
                return 200, orjson.dumps(answer), list(JSON)
            request = parse_infer(body, _text(headers.get(b"inference-header-content-length")))
            response = await model.infer(request)
            out, head = encode_infer(response, request)
        if head is None:
            return 200, out, list(JSON)
        return 200, out, [(b"content-type", b"application/octet-stream"),
                          (b"inference-header-content-length", str(head).encode())]

    async def _body(self, headers: dict, receive) -> bytes:
        limit = self.limits.max_body
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ProtocolError(f"request body of {length[:20].decode('latin-1')} bytes; at most {limit} are "
                                "accepted (--max-body)", 413)
        try:
            body = await asyncio.wait_for(_read(receive, limit), self.limits.body_timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            raise ProtocolError(f"the request body was not complete within {self.limits.body_timeout_s:g} s",
                                408) from None
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding in (b"gzip", b"deflate"):
            body = _inflate(body, encoding, limit)
        elif encoding != b"identity":
            raise ProtocolError(f"Content-Encoding {encoding[:20].decode('latin-1')!r}: gzip, deflate or none", 415)
        return body


async def _read(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"request body over {limit} bytes (--max-body)", 413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _inflate(body: bytes, encoding: bytes, limit: int) -> bytes:
    """A compressed body, inflated to at most ``limit`` bytes: a compression bomb stops there."""
    inflater = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(f"the {encoding.decode()} body cannot be inflated ({e})") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"the {encoding.decode()} body inflates past {limit} bytes (--max-body)", 413)
    return out


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
