"""The local runtime: a whole RecommenderCluster as processes on 127.0.0.1, driven by the same
rollout planner as the Kubernetes operator (`recctl up/apply/status/down`)."""
