"""gRPC server reflection in both versions clients ask for: grpc.reflection.v1 and the older v1alpha.

grpcio-reflection (1.85) ships v1alpha only (grpc/grpc#38576), while current tools (grpcurl, Postman, grpc-java's
client) ask for v1 first. The two protocols are the same messages under another package name: v1 here is the
library's v1alpha servicer behind v1's method path, with v1's file descriptor, derived from v1alpha's by renaming,
added to the descriptor pool so that reflection can describe v1 itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1ALPHA_SERVICE_NAME", "V1_SERVICE_NAME", "enable_reflection"]

V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """Puts grpc/reflection/v1/reflection.proto in `pool`, unless something (a grpcio-reflection that ships v1)
    already did."""
    # A grpcio-reflection that ships v1 registers the file on import: then that one is used, never a second.
    with contextlib.suppress(ImportError):
        import grpc_reflection.v1.reflection_pb2  # noqa: F401
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    v1 = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(v1)
    # Only names change; every message, field number and type is v1alpha's, as in the upstream v1 file.
    old, new = f".{v1.package}.", ".grpc.reflection.v1."
    v1.name, v1.package = _V1_FILE, "grpc.reflection.v1"
    v1.ClearField("options")  # v1alpha's deprecation and language package options
    for message in v1.message_type:
        for field in message.field:
            if field.type_name.startswith(old):
                field.type_name = new + field.type_name.removeprefix(old)
    for service in v1.service:
        for method in service.method:
            method.input_type = new + method.input_type.removeprefix(old)
            method.output_type = new + method.output_type.removeprefix(old)
    pool.Add(v1)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection v1 and v1alpha on `server`, listing `service_names` and both reflection services."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = sorted({*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME})
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    reflection.enable_server_reflection(names, server, pool=pool)  # v1alpha, as the library registers it
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            # v1's messages are v1alpha's on the wire: same fields, same numbers.
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)
