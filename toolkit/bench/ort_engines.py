"""ONNX Runtime engines: the exported float32 model and the variants made from it (one per row of toolkit.formats)."""

from __future__ import annotations

import time

import numpy as np

from .. import runtime
from ..contract import has_contract
from ..errors import ModelError, ProviderUnavailable
from .engine import Case, Engine, Instance, format_engines

SPINNING = "1"  # worker threads spin between runs: lowest latency for back-to-back calls


def bench_options(threads: int):
    """Session options tuned for speed; recorded in the report as they are set."""
    ort = runtime.import_ort()
    opts = runtime.session_options(threads)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", SPINNING)
    config = {"graph_optimization_level": "ORT_ENABLE_ALL", "execution_mode": "ORT_SEQUENTIAL",
              "intra_op_num_threads": threads, "inter_op_num_threads": 1, "intra_op.allow_spinning": SPINNING}
    return opts, config


class OrtInstance(Instance):
    def __init__(self, session, provider: str, config: dict, threads: int, cuda_graph: bool, path):
        super().__init__(providers_used=list(session.get_providers()), config=config)
        self.session = session
        self.provider = provider
        self.threads = threads
        self.cuda_graph = cuda_graph
        self.path = path
        self.input = session.get_inputs()[0].name
        self.output = session.get_outputs()[0]
        first = session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None
        self._graph_sessions = []
        self.guard = None  # toolkit.run_guard.Guard, set by ``probe``

    def probe(self, limit) -> None:
        """Bound every run by ``limit`` (seconds per run) and find the batch size the graph really accepts (a
        graph that runs at one size only is then timed at that size, as one whose batch is fixed)."""
        from ..batch_limits import accepted_batch
        from ..run_guard import PROBE_TIMEOUT, Guard, check_limit

        self.guard = Guard(self.session, self.path, limit)
        probe_limit = PROBE_TIMEOUT if self.guard.limit is None else min(self.guard.limit, PROBE_TIMEOUT)
        row = [int(d) for d in self.session.get_inputs()[0].shape[1:]]
        self.fixed_batch = accepted_batch(self.guard, (self.input, self.output.name), row, self.fixed_batch, None,
                                          probe_limit)

    def cases(self, x: np.ndarray) -> list[Case]:
        session, feed, out, guard = self.session, {self.input: x}, [self.output.name], self.guard
        e2e = Case("e2e", lambda: guard.run(out, feed))
        if self.provider == "cpu":
            return [e2e]
        binding, x_dev, y_dev = self._bind(session, x)
        # run_with_iobinding returns after the CUDA stream is synchronised (ORT's default),
        # so the clock stops when the result is really there.
        cases = [Case("device", lambda: session.run_with_iobinding(binding)), e2e,
                 Case("h2d", lambda: x_dev.update_inplace(x), x.nbytes),
                 Case("d2h", lambda: y_dev.numpy(), int(np.prod(y_dev.shape())) * 4)]
        graph = self._graph_case(x) if self.cuda_graph else None
        return cases + ([graph] if graph else [])

    def _bind(self, session, x: np.ndarray):
        """Input and output OrtValues resident on cuda:0, bound to ``session``."""
        dims = self.output.shape[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ModelError(self.path, f"output shape {self.output.shape} is not fixed apart from the batch axis; "
                                        "cannot pre-allocate device outputs")
        ort = runtime.import_ort()
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        y_dev = ort.OrtValue.ortvalue_from_shape_and_type([len(x), *dims], np.float32, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(self.input, x_dev)
        binding.bind_ortvalue_output(self.output.name, y_dev)
        return binding, x_dev, y_dev

    def _graph_case(self, x: np.ndarray) -> Case | None:
        """A CUDA graph is captured for fixed buffers, so each batch size gets its own session."""
        t0 = time.perf_counter()
        try:
            session = runtime.session_on(self.path, "cuda", bench_options(self.threads)[0], {"enable_cuda_graph": "1"})
        except (ModelError, ProviderUnavailable) as e:
            # ORT refuses graph capture when any node would run outside the CUDA EP.
            self.notes.append(f"cuda-graph not timed for batch {len(x)}: {e}")
            return None
        self.notes.append(f"cuda-graph session for batch {len(x)} created in {time.perf_counter() - t0:.3f} s")
        self._graph_sessions.append(session)
        bound = self._bind(session, x)  # the lambda keeps the device buffers alive with the binding
        return Case("cuda-graph", lambda: session.run_with_iobinding(bound[0]))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.guard.run([self.output.name], {self.input: x})[0]

    def close(self) -> None:
        self._graph_sessions.clear()
        self.session = None


_cuda_probe: dict[str, str | None] = {}


class OrtFileEngine(Engine):
    """An ONNX file beside the model, run by ONNX Runtime with the benchmark's session options."""

    def cuda_problem(self, threads: int) -> str | None:
        key = str(self.artifact().resolve())
        if key not in _cuda_probe:
            try:
                runtime.session_on(self.artifact(), "cuda", bench_options(threads)[0])
                _cuda_probe[key] = None
            except ProviderUnavailable as e:
                _cuda_probe[key] = f"onnxruntime: {e}"
        return _cuda_probe[key]

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        opts, config = bench_options(threads)
        session = runtime.session_on(self.artifact(), provider, opts)
        if provider == "cuda":
            config = {**config, "cuda_graph": bool(options.get("cuda_graph"))}
        instance = OrtInstance(session, provider, config, threads,
                               bool(options.get("cuda_graph")) and provider == "cuda", self.artifact())
        from ..run_guard import DEFAULT_RUN_TIMEOUT

        timeout = options.get("run_timeout")
        instance.probe(DEFAULT_RUN_TIMEOUT if timeout is None else timeout)
        # export writes the precision into each file's contract ("int8" for the quantized one); a model
        # described by options (checked by the runner) has none: its input is float32
        has = has_contract(session.get_modelmeta().custom_metadata_map)
        instance.precision = runtime.read_contract(session, self.artifact()).precision if has else "float32"
        if instance.precision != self.precision:
            instance.notes.append(f"the contract of {self.artifact().name} says {instance.precision}, "
                                  f"not the {self.precision} this engine expects")
        return instance


class OrtEngine(OrtFileEngine):
    """The float32 ONNX file is the --model itself, whatever its name."""

    name = "onnx"
    description = "ONNX Runtime, the exported float32 model (--model)"

    def artifact(self):
        return self.model


# One per ONNX row of toolkit.formats, named after the format (onnx, int8, int8-static, fp16).
ORT_ENGINES: dict[str, type[Engine]] = format_engines(__name__, {c.__name__: c for c in (OrtEngine, OrtFileEngine)})
