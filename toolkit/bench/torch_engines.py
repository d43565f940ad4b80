"""PyTorch engines for comparison: TorchScript (<stem>.pt) and eager (<stem>.pth checkpoint).

torch is imported inside functions only, and only when one of these engines is opened:
the ONNX-only path never loads it.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import ProviderUnavailable
from .base import Case, Engine, EngineUnavailable, Instance, register


def import_torch():
    try:
        import torch
    except Exception as e:  # a broken install raises more than ImportError
        raise EngineUnavailable(f"torch cannot be imported ({type(e).__name__}: {e})") from None
    return torch


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
            def e2e():
                return module(torch.from_numpy(x)).numpy()

            return [Case("e2e", e2e)]

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

        def e2e():
            return module(torch.from_numpy(x).to("cuda")).cpu().numpy()  # .cpu() waits for the result

        def h2d():
            torch.from_numpy(x).to("cuda")
            sync()

        def d2h():
            return y_dev.cpu()

        return [Case("device", device), Case("e2e", e2e), Case("h2d", h2d, x.nbytes),
                Case("d2h", d2h, y_dev.numel() * y_dev.element_size())]

    def close(self) -> None:
        self.module = None


class _TorchEngine(Engine):
    def prepare(self) -> None:
        import_torch()

    def missing(self) -> str | None:
        problem = super().missing()
        if problem:
            return problem
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed"
        return None

    def cuda_problem(self, threads: int) -> str | None:
        try:
            torch = import_torch()
        except EngineUnavailable as e:
            return str(e)
        if not torch.cuda.is_available():
            built = torch.version.cuda
            return (f"torch {torch.__version__} cannot use CUDA here"
                    + (f" (built for CUDA {built}; no usable device or driver)" if built else " (a CPU-only build)"))
        return None

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        torch = import_torch()
        if provider == "cuda" and not torch.cuda.is_available():
            raise ProviderUnavailable(self.cuda_problem(threads))
        torch.set_num_threads(threads)
        module = self.load(torch, provider)
        config = {"torch_threads": torch.get_num_threads(), "inference_mode": True}
        return TorchInstance(torch, module, provider, config)

    def load(self, torch, device: str):
        raise NotImplementedError


@register
class TorchScriptEngine(_TorchEngine):
    name = "torchscript"
    description = "TorchScript module written by export (<stem>.pt)"
    suffix = ".pt"

    def load(self, torch, device: str):
        import warnings

        from ..errors import ModelError

        try:
            with warnings.catch_warnings():
                # torch.jit.load's deprecation notice is for torch users, not for someone timing a .pt file.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(self.artifact()), map_location=device)
        except Exception as e:  # torch raises assorted types for unreadable archives
            raise ModelError(self.artifact(), f"not a loadable TorchScript file ({type(e).__name__})") from None
        return module.eval()


@register
class EagerEngine(_TorchEngine):
    name = "eager"
    description = "eager PyTorch, rebuilt from the checkpoint (<stem>.pth)"
    suffix = ".pth"

    def load(self, torch, device: str):
        from toolkit.train.checkpoint import build_model, load_checkpoint

        return build_model(load_checkpoint(self.artifact())).to(device)
