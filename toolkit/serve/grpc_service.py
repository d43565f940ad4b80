"""The standard ``inference.GRPCInferenceService`` (Open Inference Protocol v2 over gRPC) for a ServeApp.

Messages come from our own inference.proto, compiled to a FileDescriptorProto (inference_descriptor.py)
and turned into classes in a private descriptor pool by google.protobuf's documented message_factory:
no generated code pins a protobuf runtime version, and tritonclient's own ``inference.*`` classes can
live in the same process. Handlers are registered by name with grpc's generic handler API.
Tensors go back as raw_output_contents (little-endian bytes), as Triton sends them.
"""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory

from .inference_descriptor import FILE_DESCRIPTOR
from .model import timed
from .protocol import BYTES, DTYPES, MAX_TENSORS, InferRequest, ProtocolError, Requested, Tensor, check_shape, \
    elements, join_bytes, raw_tensor

SERVICE = "inference.GRPCInferenceService"
# ProtocolError's HTTP status -> the gRPC status the protocol gives for it.
CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED, 404: grpc.StatusCode.NOT_FOUND,
         408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
         415: grpc.StatusCode.INVALID_ARGUMENT, 429: grpc.StatusCode.RESOURCE_EXHAUSTED,
         500: grpc.StatusCode.INTERNAL, 503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED}
# InferTensorContents field per datatype (typed, non-raw requests).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
            "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
            "FP64": "fp64_contents", "BYTES": "bytes_contents"}
# value: needs the token. As over HTTP, only server live/ready are open: a model's readiness would tell a
# client without the token which model names are served.
RPCS = {"ServerLive": False, "ServerReady": False, "ModelReady": True,
        "ServerMetadata": True, "ModelMetadata": True, "ModelInfer": True}


def message_classes() -> dict:
    pool = descriptor_pool.DescriptorPool()
    file = pool.AddSerializedFile(FILE_DESCRIPTOR)
    return {name: message_factory.GetMessageClass(desc) for name, desc in file.message_types_by_name.items()}


class InferenceServicer:
    def __init__(self, app):
        self.app = app
        self.m = message_classes()

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for rpc, guarded in RPCS.items():
            method = getattr(self, rpc)
            handlers[rpc] = grpc.unary_unary_rpc_method_handler(
                self._guard(method, guarded),
                request_deserializer=self.m[f"{rpc}Request"].FromString,
                response_serializer=self.m[f"{rpc}Response"].SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _guard(self, method, guarded: bool):
        async def call(request, context):
            try:
                if guarded:
                    token = dict(context.invocation_metadata()).get("authorization")
                    if not self.app.authorized(token.encode("latin-1") if token is not None else None):
                        raise ProtocolError("missing or wrong bearer token (metadata authorization: Bearer TOKEN)",
                                            401)
                return await method(request, context)
            except ProtocolError as e:
                if e.retry_after is not None:
                    context.set_trailing_metadata((("retry-after", str(int(e.retry_after))),))
                await context.abort(CODES.get(e.status, grpc.StatusCode.UNKNOWN), str(e))
        return call

    async def ServerLive(self, request, context):
        return self.m["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, context):
        return self.m["ServerReadyResponse"](ready=self.app.ready)

    async def ModelReady(self, request, context):
        try:
            model = self.app.model(request.name, request.version)
        except ProtocolError:  # as Triton answers (and tritonclient.http reads a 404): not ready, not an error
            return self.m["ModelReadyResponse"](ready=False)
        return self.m["ModelReadyResponse"](ready=model.ready and not self.app.draining)

    async def ServerMetadata(self, request, context):
        meta = self.app.server_metadata()
        return self.m["ServerMetadataResponse"](**meta)

    async def ModelMetadata(self, request, context):
        meta = self.app.model(request.name, request.version).metadata()
        tensor = self.m["ModelMetadataResponse"].TensorMetadata
        return self.m["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, context):
        model = self.app.model(request.model_name, request.model_version)
        self.app.accept(model)
        self.app.inflight += 1
        try:
            with timed(model.stats):
                ours = self._request(request, context)
                response = await model.infer(ours)
        finally:
            self.app.inflight -= 1
        out = self.m["ModelInferResponse"](model_name=response.model_name, model_version=response.model_version,
                                           id=response.id)
        for t in response.outputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            out.raw_output_contents.append(join_bytes(t.data) if t.datatype == BYTES
                                           else np.ascontiguousarray(t.data).tobytes())
        return out

    @staticmethod
    def _request(request, context) -> InferRequest:
        if len(request.inputs) > MAX_TENSORS or len(request.outputs) > MAX_TENSORS:
            raise ProtocolError(f"at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs are read")
        raw = request.raw_input_contents
        if raw and len(raw) != len(request.inputs):
            raise ProtocolError(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
        ours = InferRequest(id=request.id[:256])
        for i, t in enumerate(request.inputs):
            if t.datatype != BYTES and t.datatype not in DTYPES:
                raise ProtocolError(f"input {t.name!r}: unknown datatype {t.datatype[:20]!r}")
            shape = check_shape(t.name, list(t.shape))
            if raw:
                data = raw_tensor(t.name, t.datatype, shape, memoryview(raw[i]))
            else:
                values = getattr(t.contents, CONTENTS[t.datatype])
                if len(values) != elements(shape):
                    raise ProtocolError(f"input {t.name!r}: shape {shape} holds {elements(shape)} elements, "
                                        f"contents has {len(values)}")
                data = list(values) if t.datatype == BYTES else \
                    np.asarray(values, dtype=DTYPES[t.datatype]).reshape(shape)
            ours.inputs.append(Tensor(t.name, t.datatype, shape, data))
        if request.outputs:
            ours.outputs = [Requested(o.name, True) for o in request.outputs]
        if "timeout" in request.parameters:
            ours.timeout_s = request.parameters["timeout"].int64_param / 1e6 or None
        remaining = context.time_remaining()
        if remaining is not None:
            ours.timeout_s = min(remaining, ours.timeout_s or remaining)
        return ours


async def start_grpc(app, host: str, port: int, max_message: int, credentials=None):
    """A started grpc.aio server on host:port for ``app`` (its port is bound, or OSError)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message),
                                      ("grpc.max_send_message_length", max_message),
                                      ("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=4096)
    server.add_generic_rpc_handlers((app.grpc_handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, credentials) if credentials is not None else \
            server.add_insecure_port(address)
    except RuntimeError:  # grpc raises instead of returning 0 in recent versions
        bound = 0
    if not bound:
        raise OSError(f"cannot listen on {address} for gRPC")
    await server.start()
    return server

