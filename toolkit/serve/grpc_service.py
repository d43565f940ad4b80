"""The standard ``inference.GRPCInferenceService`` (Open Inference Protocol v2 over gRPC) for a ServeApp.

Messages come from our own inference.proto, compiled to a FileDescriptorProto (inference_descriptor.py)
and turned into classes in a private descriptor pool by google.protobuf's documented message_factory:
no generated code pins a protobuf runtime version, and tritonclient's own ``inference.*`` classes can
live in the same process. Handlers are registered by name with grpc's generic handler API.
Tensors go back as raw_output_contents (little-endian bytes), as Triton sends them.

Two hosts share the same answers (InferenceServicer.answer): a grpc.aio server of our own (handler()), and a
Ray Serve replica behind Serve's gRPC proxy (toolkit.serve.ray_serve), which registers the service with
add_GRPCInferenceServiceServicer_to_server and hands each request's bytes to the replica's over_serve().
"""

from __future__ import annotations

import grpc
import numpy as np
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError

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
        self.infer_response = self.m["ModelInferResponse"]

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
        guarded = guarded and self.app.limits.token is not None  # no token: no metadata to read per call

        async def call(request, context):
            try:
                return await self.answer(method, guarded, request, context.invocation_metadata(),
                                         context.time_remaining())
            except ProtocolError as e:
                if e.retry_after is not None:
                    context.set_trailing_metadata(retry_after(e))
                await context.abort(CODES.get(e.status, grpc.StatusCode.UNKNOWN), str(e))
        return call

    async def answer(self, method, guarded: bool, request, metadata, remaining: float | None):
        """The response message of one RPC; a ProtocolError (the token missing or wrong, a request refused) is
        the caller's to turn into a status. ``metadata`` is the client's (key, value) pairs, ``remaining`` the
        seconds left of its deadline (None: none)."""
        if guarded:
            token = dict(metadata).get("authorization")
            if not self.app.authorized(token.encode("latin-1") if token is not None else None):
                raise ProtocolError("missing or wrong bearer token (metadata authorization: Bearer TOKEN)", 401)
        return await method(request, remaining)

    async def over_serve(self, rpc: str, payload: bytes, grpc_context):
        """One RPC in a Ray Serve replica: ``payload`` is the request as the client serialized it (Serve's proxy
        passes it on untouched, see add_GRPCInferenceServiceServicer_to_server), ``grpc_context`` Serve's
        RayServegRPCContext. Errors become the status, details and trailing metadata our own server sends:
        set on the context, which the proxy copies onto the client's call, with an empty message (grpc sends
        no message with a non-OK status). Nothing is raised: Serve would log a raised error as a failure of
        the deployment and, in its error path, drop the trailing metadata (retry-after)."""
        empty = self.m[f"{rpc}Response"]()
        if len(payload) > self.app.limits.max_body:  # our server's grpc refuses it so (Serve's proxy takes 2 GiB)
            grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            grpc_context.set_details(f"SERVER: Received message larger than max ({len(payload)} vs. "
                                     f"{self.app.limits.max_body})")
            return empty
        try:
            request = self.m[f"{rpc}Request"].FromString(payload)
        except DecodeError as e:  # what grpc itself answers when a request deserializer fails
            grpc_context.set_code(grpc.StatusCode.UNKNOWN)
            grpc_context.set_details(f"Unexpected {type(e)}: {e}")
            return empty
        try:
            # The client's deadline stays with the proxy, which cancels the call when it passes.
            return await self.answer(getattr(self, rpc), RPCS[rpc], request, grpc_context.invocation_metadata(),
                                     None)
        except ProtocolError as e:
            if e.retry_after is not None:
                grpc_context.set_trailing_metadata(list(retry_after(e)))
            grpc_context.set_code(CODES.get(e.status, grpc.StatusCode.UNKNOWN))
            grpc_context.set_details(str(e))
            return empty

    async def ServerLive(self, request, remaining):
        return self.m["ServerLiveResponse"](live=True)

    async def ServerReady(self, request, remaining):
        return self.m["ServerReadyResponse"](ready=self.app.ready)

    async def ModelReady(self, request, remaining):
        try:
            model = self.app.model(request.name, request.version)
        except ProtocolError:  # as Triton answers (and tritonclient.http reads a 404): not ready, not an error
            return self.m["ModelReadyResponse"](ready=False)
        return self.m["ModelReadyResponse"](ready=model.ready and not self.app.draining)

    async def ServerMetadata(self, request, remaining):
        meta = self.app.server_metadata()
        return self.m["ServerMetadataResponse"](**meta)

    async def ModelMetadata(self, request, remaining):
        meta = self.app.model(request.name, request.version).metadata()
        tensor = self.m["ModelMetadataResponse"].TensorMetadata
        return self.m["ModelMetadataResponse"](
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]], outputs=[tensor(**t) for t in meta["outputs"]])

    async def ModelInfer(self, request, remaining):
        model = self.app.model(request.model_name, request.model_version)
        self.app.accept(model)
        self.app.inflight += 1
        try:
            with timed(model.stats):
                ours = self._request(request, remaining)
                response = await model.infer(ours)
        finally:
            self.app.inflight -= 1
        out = self.infer_response(model_name=response.model_name, model_version=response.model_version,
                                           id=response.id)
        for t in response.outputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            out.raw_output_contents.append(join_bytes(t.data) if t.datatype == BYTES
                                           else np.ascontiguousarray(t.data).tobytes())
        return out

    @staticmethod
    def _request(request, remaining: float | None) -> InferRequest:
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
        if remaining is not None:
            ours.timeout_s = min(remaining, ours.timeout_s or remaining)
        return ours


def retry_after(error: ProtocolError) -> tuple:
    return (("retry-after", str(int(error.retry_after))),)


def add_GRPCInferenceServiceServicer_to_server(servicer, server) -> None:
    """Registers inference.GRPCInferenceService on ``server`` for Ray Serve's gRPC proxy, which imports it by
    this name (gRPCOptions.grpc_servicer_functions; the name follows grpcio-tools' generated code, which Serve
    expects). The proxy keeps each method's request deserializer and replaces its behaviour and response
    serializer (ray/serve/_private/grpc_util.py, gRPCGenericServer): with none here, a request reaches the
    replica as the bytes the client sent (the proxy's pickle could not carry a message class of our private
    descriptor pool) and the replica's answer is serialized there. ``servicer``'s methods, of the RPCs' names,
    are what an ordinary grpc server would call with those bytes."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {rpc: grpc.unary_unary_rpc_method_handler(getattr(servicer, rpc)) for rpc in RPCS}),))


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

