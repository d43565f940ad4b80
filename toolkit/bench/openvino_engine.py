"""OpenVINO on the CPU, reading the exported ONNX file directly: what Intel-edge users pick instead of ORT.

Its CPU plugin chooses the inference precision itself (bf16 on CPUs with AMX, f16 on some ARM cores,
f32 elsewhere); the precision reported is the one the compiled model says it uses
(``INFERENCE_PRECISION_HINT`` read back from it), never an assumption.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from ..errors import EngineUnavailable
from .engine import Case, Engine, Instance

INSTALL = "pip install openvino"


class OpenVinoInstance(Instance):
    def __init__(self, compiled, device_name: str, config: dict):
        super().__init__(providers_used=[f"openvino CPU ({device_name})"], config=config)
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def cases(self, x: np.ndarray) -> list[Case]:
        request = self.request
        # infer() copies the outputs into host arrays: the same host-in, host-out contract as ORT's run()
        return [Case("e2e", lambda: request.infer({0: x}))]

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: x})[0])

    def close(self) -> None:
        self.request = self.compiled = None


class OpenVinoEngine(Engine):
    name = "openvino"
    description = "OpenVINO CPU plugin, compiling the exported ONNX file (--model)"

    def artifact(self):
        return self.model

    def missing(self) -> str | None:
        problem = super().missing()
        if problem:
            return problem
        return f"openvino is not installed ({INSTALL})" if importlib.util.find_spec("openvino") is None else None

    def prepare(self) -> None:
        self._ov()

    @staticmethod
    def _ov():
        try:
            import openvino
        except Exception as e:  # a broken install raises more than ImportError
            raise EngineUnavailable(f"openvino cannot be imported ({type(e).__name__}: {e})") from None
        return openvino

    def open(self, provider: str, threads: int, options: dict) -> Instance:
        ov = self._ov()
        core = ov.Core()
        compiled = core.compile_model(str(self.artifact()), "CPU", {"INFERENCE_NUM_THREADS": threads})
        used = str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())  # e.g. f32, bf16
        instance = OpenVinoInstance(compiled, core.get_property("CPU", "FULL_DEVICE_NAME"),
                                    {"openvino": ov.__version__, "inference_num_threads": threads,
                                     "inference_precision": used})
        instance.precision = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(used, used)
        return instance


OPENVINO_ENGINES: dict[str, type[Engine]] = {OpenVinoEngine.name: OpenVinoEngine}
