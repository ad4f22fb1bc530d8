"""The Envoy sidecar that serves the orchestrator's REST API: its bootstrap config and a process runner."""
