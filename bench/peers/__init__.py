"""Peers under the same load as this service: LangGraph's local Agent Server and Prefect's server, each installed
in its own venv by `python -m bench.peers.setup`, driven by `python -m bench --peers`.

Modules here that a peer's own Python runs (`langgraph_graph`, `langgraph_load`, `prefect_flow`, `prefect_load`,
`common`) import nothing from this project, so they run in the peer's venv with only the peer installed.
"""
