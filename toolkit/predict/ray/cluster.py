"""Starting or joining a Ray cluster for one predict run, and sizing the run from its resources.

Without an address, a local Ray instance sized to this machine is started and stopped with the run. With
one, the driver joins that cluster; Ray 2.60 clusters require their authentication token, and its drivers
still default to sending none, so RAY_AUTH_MODE=token is set unless the environment chose a mode. The token
itself is Ray's business: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

A join fails fast: the address's TCP port is tried first (Ray's own client waits out minutes of retries on a
closed port), and Ray's wait for the cluster's GCS is bounded (RAY_gcs_server_port_wait_time_s, unless set).
Failures are told apart by exception type and by what this process knows (where a token would come from),
never by the wording of Ray's messages.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from pathlib import Path

from ...errors import ClusterUnavailable
from ...machine import usable_cpus
from ...text import first_line

INSTALL = "pip install 'toolkit[cluster]'"
# Files per decode task: large enough that task overhead (~ms) is small against decoding (~50 us a file).
MAX_BLOCK = 2048
# A live head answers a TCP connect in milliseconds and its GCS at once; these bound a join that cannot succeed.
PROBE_SECONDS = 5.0
GCS_WAIT_SECONDS = "10"


def import_ray(address: str | None = None):
    if address and "RAY_AUTH_MODE" not in os.environ:
        # Ray reads the mode when imported: a joining driver must send the cluster's token (see above).
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ClusterUnavailable(f"--engine ray needs Ray Data, which is not installed; install it with: {INSTALL}") \
            from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None):
    """Join the cluster at ``address`` or start a local one; leave (stopping a local one) however the run ends.

    Yields (the ray module, seconds it took to start or join).
    """
    ray = import_ray(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ core logs warnings (e.g. on the actor pool's pickled arguments) straight to this process's
    # stderr; the CLI's rule is one line per problem, said by us. Set it to "warning" to see them again.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    started = time.perf_counter()
    from ...runtime import captured_stderr

    # Ray's C++ client logs every refused retry (and its own log level) on stderr: the reason is said once, below.
    # Processes a local start spawns write to Ray's log files, not to this captured stream.
    if address:
        probe(address)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", GCS_WAIT_SECONDS)
    with captured_stderr():
        try:
            if address:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
            else:
                # "local": a new instance even where `ray start` runs one on this machine (ray.init would join it)
                ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=False, logging_level="ERROR",
                         log_to_driver=False)
        except Exception as e:
            if address:
                raise ClusterUnavailable(_join_failure(ray, address, e)) from None
            raise ClusterUnavailable(f"cannot start a local Ray instance ({type(e).__name__}: "
                                     f"{first_line(e, 300)})") from None
    try:
        import logging

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # Blocks come back in input order: the first rows are written as soon as the first block is done (a
        # stopped run keeps them), and the driver's reorder buffer holds nothing but replays.
        ctx.execution_options.preserve_order = True
        ctx.raise_original_map_exception = True  # a task's own (typed) error, not Ray Data's UserCodeException
        # "execution finished in ..." and a failed task's traceback: the reason is said once, by us
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        yield ray, time.perf_counter() - started
    finally:
        ray.shutdown()


def probe(address: str) -> None:
    """ClusterUnavailable at once when nothing accepts a TCP connection at ``address``'s host and port."""
    target = host_port(address)
    if target is None:  # "auto" and the like: Ray finds the cluster itself
        return
    host, port = target
    try:
        with socket.create_connection((host, port), timeout=PROBE_SECONDS):
            pass
    except ConnectionRefusedError:
        why = "connection refused: nothing listens on that port"
    except TimeoutError:
        why = f"no answer within {PROBE_SECONDS:g} s"
    except socket.gaierror:
        why = f"unknown host {host}"
    except OSError as e:
        why = e.strerror or type(e).__name__
    else:
        return
    raise ClusterUnavailable(f"cannot join the Ray cluster at {address} ({why}); is `ray start --head` running "
                             "there, and is this its GCS port (6379 by default)?")


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of HOST:PORT, [IPv6]:PORT or ray://HOST:PORT; None for anything else."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def token_available() -> bool:
    """Whether this process has a token Ray would send (the places cluster.py's docstring lists)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(path).expanduser().is_file() if path else (Path.home() / ".ray" / "auth_token").is_file()


def _join_failure(ray, address: str, error: Exception) -> str:
    """The reason a join failed, by type: Ray's AuthenticationError, or a ConnectionError after the port answered."""
    get = "set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH to a file holding it (`ray get-auth-token` on the head prints it)"
    errors = list(_chain(error))
    if any(isinstance(e, ray.exceptions.AuthenticationError) for e in errors) and not token_available():
        return f"the Ray cluster at {address} requires its authentication token and this machine has none: {get}"
    if any(isinstance(e, (ray.exceptions.AuthenticationError, ConnectionError)) for e in errors):
        # The TCP port answered (probe), yet the cluster would not take this driver.
        return (f"the Ray cluster at {address} refused this driver: its authentication token is missing or wrong, "
                f"or that port is not a Ray head's GCS ({get})")
    return f"cannot join the Ray cluster at {address} ({type(error).__name__}: {first_line(error, 300)})"


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def plan(ray, files: int, provider: str) -> dict:
    """How many block tasks, and the GPU share of each, from the cluster's resources (see engine's docstring)."""
    resources = ray.cluster_resources()
    cpus = max(1.0, float(resources.get("CPU", 1)))
    gpus = float(resources.get("GPU", 0))
    # With CUDA every CPU still decodes: tasks share the GPUs (a fraction each), so a GPU never waits on one core.
    share = min(1.0, gpus / cpus) if provider == "cuda" and gpus else 1.0
    # A few blocks per CPU keep every slot busy and bound what waits in the reorder buffer.
    blocks = max(1, min(math.ceil(files / 64), max(math.ceil(files / MAX_BLOCK), int(cpus * 4))))
    return {"cpus": cpus, "gpus_per_task": share, "blocks": blocks, "block_files": math.ceil(files / blocks)}
