"""shardrec: sharded, replicated recommendation serving (data plane, pipeline, local runtime, CLI)."""

__version__ = "0.1.0"
