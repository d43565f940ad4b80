import click

from ..errors import EXIT_ERROR, EXIT_GATE, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_UNAVAILABLE
from .options import FiniteFloat, exit_codes_help, preprocess_options, provider_option

EPILOG = """\b
Protocol: the Open Inference Protocol v2 (KServe v2, what Triton speaks),
HTTP/REST and gRPC (inference.GRPCInferenceService); tritonclient works
unchanged. A model is named after its file's stem (model.onnx is model).
\b
  GET  /v2/health/live | /v2/health/ready       (no token needed)
  GET  /v2/models/NAME            metadata       GET .../NAME/ready
  POST /v2/models/NAME/infer      JSON or binary tensor data extension;
       input IMAGE as BYTES [N]: encoded image files, one per element
  POST /v2/models/NAME/classify   body = one image file (curl --data-binary)
       -> label, confidence, probabilities, blank; ?view=1 adds the
       model's input pixels as a base64 PNG
  GET  /metrics                   Prometheus (Triton's nv_inference_* names)
\b
Batching is idle-first: a request that finds the model idle runs at once;
requests arriving meanwhile form the next batch (--max-batch 1: off).
A full queue answers 429 with Retry-After (gRPC RESOURCE_EXHAUSTED).
SIGTERM/SIGINT drain (every accepted request answered, then exit 0);
SIGHUP reloads model files replaced on disk (a broken one is reported,
the old model keeps serving). See docs/serve.md.
\b
--engine ray deploys the same application on Ray Serve (a local Ray
instance, or the cluster at --address; its token authentication kept
on): one proxy at --host:--port on the head node, replicas each holding
one session per model, a fixed count or autoscaled on ongoing requests.
gRPC only with an explicit --grpc-port: Serve's gRPC proxy listens on
every interface and without TLS (refused with --certfile). No SIGHUP
reload; SIGTERM/SIGINT delete the Serve application (and stop a local
Ray). See docs/scale.md.

""" + exit_codes_help({
    EXIT_OK: "stopped by SIGTERM/SIGINT after answering every accepted request",
    EXIT_ERROR: "an unusable model, token, certificate or port; or --drain-timeout ran out with requests "
                "unanswered",
    EXIT_UNAVAILABLE: "the serve extra is not installed (pip install 'toolkit[serve]'), or --provider cuda cannot "
                      "be used; --engine ray: the cluster extra is not installed, the Ray cluster cannot be "
                      "started or joined, or Ray Serve cannot deploy",
}, omit=(EXIT_PARTIAL, EXIT_GATE, EXIT_INTERRUPTED))

SERVE_MODULES = ("uvicorn", "grpc", "orjson", "prometheus_client")


def _replicas(ctx, param, value):
    if str(value).strip().lower() == "auto":
        return None
    if not str(value).strip().isdigit() or not 1 <= int(value) <= 1024:
        raise click.BadParameter(f"{value!r}: a number of replicas from 1 to 1024, or auto", ctx=ctx, param=param)
    return int(value)


def _given(ctx, name: str) -> bool:
    return ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)


def _byte_size(ctx, param, value):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = str(value).strip().lower().removesuffix("b").removesuffix("i")
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    if not (number.isascii() and number.isdigit()) or int(number) * scale < 1024:
        raise click.BadParameter(f"{value!r}: a size in bytes of at least 1024, e.g. 16M or 65536", ctx=ctx,
                                 param=param)
    return int(number) * scale


@click.command("serve", epilog=EPILOG)
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="The name of each MODEL, in order (repeat it). Default: the file's stem.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. 0.0.0.0 exposes the server to the network: give it --token-file, "
                   "and --certfile/--keyfile for TLS.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="HTTP/REST port.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="gRPC port; 0: no gRPC. With --engine ray: no gRPC unless given (Serve's gRPC proxy listens on "
                   "every interface, not --host, and without TLS).")
@provider_option()
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="ONNX Runtime threads per model. Default: the usable CPUs (affinity and cgroup quota) shared "
                   "among the models.")
@click.option("--max-batch", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Most rows one model execution gathers from waiting requests; 1 turns batching off.")
@click.option("--max-queue-delay-us", type=click.IntRange(0, 10_000_000), default=0, show_default=True,
              help="How long a batch formed from waiting requests may wait for more to fill it. Never applies "
                   "to a request that finds the model idle.")
@click.option("--max-queue", type=click.IntRange(1, 1_000_000), default=256, show_default=True,
              help="Requests that may wait per model; beyond it HTTP 429 with Retry-After, gRPC "
                   "RESOURCE_EXHAUSTED, at once.")
@click.option("--timeout", "timeout_s", type=FiniteFloat(min=0.001), default=10.0, show_default=True,
              help="Seconds a request may wait for its answer (HTTP 504, gRPC DEADLINE_EXCEEDED beyond); a "
                   "client's own shorter deadline is honoured too.")
@click.option("--max-body", default="16M", show_default=True, callback=_byte_size, metavar="BYTES",
              help="Largest request body (HTTP 413 / gRPC RESOURCE_EXHAUSTED beyond), also after gzip/deflate.")
@click.option("--body-timeout", "body_timeout_s", type=FiniteFloat(min=0.01), default=10.0, show_default=True,
              help="Seconds a client has to send a request's headers, and again its whole body (HTTP 408 "
                   "beyond): a slow client holds nothing longer.")
@click.option("--max-connections", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Concurrent HTTP connections and requests; beyond it HTTP 503.")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True),
              help="File holding a bearer token: every route but live/ready then needs "
                   "'Authorization: Bearer TOKEN' (gRPC: metadata authorization).")
@click.option("--certfile", type=click.Path(dir_okay=False, exists=True), help="TLS certificate (PEM), HTTP and gRPC.")
@click.option("--keyfile", type=click.Path(dir_okay=False, exists=True), help="TLS private key (PEM).")
@click.option("--drain-timeout", "drain_timeout_s", type=FiniteFloat(min=0), default=30.0, show_default=True,
              help="Seconds SIGTERM/SIGINT waits for accepted requests to be answered.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process serves. ray: deployed on Ray Serve (needs the cluster extra).")
@click.option("--address", metavar="ADDRESS",
              help="With --engine ray: join the Ray cluster at ADDRESS (HOST:PORT of `ray start --head`); its token "
                   "from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. Default: a local Ray instance.")
@click.option("--replicas", default="1", show_default=True, callback=_replicas, metavar="N|auto",
              help="With --engine ray: replicas, each one ONNX Runtime session per model; auto: autoscaled on "
                   "ongoing requests between --min-replicas and --max-replicas.")
@click.option("--min-replicas", type=click.IntRange(0, 1024), default=1, show_default=True,
              help="With --replicas auto: the fewest replicas (0: none while idle, the first request waits).")
@click.option("--max-replicas", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="With --replicas auto: the most replicas.")
@preprocess_options
@click.pass_context
def command(ctx, models, names, host, port, grpc_port, provider, threads, max_batch, max_queue_delay_us, max_queue,
            timeout_s, max_body, body_timeout_s, max_connections, token_file, certfile, keyfile, drain_timeout_s,
            engine, address, replicas, min_replicas, max_replicas, flags) -> None:
    """Serve ONNX models over the Open Inference Protocol v2 (HTTP/REST and gRPC).

    Any model `toolkit predict` accepts: one exported by the toolkit, or
    another described by the preprocessing options. Ready once every model
    is loaded and warmed at the batch sizes it will run.
    """
    import importlib.util
    import logging
    from pathlib import Path

    from toolkit.errors import ServeUnavailable

    if missing := [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]:
        raise ServeUnavailable(f"`toolkit serve` needs {', '.join(missing)}, not installed here; install the serve "
                               "extra: pip install 'toolkit[serve]'")
    if (certfile is None) != (keyfile is None):
        raise click.UsageError("--certfile and --keyfile go together")
    if len(names) > len(models):
        raise click.UsageError(f"{len(names)} --name for {len(models)} model(s)")
    model_names = list(names) + [Path(m).stem for m in models[len(names):]]
    if len(set(model_names)) != len(model_names):
        raise click.UsageError(f"two models would share a name ({', '.join(model_names)}); give --name")
    if bad := [n for n in model_names if not n or "/" in n or len(n) > 128]:
        raise click.UsageError(f"model name {bad[0]!r}: 1 to 128 characters, no '/'")

    _check_engine(ctx, engine, replicas, min_replicas, max_replicas)
    if engine == "ray" and _given(ctx, "grpc_port") and grpc_port and certfile is not None:
        raise click.UsageError("--grpc-port with --certfile: Ray Serve's gRPC proxy has no TLS (the token would "
                               "cross the network in clear); leave out --grpc-port, or use --engine local")

    from toolkit.serve import Limits, Listen, ModelOptions, build_app, read_token, run

    logging.basicConfig(format="toolkit serve: %(message)s", level=logging.WARNING)
    options = ModelOptions(provider=provider, threads=threads, flags=flags, max_batch=max_batch, max_queue=max_queue,
                           max_delay_s=max_queue_delay_us / 1e6, timeout_s=timeout_s)
    limits = Limits(max_body=max_body, body_timeout_s=body_timeout_s,
                    token=read_token(token_file) if token_file else None)
    if engine == "ray":
        from toolkit.serve.ray_serve import RayListen, Scaling, serve_on_ray

        options.threads = threads or 1  # what each replica reserves and runs ONNX Runtime with
        scaling = Scaling(replicas=replicas, min_replicas=min_replicas, max_replicas=max_replicas,
                          target_ongoing=max_batch)
        listen = RayListen(address=address, host=host, port=port, certfile=certfile, keyfile=keyfile,
                           drain_timeout_s=drain_timeout_s,
                           grpc_port=(grpc_port or None) if _given(ctx, "grpc_port") else None)
        ctx.exit(serve_on_ray(list(zip(model_names, models)), options, limits, listen, scaling))
    app = build_app(list(zip(model_names, models)), options, limits)
    listen = Listen(host=host, port=port, grpc_port=grpc_port or None, certfile=certfile, keyfile=keyfile,
                    drain_timeout_s=drain_timeout_s, max_connections=max_connections)
    ctx.exit(run(app, listen))


def _check_engine(ctx, engine: str, replicas, min_replicas: int, max_replicas: int) -> None:
    ray_only = [f"--{n.replace('_', '-')}" for n in ("address", "replicas", "min_replicas", "max_replicas")
                if _given(ctx, n)]
    if engine != "ray":
        if ray_only:
            raise click.UsageError(f"{ray_only[0]} deploys on Ray Serve: it needs --engine ray")
        return
    if _given(ctx, "max_connections"):
        raise click.UsageError("--max-connections is not available with --engine ray (Ray Serve's proxy has no "
                               "connection limit)")
    if replicas is not None and (_given(ctx, "min_replicas") or _given(ctx, "max_replicas")):
        raise click.UsageError("--min-replicas/--max-replicas bound an autoscaled deployment: give --replicas auto")
    if min_replicas > max_replicas:
        raise click.UsageError(f"--min-replicas {min_replicas} is above --max-replicas {max_replicas}")
