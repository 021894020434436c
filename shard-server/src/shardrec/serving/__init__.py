"""The data plane: what the serving image runs.

- `index`: index artifacts (embeddings validation, partitioning, per-shard HNSW build, manifests).
- `shard`: the shard server (`shardrec-shard`) and its client.
- `router`: the client endpoint (`shardrec-router`): scatter-gather, merge, replicas, limits.

Never imports `shardrec.planning` or `shardrec.tools` (import-linter layer contracts).
"""
