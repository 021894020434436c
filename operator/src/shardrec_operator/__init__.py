"""The kopf operator that reconciles RecommenderCluster objects into shard StatefulSets and a router.

Layers (outermost first): `main` (process) -> `handlers` (kopf decorators) -> `passes` (the kopf
edge: locking, errors, status, Events) -> `reconcile` (observe, plan, execute through one
generic server-side apply) -> `desired` (pure manifest builders). The rollout decisions
themselves are the shared pure planner, `shardrec.planning`.
"""
