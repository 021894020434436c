"""`recctl` and what only it runs: the training pipeline, capacity planning, the local runtime.

- `pipeline`: MovieLens/CSV interactions -> ALS embeddings -> offline evaluation.
- `capacity`: sizing from measured coefficients, and the tail-latency simulation.
- `local`: a RecommenderCluster as processes on 127.0.0.1, driven by the rollout planner.
- `cli`: the `recctl` command line.

The top layer inside `shardrec`: may import `serving`, `planning` and `api`; nothing imports it.
"""
