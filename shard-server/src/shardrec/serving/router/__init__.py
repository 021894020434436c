"""The router: the endpoint clients call. It scatter-gathers each request over one replica of every
shard of the active layout and merges the top-k.

Pure decision modules (merge, replicas, hedging, ratelimit, admission, parsing) hold no I/O; the
edges (dispatch, topology sources, manager, app, main) perform it.
"""
