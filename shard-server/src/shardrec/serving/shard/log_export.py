"""Read a layout's write logs from its running leaders over HTTP and keep them as a carry folder.

On Kubernetes a replica's write log lives on its own ReadWriteOnce claim, so no other pod can
read the file; the leader (replica 0 of each shard: the sequence authority, whose log holds every
acknowledged write) serves it at `GET /v1/admin/writes?after=N` (shard admin token). This module
pages through that, takes a *cut* (per shard, the last sequence its first answer named: records
appended while it reads are left out, so the cut is one consistent point per shard), and writes
the carry folder `serving/index/carry.py` defines, the same one the local runtime's cut writes and
`recctl index build --carry-dir` folds in.

It is the first step of a carry on Kubernetes (docs/operator.md, "Item writes") and what
`recctl writes export` runs today, so that writes can be folded into the embeddings source
(`recctl writes fold`) before writes are turned off and the layout changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from shardrec.serving.index.carry import Cut, write_carry
from shardrec.serving.index.write_log import WriteLogError, WriteRecord
from shardrec.serving.shard.app import MAX_WRITE_OPS, WRITES_PATH

READ_TIMEOUT_S = 30.0
MAX_PAGES = 1_000_000
"""A bound on the paging loop: a leader whose answers never advance cannot hang the export."""


class ExportError(Exception):
    """A leader could not be read, or the leaders do not make one whole layout."""


def _page(client: httpx.Client, url: str, token: str, after: int, tls_name: str | None) -> dict[str, Any]:
    try:
        response = client.get(
            url.rstrip("/") + WRITES_PATH,
            params={"after": after, "limit": MAX_WRITE_OPS},
            headers={"authorization": f"Bearer {token}"},
            timeout=READ_TIMEOUT_S,
            # Through a port-forward the URL names localhost; the certificate names the shards.
            extensions={"sni_hostname": tls_name} if tls_name else None,
        )
    except httpx.HTTPError as exc:
        raise ExportError(f"{url}: {exc!r}") from exc
    if response.status_code != 200:
        raise ExportError(f"{url}: {WRITES_PATH} answered {response.status_code} {response.text[:200]}")
    body: dict[str, Any] = response.json()
    return body


def read_leader_log(
    client: httpx.Client, url: str, token: str, tls_name: str | None = None
) -> tuple[int, int, list[WriteRecord]]:
    """(shard, cut, records) of the leader at `url`: every record up to the last sequence its
    first answer named, in order; a gap or a repeat in what it sends is refused. `tls_name`: the
    name the shard certificate holds, when the URL's host is another (a port-forward)."""
    first = _page(client, url, token, 0, tls_name)
    shard, cut = int(first["shard"]), int(first["last_sequence"])
    records: list[WriteRecord] = []
    body = first
    for _ in range(MAX_PAGES):
        try:
            page = [WriteRecord.from_dict(raw) for raw in body["records"]]
        except (KeyError, TypeError, WriteLogError) as exc:
            raise ExportError(f"{url}: a record that cannot be read: {exc}") from exc
        for record in page:
            if record.seq > cut:
                return shard, cut, records
            expected = records[-1].seq + 1 if records else 1
            if record.seq != expected:
                raise ExportError(f"{url}: sequence {record.seq} where {expected} was expected")
            records.append(record)
        if not page or (records and records[-1].seq >= cut):
            break
        body = _page(client, url, token, records[-1].seq, tls_name)
    last = records[-1].seq if records else 0
    if last != cut:
        raise ExportError(f"{url}: the log ends at sequence {last}, its leader named {cut}")
    return shard, cut, records


def export_carry(
    client: httpx.Client,
    leaders: Sequence[str],
    token: str,
    layout_id: str,
    folder: Path,
    *,
    tls_name: str | None = None,
) -> Cut:
    """Read every leader of `layout_id` (one URL per shard, any order) and write the carry folder
    into `folder`. The leaders must be shards 0..N-1 of one layout, each exactly once."""
    logs: dict[int, list[WriteRecord]] = {}
    upto: dict[int, int] = {}
    for url in leaders:
        shard, cut, records = read_leader_log(client, url, token, tls_name)
        if shard in logs:
            raise ExportError(f"{url}: shard {shard} was given twice")
        logs[shard], upto[shard] = records, cut
    if sorted(logs) != list(range(len(leaders))):
        raise ExportError(
            f"the leaders serve shards {sorted(logs)}; give one leader URL per shard 0..{len(leaders) - 1}"
        )
    cut_of = Cut(layout_id, len(leaders), tuple(upto[s] for s in range(len(leaders))))
    write_carry(folder, cut_of, logs)
    return cut_of
