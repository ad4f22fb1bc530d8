"""The domain: workflow definitions, the durable engine, agents and their models. Knows nothing of gRPC."""
