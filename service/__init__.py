"""The transport: protobuf, gRPC and the process around them. The domain lives in `orchestrator/`."""
