"""Hook looked for by benchmarks/run.py; the router rows live in router_load.py."""

from router_load import run

__all__ = ["run"]
