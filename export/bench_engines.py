"""The torch side of `toolkit bench`: TorchScript (.pt), torch.export (.pt2), ExecuTorch (.pte) and eager (.pth)
engines; the CUDA peak.

torch is imported inside functions only, when one of these engines is opened (or CUDA is
probed): importing this module, and a run with only ONNX files present, never loads it.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from toolkit.bench.engine import Case, Engine, Instance, format_engines
from toolkit.bench.peak import SHAPES, Peak, peak_of, shape_rate
from toolkit.errors import EngineUnavailable, ProviderUnavailable
from toolkit.formats import BY_NAME
from toolkit.runtime import captured_stderr


def import_torch():
    try:
        import torch
    except Exception as e:  # a broken install raises more than ImportError
        raise EngineUnavailable(f"torch cannot be imported ({type(e).__name__}: {e})") from None
    return torch


def _cuda_problem(torch) -> str | None:
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    return (f"torch {torch.__version__} cannot use CUDA here"
            + (f" (built for CUDA {built}; no usable device or driver)" if built else " (a CPU-only build)"))


class TorchInstance(Instance):
    def __init__(self, torch, module, device: str, config: dict):
        used = [f"cuda:0 ({torch.cuda.get_device_name(0)})"] if device == "cuda" else ["cpu"]
        super().__init__(providers_used=used, config=config)
        self.torch = torch
        self.module = module
        self.device = device

    def context(self):
        return self.torch.inference_mode()

    def cases(self, x: np.ndarray) -> list[Case]:
        torch, module = self.torch, self.module
        if self.device == "cpu":
            # from_numpy and .numpy() share memory: the same host-array contract as ORT's run().
            return [Case("e2e", lambda: module(torch.from_numpy(x)).numpy())]

        sync = torch.cuda.synchronize
        with torch.inference_mode():
            x_dev = torch.from_numpy(x).to("cuda")
            y_dev = module(x_dev)
        sync()

        # CUDA kernels are asynchronous: every run ends with a synchronize so the
        # clock stops when the work is done, not when it was queued.
        def device():
            module(x_dev)
            sync()

        def h2d():
            torch.from_numpy(x).to("cuda")
            sync()

        return [Case("device", device),
                Case("e2e", lambda: module(torch.from_numpy(x).to("cuda")).cpu().numpy()),  # .cpu() waits
                Case("h2d", h2d, x.nbytes),
                Case("d2h", lambda: y_dev.cpu(), y_dev.numel() * y_dev.element_size())]

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.module(self.torch.from_numpy(x).to(self.device)).cpu().numpy().copy()

    def close(self) -> None:
        self.module = None


class ExecuTorchInstance(Instance):
    def __init__(self, torch, method, config: dict):
        super().__init__(providers_used=["executorch runtime (XNNPACK delegate, CPU)"], config=config)
        from .executorch_export import MAX_BATCH

        self.torch, self.method, self.max_batch = torch, method, MAX_BATCH

    def cases(self, x: np.ndarray) -> list[Case]:
        torch, method = self.torch, self.method
        with captured_stderr():  # the first call of each new shape logs CPU probing lines on fd 2
            method.execute([torch.from_numpy(x)])
        return [Case("e2e", lambda: method.execute([torch.from_numpy(x)])[0].numpy())]

    def predict(self, x: np.ndarray) -> np.ndarray:
        outs = [self.method.execute([self.torch.from_numpy(x[i:i + self.max_batch])])[0].detach().numpy().copy()
                for i in range(0, len(x), self.max_batch)]
        return np.concatenate(outs)

    def close(self) -> None:
        self.method = None


class _TorchEngine(Engine):
    def prepare(self) -> None:
        import_torch()

    def missing(self) -> str | None:
        problem = super().missing()
        if problem:
            return problem
        return "torch is not installed" if importlib.util.find_spec("torch") is None else None

    def cuda_problem(self, threads: int) -> str | None:
        try:
            return _cuda_problem(import_torch())
        except EngineUnavailable as e:
            return str(e)

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        torch = import_torch()
        if provider == "cuda" and not torch.cuda.is_available():
            raise ProviderUnavailable(_cuda_problem(torch))
        torch.set_num_threads(threads)
        module = self.load().to(provider)
        return TorchInstance(torch, module, provider, {"torch_threads": torch.get_num_threads(), "inference_mode": True})

    def load(self):
        raise NotImplementedError


# The format engines take their name, suffix and description from their row of toolkit.formats (TORCH_ENGINES).
class TorchScriptEngine(_TorchEngine):

    def load(self):
        from .torchscript_export import load_torchscript

        return load_torchscript(self.artifact())[0]  # a ModelError names an unreadable file


class Pt2Engine(_TorchEngine):
    """Run as the program's module()."""

    def load(self):
        from .pt2_export import load_pt2

        return load_pt2(self.artifact())[0].module()


class EagerEngine(_TorchEngine):
    name = "eager"
    description = "eager PyTorch, rebuilt from the checkpoint (<stem>.pth)"
    suffix = ".pth"

    def load(self):
        from toolkit.train.checkpoint import build_model, load_checkpoint

        return build_model(load_checkpoint(self.artifact()))


class ExecuTorchEngine(Engine):
    """Run by executorch.runtime."""

    def missing(self) -> str | None:
        problem = super().missing()
        if problem:
            return problem
        return (f"executorch is not installed ({BY_NAME['executorch'].install})"
                if importlib.util.find_spec("executorch") is None else None)

    def prepare(self) -> None:
        from .quiet import quiet_torch

        import_torch()
        try:
            with quiet_torch(), captured_stderr():  # an ExperimentalWarning and C++ log lines at import
                import executorch.runtime  # noqa: F401  (its import is slow: not billed as session creation)
        except Exception as e:
            raise EngineUnavailable(f"executorch cannot be imported ({type(e).__name__}: {e})") from None

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        from .executorch_export import load_executorch

        torch = import_torch()
        # XNNPACK sizes its own thread pool; torch's setting is recorded for the portable (non-delegated) ops.
        torch.set_num_threads(threads)
        return ExecuTorchInstance(torch, load_executorch(self.artifact()), {"torch_threads": torch.get_num_threads()})


TORCH_ENGINES: dict[str, type[Engine]] = {
    **format_engines(__name__, {c.__name__: c for c in (TorchScriptEngine, Pt2Engine, ExecuTorchEngine)}),
    EagerEngine.name: EagerEngine,  # the reference, not an export format
}


def cuda_peak(threads: int) -> Peak:
    """A torch float32 matmul on the GPU, TF32 off; ``threads`` is unused (the GPU sets its own pace)."""
    torch = import_torch()
    problem = _cuda_problem(torch)
    if problem:
        raise ProviderUnavailable(problem)
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would not be a float32 rate
    rows = []
    for shape in SHAPES:
        m, k, n = (s * 4 for s in shape)  # a GPU needs bigger matrices to reach its rate
        a, b = torch.randn(m, k, device="cuda"), torch.randn(k, n, device="cuda")

        def matmul():
            a @ b
            torch.cuda.synchronize()

        rows.append(shape_rate((m, k, n), matmul))
    return peak_of("cuda", rows, library=f"torch {torch.__version__} (CUDA {torch.version.cuda}, TF32 off)",
                   gpu=torch.cuda.get_device_name(0))
