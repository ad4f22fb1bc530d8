"""Fault injection into real processes: a real PostgreSQL stopped and started, a small tmpfs filled, kills."""
