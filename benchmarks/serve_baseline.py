"""The peer `toolkit serve` is measured against: what a user writes instead, FastAPI + uvicorn around one ONNX
Runtime session, v2 JSON in and out (/v2/models/NAME/infer, no batching, no binary extension, no limits).

    python benchmarks/serve_baseline.py model.onnx [PORT]      (benchmarks/serve_load.py starts it itself)
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
INPUT, OUTPUT = session.get_inputs()[0].name, session.get_outputs()[0].name
app = FastAPI()


class Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float]


class InferRequest(BaseModel):
    inputs: list[Tensor]


@app.post("/v2/models/{name}/infer")
def infer(name: str, request: InferRequest) -> dict:  # a plain def: FastAPI runs it in its thread pool
    t = request.inputs[0]
    y = session.run([OUTPUT], {INPUT: np.asarray(t.data, dtype=np.float32).reshape(t.shape)})[0]
    return {"model_name": name, "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": list(y.shape),
                                             "data": y.ravel().tolist()}]}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8010, log_level="warning")
