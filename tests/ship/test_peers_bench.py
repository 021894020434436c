"""benchmarks/peers_bench.py (make bench-peers): its section of docs/benchmarks.md has the shape
its writer produces, and a quick run writes such a section. Timings are never asserted (the
machine is shared); the speed goal (P3) is the ratio the bench itself states from one run."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENGINES = {
    "ours over HTTP": r"ours \(router \+ shard servers\)",
    "Chroma": r"Chroma \d[\w.]*",
    "Redis's query engine": r"Redis (Stack )?\d[\d.]* \+ RediSearch \d[\d.]*",
    "Redis's Vector Sets": r"Redis (8|9)[\d.]* \+ Vector Sets",
    "ours in-process": r"ours \(hnswlib shards\)",
    "Qdrant Edge": r"Qdrant Edge \d[\w.]*",
}
"""Each engine the committed section must have, and the form of its name in the engine column."""


def _engine(name: str) -> str:
    found = [kind for kind, form in ENGINES.items() if re.fullmatch(form, name)]
    assert len(found) == 1, f"{name!r} is not of one engine's form: {ENGINES}"
    return found[0]


LOADS = re.compile(r"^((wrk|RESP loop) -c\d+(, \d+ errors)?( \(saturating\))?|1 thread, closed loop)$")


def _bench() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        if "peers_bench" in sys.modules:
            return sys.modules["peers_bench"]
        spec = importlib.util.spec_from_file_location("peers_bench", ROOT / "benchmarks" / "peers_bench.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules["peers_bench"] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _form(cell: str) -> str:
    return re.sub(r"\d[\d,]*(\.\d+)?", "9", cell.strip())


def _sample_row(bench: Any) -> list[str]:
    row = bench.PeerRow("e", "a", "p", 0.95, "1 thread, closed loop", 1234.5, 1.25, 3.5, 0.125)
    line = bench.table([row]).splitlines()[2]
    return [cell.strip() for cell in line.strip("|").split("|")]


def check_section(bench: Any, section: str) -> list[list[str]]:
    """`section` is what bench.render writes, digits aside; returns its table's rows as cells."""
    lines = section.strip().splitlines()
    assert lines[0] == bench.BEGIN and lines[-1] == bench.END, "the markers differ from the writer's"
    assert lines[1] == "## Peers side by side (same vectors, equal recall)"
    assert lines[3].startswith("Command: `python benchmarks/peers_bench.py"), "the command is not stated"
    assert any(line.startswith("- Machine: ") and "load average" in line for line in lines), "machine/load"
    table = [line for line in lines if line.startswith("|")]
    assert table[:2] == [bench.HEADER, bench.ALIGN], "the table's header changed: regenerate it"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert rows, "the table has no rows"
    sample = _sample_row(bench)
    for cells in rows:
        assert len(cells) == len(sample), cells
        _engine(cells[0])
        assert LOADS.match(cells[4]), cells[4]
        # recall, requests/s, p50, p99, CPU: the writer's number formats
        assert [_form(c) for c in cells[3:4] + cells[5:]] == [_form(c) for c in sample[3:4] + sample[5:]]
        assert 0 <= float(cells[3]) <= 1, cells
    notes = [line for line in lines if line.startswith("- ")]
    assert any(line.startswith("- P3 (ours >= 6x Chroma's HTTP server") for line in notes), "no P3 line"
    assert f"- {bench.REDIS_NOTE}" in lines, "the Redis statement differs from the writer's"
    return rows


def test_the_committed_section_is_the_writers_and_states_p3() -> None:
    bench = _bench()
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    found = re.search(rf"{re.escape(bench.BEGIN)}.*?{re.escape(bench.END)}", doc, re.S)
    assert found, "run: make bench-peers"
    section = found.group(0)
    assert "Quick run" not in section, "the committed section is a quick run: run make bench-peers"
    rows = check_section(bench, section)
    engines = {_engine(cells[0]) for cells in rows}
    assert engines == set(ENGINES), f"an engine is missing: {set(ENGINES) - engines}"
    assert re.search(
        r"^- P3 .*: \*\*(holds|does not hold)\*\* in this run: .* = \*\*[\d.]+x\*\*", section, re.M
    )
    recalls = {float(cells[3]) for cells in rows}
    assert max(recalls) - min(recalls) <= 0.02, "the engines are not at equal recall"


def test_the_ratios_name_the_saturating_rows_and_the_verdict() -> None:
    bench = _bench()
    row = bench.PeerRow
    rows = [
        row("ours (router + shard servers)", "HTTP", "efSearch 24", 0.95, "wrk -c1", 500, 2, 4, 1.0),
        row(
            "ours (router + shard servers)", "HTTP", "efSearch 24", 0.95, "wrk -c64", 3000, 20, 40, 0.5, True
        ),
        row("Chroma 1.5.9", "HTTP", "ef_search 64", 0.95, "wrk -c1", 200, 5, 9, 2.0),
        row("Chroma 1.5.9", "HTTP", "ef_search 64", 0.95, "wrk -c16", 600, 25, 50, 1.6, True),
        row(
            "ours (hnswlib shards)",
            "in-process",
            "efSearch 24",
            0.95,
            "1 thread, closed loop",
            4000,
            0.2,
            0.5,
            0.25,
        ),
        row(
            "Qdrant Edge 0.9.0",
            "in-process",
            "hnsw_ef 32",
            0.95,
            "1 thread, closed loop",
            8000,
            0.1,
            0.2,
            0.125,
        ),
    ]
    lines = bench.ratios(rows)
    assert "**does not hold**" in lines[0] and "= **5.0x**" in lines[0] and "3.2x" in lines[0]
    assert "p50 Chroma / ours = 2.5x" in lines[1]
    assert "queries/s ours / Qdrant Edge = 0.50x" in lines[2]

    def redis(engine: str, parameter: str, unloaded: float, saturating: float) -> list[Any]:
        return [
            row(engine, "RESP", parameter, 0.95, "RESP loop -c1", 4000, unloaded, 1, 0.2),
            row(engine, "RESP", parameter, 0.95, "RESP loop -c16", saturating, 2, 4, 0.125, True),
        ]

    with_redis = bench.ratios(
        [
            *rows,
            *redis("Redis 8.0.2 + Vector Sets", "EF 64", 1.0, 7500),
            *redis("Redis 8.0.2 + RediSearch 8.0.2", "EF_RUNTIME 48", 0.5, 6000),
        ]
    )
    assert with_redis[2] == (
        "Redis RediSearch at each side's saturating load: router 3,000 req/s / Redis 6,000 req/s "
        "(RESP loop -c16) = 0.5x; CPU per request Redis / (router + shards) = 0.25x; one request at a "
        "time, p50 Redis / ours = 0.25x; our search alone (in-process) costs 2.00x Redis's CPU per "
        "request."
    )
    assert with_redis[3].startswith(
        "Redis Vector Sets at each side's saturating load: router 3,000 req/s / Redis 7,500 req/s "
        "(RESP loop -c16) = 0.4x; CPU per request Redis / (router + shards) = 0.25x; one request at a "
        "time, p50 Redis / ours = 0.50x;"
    )
    assert len(with_redis) == len(lines) + 2
    # Where our search costs no more than Redis's whole request, the gap is our serving around it.
    rows[4].cpu_ms = 0.1
    cheap_search = bench.ratios([*rows, *redis("Redis 8.0.2 + RediSearch 8.0.2", "EF_RUNTIME 48", 0.5, 6000)])
    assert cheap_search[2].endswith(
        "our search alone (in-process) costs 0.80x Redis's CPU per request, so what we pay beyond Redis "
        "is our router and shard server's HTTP serving."
    )
    rows[4].cpu_ms = 0.25
    rows[1].requests_per_s = 3600
    assert "**holds**" in bench.ratios(rows)[0]
    assert "not measured" in bench.ratios(rows[2:])[0]


@pytest.mark.integration
def test_a_quick_run_writes_a_section_of_the_writers_shape(tmp_path: Path) -> None:
    """The smoke run: tiny data, 1 s runs, into a copy of a doc with another section. The router
    runs where wrk is installed, Qdrant Edge where the bench extra is; Chroma is left out (its
    virtualenv is installed from PyPI on first use, and tests download nothing)."""
    bench = _bench()
    peers = ["inprocess"]
    if shutil.which("wrk"):
        peers.append("router")
    if importlib.util.find_spec("qdrant_edge") is not None:
        peers.append("qdrant")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- other:begin -->\nkept\n<!-- other:end -->\n", encoding="utf-8")
    argv = [
        sys.executable,
        str(ROOT / "benchmarks" / "peers_bench.py"),
        "--quick",
        "--peers",
        ",".join(peers),
    ]
    done = subprocess.run(
        [*argv, "--work-dir", str(tmp_path / "work"), "--out", str(doc)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = doc.read_text(encoding="utf-8")
    assert "<!-- other:begin -->\nkept\n<!-- other:end -->" in text
    found = re.search(rf"{re.escape(bench.BEGIN)}.*?{re.escape(bench.END)}", text, re.S)
    assert found and text.count(bench.BEGIN) == 1
    section = found.group(0)
    assert "Quick run" in section
    rows = check_section(bench, section)
    assert len(rows) == 1 + (3 if "router" in peers else 0) + ("qdrant" in peers)
    assert "- Not run: chroma (not in --peers)." in section


def test_redis_commands_are_resp_arrays_of_bulk_strings() -> None:
    """What the Redis load sends, byte for byte: RESP arrays, binary-safe (a float32 blob holds
    NUL and CRLF bytes), every query one size (the load file is cut into fixed-size commands)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import redis_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert redis_bench.command("HSET", "i:7", "v", b"\x00\r\n", 5) == (
        b"*5\r\n$4\r\nHSET\r\n$3\r\ni:7\r\n$1\r\nv\r\n$3\r\n\x00\r\n\r\n$1\r\n5\r\n"
    )
    import numpy as np

    queries = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    found = [redis_bench.search_command(query, 10, 48) for query in queries]
    assert len({len(c) for c in found}) == 1
    assert b"$256\r\n" + queries[0].tobytes() + b"\r\n" in found[0]
    assert b"*=>[KNN 10 @v $q EF_RUNTIME 48]" in found[0] and b"NOCONTENT" in found[0]
    vsim = [redis_bench.vsim_command(query, 10, 64) for query in queries]
    assert len({len(c) for c in vsim}) == 1
    assert vsim[0] == redis_bench.command(
        "VSIM", "items", "FP32", queries[0].tobytes(), "COUNT", 10, "EF", 64
    )
    # Replies name items as the load wrote them: "i:<position>" keys, bare positions as elements.
    assert redis_bench.search_ids([2, b"i:7", b"i:0"]) == [7, 0]
    assert redis_bench.vsim_ids([b"7", b"0"]) == [7, 0]


def test_the_redis_engine_column_names_the_server_and_the_query_engines_version() -> None:
    bench = _bench()
    query_engine, vector_sets = bench.redis_bench.QUERY_ENGINE, bench.redis_bench.VECTOR_SETS
    modules = {"search": "8.0.2", "vectorset": "0.0.1"}
    assert bench.redis_engine("8.0.2", modules, query_engine) == "Redis 8.0.2 + RediSearch 8.0.2"
    assert bench.redis_engine("8.0.2", modules, vector_sets) == "Redis 8.0.2 + Vector Sets"
    stack = bench.redis_engine("7.4.1", {"search": "2.10.5"}, query_engine)
    assert stack == "Redis Stack 7.4.1 + RediSearch 2.10.5"
    for name in ("Redis 8.0.2 + RediSearch 8.0.2", "Redis 8.0.2 + Vector Sets", stack):
        _engine(name)  # each of the forms the committed section is checked against


def test_a_missing_search_module_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    with pytest.raises(SystemExit):
        bench.parse_args(["--redis-search-module", str(tmp_path / "redisearch.so")])
    assert f"--redis-search-module: {tmp_path / 'redisearch.so'} is not a file" in capsys.readouterr().err
    module = tmp_path / "redisearch.so"
    module.write_bytes(b"")
    assert bench.parse_args(["--redis-search-module", str(module)]).redis_search_module == module


def test_a_redis_source_of_another_digest_is_refused_before_it_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis 8 is built from Debian's source tarball; one whose SHA-256 differs is never unpacked."""
    import contextlib
    import io

    redis_bench = _bench().redis_bench
    fetched: list[str] = []

    def urlopen(url: str, timeout: float) -> Any:
        fetched.append(url)
        return contextlib.nullcontext(io.BytesIO(b"not redis"))

    monkeypatch.setattr(redis_bench.urllib.request, "urlopen", urlopen)
    with pytest.raises(RuntimeError, match="SHA-256"):
        redis_bench.find_redis8(tmp_path / "redis8")
    assert fetched == [redis_bench.REDIS8_SOURCE]
    assert not list((tmp_path / "redis8" / "build").glob("redis-*/")), "the tarball was unpacked"
    assert not (tmp_path / "redis8" / "bin").exists()
