"""`recctl writes export|fold`: the leaders' logs read over HTTP into a carry folder (a cut, paged
past one answer's limit), and folded into an embeddings directory as the build would fold them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from shardrec.serving.index.build import build_layout
from shardrec.serving.index.carry import carried_state, read_carry
from shardrec.serving.index.embeddings import load_embeddings, write_embeddings_dir
from shardrec.serving.index.partitioning import shard_of
from shardrec.serving.index.synthetic import clustered
from shardrec.serving.index.write_log import WriteRecord
from shardrec.serving.shard.app import MAX_WRITE_OPS, build_api
from shardrec.serving.shard.engine import EngineSettings, SearchEngine
from shardrec.serving.shard.log_export import ExportError, export_carry
from shardrec.serving.shard.metrics import ShardMetrics
from shardrec.tools.cli.main import main

DIM, SHARDS, TOKEN = 8, 2, "s3cret"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(embeddings, layout) of 40 items on 2 shards."""
    root = tmp_path_factory.mktemp("export")
    emb = write_embeddings_dir(
        root / "emb", clustered(40, DIM, clusters=4, seed=5), [f"a{i}" for i in range(40)]
    )
    build_layout(emb, root / "v1", version="v1", shards=SHARDS, metric="l2", progress=False)
    return emb, root / "v1"


def _vector(seed: int) -> tuple[float, ...]:
    return tuple(float(x) for x in np.random.default_rng(seed).normal(size=DIM).astype(np.float32))


def _bridge(apps: dict[str, Any], loop: asyncio.AbstractEventLoop) -> httpx.Client:
    """A blocking client (what the export uses) whose requests the shard apps answer on `loop`:
    host `shard0` is shard 0's leader, and so on."""
    clients = {host: httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) for host, app in apps.items()}

    def handle(request: httpx.Request) -> httpx.Response:
        sent = clients[request.url.host].request(
            request.method, str(request.url), headers=request.headers, content=request.content
        )
        answer = asyncio.run_coroutine_threadsafe(sent, loop).result(timeout=30)
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    return httpx.Client(transport=httpx.MockTransport(handle))


def _writes(tmp_path: Path, layout: Path, export: Any) -> tuple[dict[int, list[WriteRecord]], Any]:
    """Two leaders with logged writes (shard 0 more than one answer's worth); `export(client)` runs
    in a worker thread while they serve; returns their logs and what `export` returned."""
    owned = {s: [i for i in (f"new{n}" for n in range(4000)) if shard_of(i, SHARDS) == s] for s in (0, 1)}

    async def scenario() -> tuple[dict[int, list[WriteRecord]], Any]:
        engines = {}
        for shard in (0, 1):
            engine = SearchEngine(
                ShardMetrics(), EngineSettings(search_threads=1, write_log_dir=tmp_path / f"s{shard}")
            )
            await engine.load(layout, shard)
            engines[shard] = engine
        shard0 = [
            WriteRecord(1, "upsert", item, _vector(n)) for n, item in enumerate(owned[0][: MAX_WRITE_OPS + 7])
        ]
        shard0.append(WriteRecord(1, "delete", owned[0][0]))  # a delete after its upsert
        assert engines[0].current is not None
        shard0.append(WriteRecord(1, "delete", engines[0].current.ids[0]))  # an item of the source
        await engines[0].lead_writes(shard0[:MAX_WRITE_OPS])
        await engines[0].lead_writes(shard0[MAX_WRITE_OPS:])
        await engines[1].lead_writes([WriteRecord(1, "upsert", owned[1][0], _vector(99))])
        apps = {f"shard{s}": build_api(engines[s], engines[s].metrics, s, TOKEN) for s in (0, 1)}
        with _bridge(apps, asyncio.get_running_loop()) as client:
            result = await asyncio.to_thread(export, client)
        logs = {s: engines[s].write_log(SHARDS, s).since(0, limit=10_000) for s in (0, 1)}
        for engine in engines.values():
            engine.close()
        return logs, result

    return asyncio.run(scenario())


def test_the_export_is_the_leaders_logs_up_to_a_cut_and_the_fold_applies_them(
    source: tuple[Path, Path], tmp_path: Path
) -> None:
    emb, layout = source
    carry = tmp_path / "carry"
    logs, cut = _writes(
        tmp_path,
        layout,
        lambda client: export_carry(client, ["http://shard1", "http://shard0"], TOKEN, "l1", carry),
    )
    assert cut.from_layout == "l1" and cut.upto == (MAX_WRITE_OPS + 9, 1)
    read_cut, carried = read_carry(carry)
    assert read_cut == cut
    assert carried == logs, "every record, in order, paged past one answer's limit"
    _, state = carried_state(carry)
    assert (
        main(
            [
                "writes",
                "fold",
                "--embeddings",
                str(emb),
                "--carry-dir",
                str(carry),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    folded = load_embeddings(tmp_path / "out")
    before = load_embeddings(emb)
    deleted = {item for item, vector in state.items() if vector is None}
    upserted = {item: vector for item, vector in state.items() if vector is not None}
    assert deleted and not deleted & set(folded.item_ids)
    assert set(folded.item_ids) == (set(before.item_ids) - deleted) | set(upserted)
    position = {item: n for n, item in enumerate(folded.item_ids)}
    for item, vector in list(upserted.items())[:50]:
        assert np.allclose(folded.items[position[item]], vector)


def test_a_wrong_token_or_a_missing_shard_is_refused(source: tuple[Path, Path], tmp_path: Path) -> None:
    _, layout = source

    def attempts(client: httpx.Client) -> list[str]:
        errors = []
        for leaders, token in ((["http://shard0", "http://shard1"], "wrong"), (["http://shard1"], TOKEN)):
            with pytest.raises(ExportError) as caught:
                export_carry(client, leaders, token, "l1", tmp_path / "carry")
            errors.append(str(caught.value))
        return errors

    _, (unauthorized, missing) = _writes(tmp_path, layout, attempts)
    assert "answered 401" in unauthorized
    assert "give one leader URL per shard 0..0" in missing and "[1]" in missing
    assert not (tmp_path / "carry" / "carry.json").exists()
