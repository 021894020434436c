"""The carry of item writes into a new layout, in the data plane (docs/operator.md, "Item writes").

- forwarding.py: one forwarding pass (re-partition, send to the new leaders, replicate to their
  followers), parameterised by where the old records come from and how a new leader's log is read;
  both runtimes use it (tools/local/carry.py reads files, the carrier reads HTTP pages).
- store.py: a carry folder on the index store (a path or s3://), published with `carry.json` last.
- carrier.py, kube.py, __main__.py: the Kubernetes carrier process (`python -m shardrec.serving.carry`).
"""
