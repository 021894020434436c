"""Capacity planning from measured coefficients, and a tail-latency simulation of scatter-gather.

- `coefficients`: the model of `benchmarks/coefficients.json` (what `make bench` measured) and the
  cost functions derived from it (bytes per item, CPU per query, bytes on the wire).
- `scale`: the search and build cost by size that `make bench-scale` measured (ef for a recall
  target, CPU per search, exclusions, build rate) and the fits that extrapolate it.
- `planner`: pure arithmetic from a target (peak QPS, items, users, recall, ...) to a plan.
- `pipeline`: pure arithmetic from the plan and stated assumptions to the stages around it (events,
  training cost from the measured train-rate points, freshness, caching, ranking, A/B, regions,
  cost per 1k requests).
- `report`: the plan and the pipeline as tables.
- `tailsim`: a seeded numpy simulation of p50/p99/p99.9 against shards, replicas, hedging, CPU load
  and a slow replica (replicas are occupied by the CPU of a search; several seeds with intervals),
  and optionally every process of the fleet on one pool of shared cores (an event simulation).

No module here performs I/O except `coefficients.load_coefficients`.
"""
