"""Training pipeline: load interactions, train implicit-feedback embeddings, evaluate offline.

Modules, each with one job:
- `interactions`: the in-memory interaction table and the generic CSV loader.
- `checksums`, `movielens`, `download`, `sources`: MovieLens folders (verified), their archive,
  and the choice between MovieLens and a CSV.
- `holdout`: leave-last-n-out split by timestamp.
- `training`: ALS (library `implicit`) -> item and user embeddings; `train_job` writes them.
  The embeddings directory itself is read and written by `shardrec.serving.index.embeddings`.
- `metrics`, `recommenders`, `sharded`, `router_client`, `evaluation`, `evaluate_job`: offline
  evaluation of exact, sharded-ANN, router and popularity recommenders, and its table.
"""
