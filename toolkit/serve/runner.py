"""The process that hosts a ServeApp: uvicorn (HTTP/REST) and grpc.aio (gRPC) on one event loop, and its signals.

  SIGTERM / SIGINT  drain: readiness false at once, new requests refused (503 / UNAVAILABLE), every
                    request already accepted answered, then exit 0 (1 if --drain-timeout ran out first)
  SIGHUP            reload every model whose file changed on disk (toolkit.serve.model.ServedModel.reload)

Sockets are bound here before anything is served, so a port in use is one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolkitError
from .app import ServeApp

log = logging.getLogger("toolkit.serve")


class ServeError(ToolkitError):
    """The server cannot start: a port in use, an unreadable certificate or token file."""


@dataclass
class Listen:
    host: str = "127.0.0.1"
    port: int = 8000
    grpc_port: int | None = 8001  # None: no gRPC
    certfile: str | None = None
    keyfile: str | None = None
    drain_timeout_s: float = 30.0
    max_connections: int = 1024


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def grpc_credentials(listen: Listen):
    if listen.certfile is None:
        return None
    import grpc

    try:
        key, cert = Path(listen.keyfile).read_bytes(), Path(listen.certfile).read_bytes()
    except OSError as e:
        raise ServeError(f"{e.filename}: cannot read ({e.strerror})") from None
    return grpc.ssl_server_credentials([(key, cert)])


def run(app: ServeApp, listen: Listen) -> int:
    """Serve until SIGTERM/SIGINT; the exit code."""
    try:
        import uvloop
    except ImportError:  # optional: the plain asyncio loop serves too, slower
        return asyncio.run(_main(app, listen))
    return uvloop.run(_main(app, listen))


class _Server:
    """uvicorn's Server without its own signal handling: this runner drains first, then tells it to exit."""

    def __init__(self, config):
        import uvicorn

        class Quiet(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):
                yield

        self.server = Quiet(config)


async def _main(app: ServeApp, listen: Listen) -> int:
    import uvicorn

    loop = asyncio.get_running_loop()
    sock = bind(listen.host, listen.port)
    credentials = grpc_credentials(listen)
    http = header_deadline(app.limits.body_timeout_s) if _has("httptools") else "h11"
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            http=http, ssl_certfile=listen.certfile,
                            ssl_keyfile=listen.keyfile, limit_concurrency=listen.max_connections,
                            timeout_keep_alive=5, timeout_graceful_shutdown=5, server_header=False)
    try:
        config.load()
    except (OSError, ValueError) as e:  # ssl: an unreadable or mismatched certificate/key
        raise ServeError(f"--certfile/--keyfile: {e}") from None
    await app.startup()
    grpc_server = None
    if listen.grpc_port is not None:
        from .grpc_service import start_grpc

        try:
            grpc_server = await start_grpc(app, listen.host, listen.grpc_port, app.limits.max_body, credentials)
        except OSError as e:
            raise ServeError(str(e)) from None
    server = _Server(config).server
    serving = loop.create_task(server.serve(sockets=[sock]))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloading: set[asyncio.Task] = set()

    def reload() -> None:
        task = loop.create_task(_reload(app))
        reloading.add(task)
        task.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    scheme = "https" if listen.certfile else "http"
    where = f"{scheme}://{listen.host}:{listen.port}"
    if grpc_server is not None:
        where += f" and gRPC {listen.host}:{listen.grpc_port}" + (" (TLS)" if credentials else "")
    log.warning("serving %s on %s; ready", ", ".join(app.models), where)
    await asyncio.wait([serving, loop.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    app.begin_drain()
    log.warning("draining: %d request(s) in flight", app.inflight)
    drained = await app.drained(listen.drain_timeout_s)
    unanswered = app.inflight  # counted now: some may still finish while the listeners close below
    if grpc_server is not None:
        await grpc_server.stop(grace=1.0)
    server.should_exit = True
    try:  # once drained, every accepted request is answered; what may be left is idle keep-alive connections
        await asyncio.wait_for(asyncio.shield(serving), 1.0)
    except (asyncio.TimeoutError, TimeoutError):
        # A TLS connection's close waits for the client's close_notify, which an idle client never sends:
        # without this, uvicorn waits its whole graceful-shutdown time and then logs an error.
        server.force_exit = True
        await serving
    await app.shutdown()
    if not drained:
        log.warning("--drain-timeout %.3g s ran out with %d request(s) unanswered", listen.drain_timeout_s,
                    unanswered)
        return 1
    # The counts let a client-side tally be checked against the server's (tests/test_serve_ops.py and
    # benchmarks/serve_load.py do).
    answered = sum(m.stats.success + sum(m.stats.failure.values()) for m in app.models.values())
    log.warning("stopped; every accepted request was answered (%d accepted) (%d inference requests since start)",
                app.accepted, answered)
    return 0


def header_deadline(seconds: float):
    """uvicorn's httptools protocol, with a deadline on each request's line and headers: uvicorn has none, so a
    client that never finishes its headers (slowloris) would hold its connection, and with enough of them every
    --max-connections slot, forever. Past ``seconds`` (--body-timeout) it gets 408 and the connection is closed;
    the body has the same deadline in the app (ServeApp._body)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    text = b'{"error":"the request headers were not complete within %g s"}' % seconds
    answer = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n" \
             b"content-length: %d\r\n\r\n%s" % (len(text), text)

    class HeaderDeadline(HttpToolsProtocol):
        _deadline = None
        _begun = False  # a request's first byte came: it gets the 408; an idle connection is closed silently

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                if self._begun:  # never to an idle connection: a client reusing it would read it as its answer
                    self.transport.write(answer)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()  # a connection that never sends a byte is closed too

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._begun = True
            self._arm()  # each request on a keep-alive connection

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


async def _reload(app: ServeApp) -> None:
    lines = await app.reload()
    for line in lines or ["SIGHUP: no model file changed"]:
        log.warning("%s", line)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
