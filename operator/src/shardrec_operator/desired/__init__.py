"""Pure builders of desired state: a RecommenderCluster (+ a layout) in, Kubernetes manifests out.

No I/O, no clock, no Kubernetes client: `shardrec_operator.reconcile` decides what to apply and
applies it. Modules: `names`, `labels`, `meta` (owner references), `pods` (security context,
volumes, probes, placement), `shard`, `index_build`, `router`, `topology_configmap`, `rbac`, `network`,
`monitoring`, `validation`.
"""
