"""Tests of the Envoy gateway: its config, the sidecar process, and REST through a real Envoy."""
