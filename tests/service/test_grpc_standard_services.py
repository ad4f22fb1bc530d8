"""The standard gRPC services a tool finds on the server: grpc.health.v1 (Check, Watch and List) and server
reflection in both versions, v1 and v1alpha, over a real channel."""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.health import HealthServicer
from service.server import LIVENESS

pytestmark = pytest.mark.timeout(60)

SERVICE = "orchestrator.v1.OrchestratorService"
HEALTH = "grpc.health.v1.Health"
V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"

# grpc/reflection/v1/reflection.proto as grpc-proto publishes it (comments left out): a v1 client made from the
# upstream contract, not from the server's own copy.
V1_PROTO = """
syntax = "proto3";
package grpc.reflection.v1;
option go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1";
option java_multiple_files = true;
option java_package = "io.grpc.reflection.v1";
option java_outer_classname = "ServerReflectionProto";
service ServerReflection {
  rpc ServerReflectionInfo(stream ServerReflectionRequest) returns (stream ServerReflectionResponse);
}
message ServerReflectionRequest {
  string host = 1;
  oneof message_request {
    string file_by_filename = 3;
    string file_containing_symbol = 4;
    ExtensionRequest file_containing_extension = 5;
    string all_extension_numbers_of_type = 6;
    string list_services = 7;
  }
}
message ExtensionRequest {
  string containing_type = 1;
  int32 extension_number = 2;
}
message ServerReflectionResponse {
  string valid_host = 1;
  ServerReflectionRequest original_request = 2;
  oneof message_response {
    FileDescriptorResponse file_descriptor_response = 4;
    ExtensionNumberResponse all_extension_numbers_response = 5;
    ListServiceResponse list_services_response = 6;
    ErrorResponse error_response = 7;
  }
}
message FileDescriptorResponse { repeated bytes file_descriptor_proto = 1; }
message ExtensionNumberResponse {
  string base_type_name = 1;
  repeated int32 extension_number = 2;
}
message ListServiceResponse { repeated ServiceResponse service = 1; }
message ServiceResponse { string name = 1; }
message ErrorResponse {
  int32 error_code = 1;
  string error_message = 2;
}
"""


@pytest.fixture(scope="module")
def v1_messages(tmp_path_factory: pytest.TempPathFactory) -> tuple[type[Any], type[Any]]:
    """(ServerReflectionRequest, ServerReflectionResponse) of v1, compiled with protoc into a private pool (the
    default pool is the server's)."""
    work = tmp_path_factory.mktemp("reflection-v1")
    (work / "grpc" / "reflection" / "v1").mkdir(parents=True)
    (work / "grpc" / "reflection" / "v1" / "reflection.proto").write_text(V1_PROTO)
    out = work / "v1.pb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{work}", f"--descriptor_set_out={out}",
         "grpc/reflection/v1/reflection.proto"],
        check=True,
        timeout=60,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    for proto in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        pool.Add(proto)
    request = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    return request, response


async def test_health_list_names_every_service_and_its_status(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    statuses = {name: response.status for name, response in listed.statuses.items()}
    assert statuses == {"": serving, SERVICE: serving, LIVENESS: serving}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no traceback in the log


async def test_health_list_follows_set_and_graceful_shutdown() -> None:
    servicer = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            async def listed() -> dict[str, int]:
                response = await stub.List(health_pb2.HealthListRequest(), timeout=10)
                return {name: status.status for name, status in response.statuses.items()}

            serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
            assert await listed() == {"": serving}
            await servicer.set("a.Service", not_serving)
            await servicer.set("b.Service", serving)
            assert await listed() == {"": serving, "a.Service": not_serving, "b.Service": serving}
            await servicer.enter_graceful_shutdown()
            await servicer.set("b.Service", serving)  # ignored once shutting down, as Check sees it
            assert await listed() == {"": not_serving, "a.Service": not_serving, "b.Service": not_serving}
            check = await stub.Check(health_pb2.HealthCheckRequest(service="b.Service"), timeout=10)
            assert check.status == not_serving
    finally:
        await server.stop(None)


async def test_reflection_v1alpha_lists_both_reflection_versions(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [r async for r in stub.ServerReflectionInfo(iter([request]), timeout=10)]
    names = {s.name for s in responses[0].list_services_response.service}
    assert names == {SERVICE, HEALTH, V1, V1ALPHA}


async def test_reflection_v1_lists_and_describes_services(
    channel: grpc.aio.Channel, v1_messages: tuple[type[Any], type[Any]]
) -> None:
    request_type, response_type = v1_messages
    call = channel.stream_stream(
        f"/{V1}/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    requests = [
        request_type(list_services=""),
        request_type(file_containing_symbol=SERVICE),
        request_type(file_containing_symbol=V1),
        request_type(file_containing_symbol="no.such.Symbol"),
    ]
    listed, service_file, v1_file, missing = [r async for r in call(iter(requests), timeout=10)]

    assert {s.name for s in listed.list_services_response.service} == {SERVICE, HEALTH, V1, V1ALPHA}

    def files(response: Any) -> dict[str, descriptor_pb2.FileDescriptorProto]:
        blobs = response.file_descriptor_response.file_descriptor_proto
        return {f.name: f for f in map(descriptor_pb2.FileDescriptorProto.FromString, blobs)}

    described = files(service_file)
    assert "OrchestratorService" in {s.name for f in described.values() for s in f.service}
    v1 = files(v1_file)["grpc/reflection/v1/reflection.proto"]
    assert v1.package == "grpc.reflection.v1"
    method = v1.service[0].method[0]
    assert (method.name, method.input_type) == ("ServerReflectionInfo", ".grpc.reflection.v1.ServerReflectionRequest")
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
