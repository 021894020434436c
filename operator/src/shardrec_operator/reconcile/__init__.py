"""Side effects: observe the cluster, run the planner, execute its actions, report the outcome.

Entry point: `driver.reconcile_cluster`. Everything that talks to Kubernetes goes through the
`cluster_api.ClusterApi` protocol (`kubernetes_api` for real, an in-memory double in the tests), and
every child is written by one generic server-side apply (`apply.apply_child`).
"""
