"""`toolkit serve --engine ray`: the same ServeApp (toolkit.serve.app) deployed with Ray Serve.

Each replica is one Ray actor that builds the application with build_app, exactly as the single-box server
does, and hands it to Serve as its ASGI ingress (``serve.ingress()`` late-bound through
``__serve_build_asgi_app__``): the routes, the protocol, the bearer token and the responses are the same
code. Serve's HTTP proxy (on the head node: one address for the fleet) routes each request to a replica;
each replica holds one ONNX Runtime session per model and batches what reaches it with the app's own batcher.

The model files are read here once and put in Ray's object store: a node need not hold them (as predict's
Ray engine does). Ray is started or joined by toolkit.predict.ray.cluster (token authentication kept on).

gRPC (--grpc-port): Serve's gRPC proxy on the head node carries inference.GRPCInferenceService. It registers
the service through toolkit.serve.grpc_service.add_GRPCInferenceServiceServicer_to_server, passes each
request's bytes to a replica, and calls the replica's method of the RPC's name (ModelInfer, ...), which answers
with toolkit.serve.grpc_service's own code: the same messages, status codes, token check and retry-after.
The proxy routes a call without `application` metadata (tritonclient sends none) to the only application on
the cluster, so --grpc-port needs a Serve this command starts. Unlike our own server, Serve's gRPC proxy
listens on every interface ([::]:PORT, whatever --host says) and without TLS (ray/serve/_private/grpc_util.py
start_grpc_server and default_impl.add_grpc_address): off unless --grpc-port is given, refused with --certfile.

Left out under Serve (the command refuses them in one line): SIGHUP reload (deploy again instead),
--max-connections (the proxy has no such limit). /metrics answers with the counters of the replica that took
the request.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import ClusterUnavailable, ProviderUnavailable, ToolkitError
from ..runtime import Predictor, captured_stderr
from ..text import first_line
from .app import Limits
from .model import ModelOptions

log = logging.getLogger("toolkit.serve")
APP_NAME = "toolkit"
DEPLOYMENT = "ToolkitServe"


@dataclass
class Scaling:
    """How many replicas: ``replicas`` fixed, or None to autoscale between min and max on ongoing requests."""

    replicas: int | None = 1
    min_replicas: int = 1
    max_replicas: int = 4
    # Ongoing requests per replica the autoscaler aims at: a replica with a full batch waiting is busy enough
    # that another one helps (set from --max-batch).
    target_ongoing: int = 32


@dataclass
class RayListen:
    address: str | None = None  # None: start a local Ray instance for this server, stopped with it
    host: str = "127.0.0.1"
    port: int = 8000
    certfile: str | None = None  # paths on the head node, where the proxy runs
    keyfile: str | None = None
    drain_timeout_s: float = 30.0
    grpc_port: int | None = None  # None: no gRPC proxy; Serve's listens on every interface, without TLS


GRPC_SERVICER = "toolkit.serve.grpc_service.add_GRPCInferenceServiceServicer_to_server"


def replica_options(options: ModelOptions) -> dict:
    """What one replica reserves: a GPU with --provider cuda, and the CPUs its ONNX Runtime threads keep busy."""
    cpus = float(options.threads or 1)
    return {"num_cpus": cpus, "num_gpus": 1} if options.provider == "cuda" else {"num_cpus": cpus}


def open_where_it_runs(models: list[tuple[str, list, str]], options: ModelOptions, limits: Limits | None,
                       workdir: str):
    """The ServeApp of a replica, its model files written from the object store into ``workdir``."""
    import ray

    from . import build_app

    pairs = []
    for name, ref, suffix in models:
        path = Path(workdir) / f"{name}{suffix}"
        path.write_bytes(ray.get(ref[0]))
        pairs.append((name, path))
    app = build_app(pairs, options, limits)
    for model in app.models.values():
        provider = model.loaded[0].provider
        if options.provider == "cuda" and provider != "cuda":  # Predictor refuses already; never serve CPU as CUDA
            raise ProviderUnavailable(f"model {model.name}: --provider cuda, but ONNX Runtime runs it on {provider} "
                                      "on this replica's node")
    return app


def probe(models, options: ModelOptions, limits: Limits | None) -> dict:
    """Run once, as a Ray task with a replica's resources: opens every model where a replica would run.

    Returns {model name: provider used}; a toolkit error (an unusable CUDA provider, a refused model) comes
    back to the driver as itself, before Serve retries failing replicas in its logs."""
    with tempfile.TemporaryDirectory(prefix="toolkit-serve-") as tmp:
        app = open_where_it_runs(models, options, limits, tmp)
        return {m.name: m.loaded[0].provider for m in app.models.values()}


def deployment(serve, scaling: Scaling, options: ModelOptions, drain_timeout_s: float):
    from ray.serve.config import AutoscalingConfig

    from .grpc_service import RPCS, InferenceServicer

    class ToolkitServe:
        def __init__(self, models, options, limits):
            self._dir = tempfile.TemporaryDirectory(prefix="toolkit-serve-")
            self._app = open_where_it_runs(models, options, limits, self._dir.name)
            self._grpc = InferenceServicer(self._app)

        def __serve_build_asgi_app__(self):
            return self._app  # Serve runs its lifespan: startup warms every model, shutdown closes the batchers

        def check_health(self):
            if self._app.started and not self._app.ready:
                raise RuntimeError("a model is not ready")

    for rpc in RPCS:  # what Serve's gRPC proxy calls: the method named after the RPC, with Serve's context
        setattr(ToolkitServe, rpc, grpc_method(rpc))
    ToolkitServe = serve.ingress()(ToolkitServe)

    config = {"name": DEPLOYMENT, "ray_actor_options": replica_options(options),
              # The app's own queue (--max-queue, 429 beyond) is where requests wait, not Serve's router.
              "max_ongoing_requests": options.max_queue + options.max_batch,
              "graceful_shutdown_timeout_s": drain_timeout_s, "health_check_period_s": 2.0}
    if scaling.replicas is None:
        config["autoscaling_config"] = AutoscalingConfig(
            min_replicas=scaling.min_replicas, max_replicas=scaling.max_replicas,
            initial_replicas=scaling.min_replicas, target_ongoing_requests=scaling.target_ongoing,
            upscale_delay_s=3.0, downscale_delay_s=60.0)
    else:
        config["num_replicas"] = scaling.replicas
    return serve.deployment(**config)(ToolkitServe)


def grpc_method(rpc: str):
    async def call(self, request: bytes, grpc_context):  # Serve passes grpc_context to a parameter of that name
        return await self._grpc.over_serve(rpc, request, grpc_context)

    call.__name__ = rpc
    return call


def serve_on_ray(models: list[tuple[str, str | os.PathLike]], options: ModelOptions, limits: Limits | None,
                 listen: RayListen, scaling: Scaling) -> int:
    """Deploy on Ray Serve and serve until SIGTERM/SIGINT; then delete the application (and a local Ray). 0."""
    from ..predict.ray.cluster import import_ray, ray_session

    import_ray(listen.address)  # sets the token mode before Ray is imported; a missing Ray is one line
    try:
        from ray import serve
    except ImportError:
        raise ClusterUnavailable("--engine ray needs Ray Serve, which is not installed; install it with: "
                                 "pip install 'toolkit[cluster]'") from None
    for _, path in models:  # a bad file fails here, before any cluster work (CPU: the provider is the replica's)
        Predictor.open(path, "cpu", 1, flags=options.flags)
    stop = threading.Event()
    problem = None
    notes = RayNotes()
    with contextlib.redirect_stdout(notes), contextlib.ExitStack() as quiet:
        with ray_session(listen.address) as (ray, _):
            # After ray.init, which installs its own SIGTERM handler (sys.exit): ours deletes the application first.
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: stop.set())
            for name in ("ray.serve", "ray"):
                logging.getLogger(name).setLevel(logging.ERROR)  # Serve's INFO lines: the command says its own
            refs = [(name, [ray.put(Path(path).read_bytes())], Path(path).suffix or ".onnx")
                    for name, path in models]
            providers = _probe(ray, refs, options, limits)
            if stop.is_set():
                return 0
            cpus = ray.cluster_resources().get("CPU", 0)
            started = _deploy(serve, refs, options, limits, listen, scaling)
            try:
                where = f"{'https' if listen.certfile else 'http'}://{listen.host}:{listen.port}"
                if listen.grpc_port is not None:
                    where += f" and gRPC [::]:{listen.grpc_port} (every interface)"
                count = (f"{scaling.replicas} replica(s)" if scaling.replicas is not None else
                         f"{scaling.min_replicas} to {scaling.max_replicas} replicas (autoscaled)")
                log.warning("serving %s on Ray Serve at %s, %s on %s (%g CPU(s)); ready",
                            ", ".join(f"{n} ({p})" for n, p in providers.items()), where, count,
                            listen.address or "a local Ray instance", cpus)
                while not stop.wait(0.5):
                    pass
                log.warning("stopping: deleting the Serve application %r", APP_NAME)
            finally:
                # Until Ray is shut down: it reports the Serve controller it stops as a failed task on this
                # process's stderr (it is not one); the command's own lines come after.
                quiet.enter_context(captured_stderr())
                notes.muted = True
                problem = _undeploy(serve, started and listen.address is not None)  # a local Ray ends with us
    if problem:
        log.warning("could not delete the Serve application %r (%s)", APP_NAME, problem)
    log.warning("stopped")
    return 0


class RayNotes(io.TextIOBase):
    """This process's stdout while it serves: only Ray's driver writes there (the command prints nothing on
    stdout), asynchronously, lines like "(raylet) A worker died or was killed ... Lease ID: ...". Each becomes
    one line of the command's log, its first sentence; muted while the command stops Serve, whose controller
    Ray reports as a failed task (it is not one)."""

    def __init__(self):
        super().__init__()
        self.muted = False
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            line = re.sub(r"^\(\w+(?:, [^)]*)?\)\s*", "", line)  # "(raylet)", "(ServeReplica..., pid=...)"
            if line and not self.muted:
                log.warning("Ray: %s", re.split(r"(?<=\.)\s", line, maxsplit=1)[0][:300])
        return len(text)


def _probe(ray, refs, options: ModelOptions, limits: Limits | None) -> dict:
    resources = ray.cluster_resources()
    need = replica_options(options)
    if need.get("num_gpus") and not resources.get("GPU"):
        raise ProviderUnavailable("--provider cuda: the Ray cluster has no GPU for a replica")
    if max((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["Resources"].get("CPU", 0),
           default={"Resources": {}})["Resources"].get("CPU", 0) < need["num_cpus"]:
        raise ClusterUnavailable(f"a replica reserves {need['num_cpus']:g} CPU(s) (--threads) and no node of the "
                                 "Ray cluster has that many")
    task = ray.remote(probe).options(max_retries=0, **need).remote(refs, options, limits)
    try:
        return ray.get(task, timeout=300)
    except ToolkitError as e:  # Ray's RayTaskError subclasses the raised class: the original is its cause
        raise getattr(e, "cause", e) from None
    except ray.exceptions.GetTimeoutError:
        ray.cancel(task, force=True)
        raise ClusterUnavailable("no node of the Ray cluster took a replica's resources within 300 s") from None
    except ray.exceptions.RayError as e:  # anything else a node says (a lost worker, a missing library)
        cause = getattr(e, "cause", None) or e
        raise ClusterUnavailable(f"a replica could not open the model(s) on the Ray cluster "
                                 f"({type(cause).__name__}: {first_line(cause, 300)})") from None


def _deploy(serve, refs, options: ModelOptions, limits: Limits | None, listen: RayListen, scaling: Scaling) -> bool:
    """serve.run of the application; True if this call started Serve on the cluster."""
    running = serve.status()
    if APP_NAME in running.applications:
        raise ClusterUnavailable(f"the Ray cluster already serves an application named {APP_NAME!r} (another "
                                 "`toolkit serve --engine ray`?); stop it first")
    started = not running.proxies and not running.applications
    if listen.grpc_port is not None and not started:
        # Serve keeps the proxies it was started with (a new gRPC config is ignored), and a tritonclient call
        # carries no `application` metadata: Serve routes it only when one application runs.
        raise ClusterUnavailable("--grpc-port: Ray Serve already runs on the cluster, with its own proxies; "
                                 "gRPC needs a Serve that this command starts (or leave out --grpc-port)")
    http = {"host": listen.host, "port": listen.port,
            # a safety net behind the app's own deadlines (504/408): no request waits forever on the proxy
            "request_timeout_s": (options.timeout_s or 60.0) + limits.body_timeout_s + 5.0}
    if listen.certfile:
        http |= {"ssl_certfile": listen.certfile, "ssl_keyfile": listen.keyfile}
    grpc = None
    if listen.grpc_port is not None:
        # No reflection: our own server offers none either.
        grpc = {"port": listen.grpc_port, "grpc_servicer_functions": [GRPC_SERVICER], "enable_reflection": False,
                "request_timeout_s": http["request_timeout_s"]}
    try:
        # HeadOnly: one proxy, one address for the fleet (every node's proxy would share a port on one machine)
        serve.start(proxy_location="HeadOnly", http_options=http, grpc_options=grpc)
        app = deployment(serve, scaling, options, listen.drain_timeout_s).bind(refs, options, limits)
        serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
    except Exception as e:
        _undeploy(serve, started)
        # A proxy that cannot start (a port in use) is a RayTaskError whose first line is only the actor's
        # repr: what went wrong is its cause.
        cause = getattr(e, "cause", None) or e
        raise ClusterUnavailable(f"Ray Serve could not deploy the application ({type(cause).__name__}: "
                                 f"{first_line(cause, 300)})") from None
    return started


def _undeploy(serve, started: bool, timeout_s: float = 60.0) -> str | None:
    """Delete this server's application; shut Serve down too if this server started it and nothing else runs.
    Returns what went wrong, if anything.

    Bounded: a Ctrl-C sent to the whole terminal's process group also stops a local Ray's own processes,
    and Ray's calls then wait for a GCS that is gone."""
    failure: list[str] = []

    def delete() -> None:
        try:
            serve.delete(APP_NAME)
            if started and not serve.status().applications:
                serve.shutdown()
        except Exception as e:  # the cluster went away: nothing of ours is left to delete
            failure.append(first_line(e, 200))

    worker = threading.Thread(target=delete, name="serve-delete", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        return f"no answer from the cluster within {timeout_s:g} s"
    return failure[0] if failure else None
