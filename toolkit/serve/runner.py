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
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                            http="httptools" if _has("httptools") else "h11", ssl_certfile=listen.certfile,
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
    if grpc_server is not None:
        await grpc_server.stop(grace=1.0)
    server.should_exit = True
    await serving
    await app.shutdown()
    if not drained:
        log.warning("--drain-timeout %.3g s ran out with %d request(s) unanswered", listen.drain_timeout_s,
                    app.inflight)
        return 1
    # The count lets a client-side tally be checked against the server's (benchmarks/serve_load.py does).
    answered = sum(m.stats.success + sum(m.stats.failure.values()) for m in app.models.values())
    log.warning("stopped; every accepted request was answered (%d inference requests since start)", answered)
    return 0


async def _reload(app: ServeApp) -> None:
    lines = await app.reload()
    for line in lines or ["SIGHUP: no model file changed"]:
        log.warning("%s", line)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
