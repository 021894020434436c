"""Where a cluster's layouts live in the index store, and the pod pieces that reach an object store.

Two kinds of store (`spec.index.store`, exactly one on Kubernetes):
- `persistentVolumeClaim`: every build, shard and router pod mounts the claim; a layout is the
  folder `/store/<cluster>/layouts/<layout id>` (as before).
- `objectStore`: nothing is mounted. A layout is `<url>/<namespace>/<cluster>/layouts/<layout id>/`
  (a bucket is shared across namespaces, a claim is not, hence the namespace). Builds upload
  there; each shard pod's init container copies only its own shard's files into a local volume
  with `recctl index fetch --shard N` (checksums verified against the layout manifest) before the
  shard server starts, so readiness still means "this shard's index is loaded".

The local volume is an emptyDir, not a generic ephemeral volume: it needs no StorageClass or
dynamic provisioner, adds no PVC objects to create and clean up, and starts without a volume
attach; the copy is a cache of an immutable object, so losing it with the pod costs only a
re-download. Its `sizeLimit` is the shard container's memory (limit, else request): a shard
loads its whole partition into memory, so its files cannot be larger than what it may use, and
a runaway copy is evicted instead of filling the node's disk. Without a memory setting there is
no limit.

Credentials: only as environment variables from the Secret named by
`spec.index.objectStore.credentialsSecretRef` (`secretKeyRef`), never in a command line, an
annotation or the status.
"""

from __future__ import annotations

from typing import Any, Final

from shardrec.api import v1alpha1 as api
from shardrec.api.carry import CARRY_BACK_FOLDERS, CARRY_FOLDERS
from shardrec.api.commands import S3_CREDENTIAL_VARIABLES, ObjectStoreFlags, index_fetch_arguments
from shardrec_operator.desired import pods

LAYOUT_VOLUME: Final = "layout"
LAYOUT_MOUNT: Final = "/layout"
FETCH_CONTAINER: Final = "fetch"


def object_store(spec: api.RecommenderClusterSpec) -> api.ObjectStoreLocation | None:
    """The object-store location of the artifacts, or None for a PVC store."""
    return spec.index.store.object_store


def store_location(cluster: api.RecommenderCluster) -> str:
    """The `--store` of this cluster's layouts: an s3:// prefix, or the folder on the claim."""
    location = object_store(cluster.spec)
    meta = cluster.metadata
    if location is None:
        return f"{pods.cluster_dir(meta.name)}/layouts"
    return f"{location.url.rstrip('/')}/{meta.namespace}/{meta.name}/layouts"


def layout_location(cluster: api.RecommenderCluster, layout_id: str) -> str:
    """Where one layout's artifacts are written and read (`store_location`/<layout id>)."""
    return f"{store_location(cluster)}/{layout_id}"


def cluster_folder(cluster: api.RecommenderCluster) -> str:
    """This cluster's folder on the index store, where its carry folders live next to the layouts
    (`recctl index delete --carry-store`)."""
    location = object_store(cluster.spec)
    meta = cluster.metadata
    if location is None:
        return pods.cluster_dir(meta.name)
    return f"{location.url.rstrip('/')}/{meta.namespace}/{meta.name}"


def carry_location(cluster: api.RecommenderCluster, layout_id: str) -> str:
    """The carry folder of a carrying layout: the writes its carrier cut from the old layout's logs,
    which its build folds in (`--carry-dir`). Next to the layouts, not inside one: the layout's
    folder is published by its build, the carry folder by the carrier before that build starts."""
    return f"{cluster_folder(cluster)}/{CARRY_FOLDERS}/{layout_id}"


def carry_back_location(cluster: api.RecommenderCluster, layout_id: str, from_layout: str) -> str:
    """The progress of a carry back into the kept layout `layout_id` from `from_layout` (a rollback:
    `carry-back/<to>/<from>`, holding `forwarded.json` only). Never the kept layout's own carry
    folder (`carry/<to>`, which a later carry from it folds in)."""
    return f"{cluster_folder(cluster)}/{CARRY_BACK_FOLDERS}/{layout_id}/{from_layout}"


def connection(spec: api.RecommenderClusterSpec) -> ObjectStoreFlags | None:
    """`--s3-*` flags for `recctl`, when any s3:// URL is in play (source or store)."""
    settings = spec.index.object_store
    if settings is None:
        return None
    return ObjectStoreFlags(
        endpoint=settings.endpoint, region=settings.region, path_style=settings.path_style
    )


def credential_env(spec: api.RecommenderClusterSpec) -> list[dict[str, Any]]:
    """AWS_* variables from the credentials Secret (empty without one)."""
    settings = spec.index.object_store
    ref = settings.credentials_secret_ref if settings is not None else None
    if ref is None:
        return []
    access_key_id, secret_access_key, session_token = S3_CREDENTIAL_VARIABLES
    keys = [(access_key_id, ref.access_key_id_key), (secret_access_key, ref.secret_access_key_key)]
    if ref.session_token_key is not None:
        keys.append((session_token, ref.session_token_key))
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": key}}} for name, key in keys
    ]


CONNECTION_ENV: Final = ("SHARDREC_S3_ENDPOINT", "SHARDREC_S3_REGION", "SHARDREC_S3_PATH_STYLE")
"""The variables `recctl` reads its --s3-* defaults from (for processes that take no flags)."""


def connection_env(spec: api.RecommenderClusterSpec) -> list[dict[str, Any]]:
    """The connection settings as SHARDREC_S3_* variables, for the router: its topology names each
    layout by its s3:// location, and it reads the layout's user table from there."""
    settings = spec.index.object_store
    if settings is None or object_store(spec) is None:
        return []
    endpoint, region, path_style = CONNECTION_ENV
    env = [{"name": region, "value": settings.region}]
    if settings.endpoint:
        env.insert(0, {"name": endpoint, "value": settings.endpoint})
    if settings.path_style:
        env.append({"name": path_style, "value": "1"})
    return env


def layout_volume(spec: api.RecommenderClusterSpec) -> dict[str, Any]:
    """The emptyDir a shard's files are copied into (sizeLimit: see the module docstring)."""
    memory = spec.resources.shard.limits.get("memory") or spec.resources.shard.requests.get("memory")
    empty_dir: dict[str, Any] = {"sizeLimit": memory} if memory else {}
    return {"name": LAYOUT_VOLUME, "emptyDir": empty_dir}


def fetch_init_container(cluster: api.RecommenderCluster, layout_id: str, shard: int) -> dict[str, Any]:
    """Copies shard `shard` of the layout into the layout volume, verifying checksums; the shard
    server starts only once it exits 0 (a missing object or a checksum mismatch fails the pod,
    which restarts it, while the old layout keeps serving)."""
    spec = cluster.spec
    arguments = index_fetch_arguments(
        store=store_location(cluster),
        layout=layout_id,
        dest=LAYOUT_MOUNT,
        shard=shard,
        object_store=connection(spec),
    )
    container: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        **pods.image_fields(spec),
        "command": ["recctl", *arguments],
        "resources": pods.resources(spec.resources.shard),
        "securityContext": pods.container_security_context(),
        "volumeMounts": [{"name": LAYOUT_VOLUME, "mountPath": LAYOUT_MOUNT}, pods.tmp_mount()],
    }
    env = credential_env(spec)
    if env:
        container["env"] = env
    return container
