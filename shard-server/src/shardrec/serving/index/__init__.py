"""Index artifacts: embeddings validation, partitioning, per-shard HNSW build, manifests, verification.

Pure of web frameworks: the shard server and the router import from here, never the other way.
"""
