"""Tables in docs/benchmarks.md that a command writes stay in the shape that command writes.

The numbers are not asserted (the machine is shared and noisy); the test fails when the committed
table no longer has the header and rows the current command produces, i.e. the doc drifted from
the command that is said to have made it."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> object:
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(path.parent))


def _cells(line: str) -> list[str]:
    """The cells of one markdown table row."""
    return [cell.strip() for cell in line.strip("|").split("|")]


def _row(text: str, scenario: str, rerun: str) -> list[str]:
    """The cells of the table row in `text` whose first cell is `scenario` (`rerun`: the command
    that writes it, named when the row is missing)."""
    for line in text.splitlines():
        if line.startswith("|") and _cells(line)[0] == scenario:
            return _cells(line)
    raise AssertionError(f"no row {scenario!r}: rerun {rerun}")


def _marked_block(script: str) -> tuple[Any, str]:
    """benchmarks/<script>.py loaded, and the block of docs/benchmarks.md between its BEGIN and END
    markers, which must name the command that wrote it."""
    bench: Any = _load(script, ROOT / "benchmarks" / f"{script}.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert bench.BEGIN in doc and bench.END in doc, f"run: python benchmarks/{script}.py --write-doc"
    block = doc.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert f"`python benchmarks/{script}.py" in block
    return bench, block


def test_cutover_window_table_matches_its_command() -> None:
    bench, block = _marked_block("cutover_window")
    modes = {"staged preload, then switch": [1.0], "direct switch (no preload)": [1.0]}
    expected = bench.table(modes, 3, 300_000).splitlines()
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[:2] == expected[:2], "the table's header changed: regenerate it"
    assert [line.split("|")[1].strip() for line in lines[2:]] == list(modes)
    for line in lines[2:]:
        cells = _cells(line)
        assert int(cells[1]) >= 20 and float(cells[2]) <= float(cells[3]), line


def test_result_cache_tables_match_their_command() -> None:
    bench, block = _marked_block("result_cache")
    # requests/s on a shared machine: the block says how loaded it was (common.machine_line)
    assert "load average" in block, "rerun: python benchmarks/result_cache.py --write-doc"
    lines = [line for line in block.splitlines() if line.startswith("|")]
    zipf = bench.zipf_table([], 100_000, 16).splitlines()
    spike = bench.spike_table([], 160, 16).splitlines()
    assert lines[0:2] == zipf, "the Zipf table's header changed: regenerate it"
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["cache off", "cache on"]
    assert lines[4:6] == spike, "the spike table's header changed: regenerate it"
    names = [line.split("|")[1].strip() for line in lines[6:8]]
    assert names == ["spike: cache and fallback off", "spike: cache + fallback on"]
    # The capacity plan reads the hit ratio off this table (design.md, caching): same number.
    from shardrec.tools.capacity.pipeline import MEASURED_CACHE_HIT

    hit_ratio = float(lines[3].strip("|").split("|")[4])
    assert hit_ratio == MEASURED_CACHE_HIT, "pipeline.MEASURED_CACHE_HIT: copy the 'cache on' hit ratio"


def test_coldstart_table_matches_its_command() -> None:
    bench = _load("coldstart_bench", ROOT / "benchmarks" / "coldstart_bench.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    begin, end = bench.BEGIN, bench.END  # type: ignore[attr-defined]
    assert begin in doc and end in doc, "run: make bench-coldstart"
    block = doc.split(begin, 1)[1].split(end, 1)[0]
    assert "`python benchmarks/coldstart_bench.py" in block
    lines = [line for line in block.splitlines() if line.startswith("|")]
    assert lines[:2] == [bench.HEADER, bench.ALIGN], "the table's header changed: regenerate it"  # type: ignore[attr-defined]
    labels = [bench.size_label(items) for items in bench.SIZES]  # type: ignore[attr-defined]
    rows = [_cells(line) for line in lines[2:]]
    assert rows, "the table has no rows"
    assert [cells[0] for cells in rows] == labels[: len(rows)], "sizes differ from the script's SIZES"
    # Each cell has the form the script writes ("12.3 (4.5)", "67", ...): digits aside, identical.
    step = bench.Step(1.0, 1.0)  # type: ignore[attr-defined]
    sample = bench.Result(100_000, 1 << 20, step, step, step, step, 1.0, 1.0)  # type: ignore[attr-defined]
    expected = [_form(cell) for cell in bench.row(sample).strip("|").split("|")[1:]]  # type: ignore[attr-defined]
    for cells in rows:
        assert [_form(cell) for cell in cells[1:]] == expected, cells


def _form(cell: str) -> str:
    return re.sub(r"\d+", "9", cell.strip())


SCALE_SECTION = re.compile(r"<!-- (bench-scale-[a-z0-9-]+):begin.*?-->.*?<!-- \1:end -->", re.S)


def test_scale_tables_match_their_command() -> None:
    bench = _load("scale_bench", ROOT / "benchmarks" / "scale_bench.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    sections = [match.group(0) for match in SCALE_SECTION.finditer(doc)]
    assert sections, "run: make bench-scale"
    for section in sections:
        _check_scale_section(bench, section)


def test_a_scale_table_that_drifted_from_its_command_is_refused() -> None:
    bench: Any = _load("scale_bench", ROOT / "benchmarks" / "scale_bench.py")
    result = bench.ScaleResult(
        100_000,
        64,
        4,
        300,
        31.0,
        2500.0,
        400.0,
        {16: 0.96, 24: 0.97, 64: 0.99},
        {24: 0.96},
        60.0,
        42.0,
        645.0,
        16,
    )
    good = bench.render(
        [result], "python benchmarks/scale_bench.py --sizes 100k", "2026-12-05", bench.machine_line(1.0, 2.0)
    )
    _check_scale_section(bench, good)
    drifted = [
        good.replace("| at ef@0.95, 100 excluded |", "|"),  # a column gone from the header
        good.replace("| 645 |", "| 645 | 1 |"),  # a cell more than the header
        good.replace("| 0.970 |", "| 97% |"),  # a cell in another form
        good.replace("| 100k x 64 |", "| 1M x 64 |"),  # rows that the section's name does not say
        good.replace("one query at a time", "a batch of queries"),  # the method changed
        good.replace("`python benchmarks/scale_bench.py --sizes 100k`", "`make bench`"),
    ]
    for text in drifted:
        assert text != good
        try:
            _check_scale_section(bench, text)
        except AssertionError:
            continue
        raise AssertionError(f"accepted a drifted section:\n{text}")


def test_a_resumed_scale_table_gives_both_build_rates_and_its_runs() -> None:
    """A --resume run (10M items over several sessions): the build column gives the rate from wall
    time and from CPU time, the prose how many runs built it; a plain row in it is refused."""
    bench: Any = _load("scale_bench", ROOT / "benchmarks" / "scale_bench.py")
    result = bench.ScaleResult(
        10_000_000,
        64,
        4,
        300,
        32.0,
        900.0,
        405.0,
        {24: 0.84, 48: 0.91, 96: 0.96, 256: 0.985},
        {24: 0.93},
        90.0,
        210.0,
        430.0,
        96,
        build_cpu_items_per_second=1500.0,
        build_runs=3,
        build_cores=2,
        runs=4,
        load_average_first=1.0,
    )
    machine = bench.machine_line(1.0, 2.0, runs=4)
    good = bench.render(
        [result], "python benchmarks/scale_bench.py --sizes 10m --resume", "2026-12-07", machine
    )
    assert "bench-scale-10m-d64:begin" in good and "| 10M x 64 | 32 | 900 (1500) | 405 |" in good
    assert "4 runs, 3 resumes" in good and "(runs that built: 10M x 64: 3)" in good
    _check_scale_section(bench, good)
    try:
        _check_scale_section(bench, good.replace("| 900 (1500) |", "| 900 |"))
    except AssertionError:
        return
    raise AssertionError("accepted a resumed table whose build cell lost its CPU-based rate")


def _check_scale_section(bench: Any, section: str) -> None:
    """`section` is what `render` writes for the sizes and dimensions its rows name, digits aside."""
    lines = section.strip().splitlines()
    rows = [line for line in lines if line.startswith("|")]
    # A --resume run (10M: over several sessions) gives the build rate from wall and from CPU time.
    resumed = rows[0] == bench.HEADER_RESUMED
    assert rows[:2] in ([bench.HEADER, bench.ALIGN], [bench.HEADER_RESUMED, bench.ALIGN]), (
        "the table's header changed: regenerate it"
    )
    cells = [_cells(line) for line in rows[2:]]
    assert cells, "the table has no rows"
    shapes = [label.split(" x ") for label, *_ in cells]
    extra = (
        {"build_cpu_items_per_second": 1.0, "build_runs": 1, "build_cores": 2, "runs": 1} if resumed else {}
    )
    samples = [
        bench.ScaleResult(
            bench.parse_size(size),
            int(dim),
            4,
            300,
            1.0,
            1.0,
            1.0,
            {24: 1.0},
            {24: 1.0},
            1.0,
            1.0,
            1.0,
            24,
            **extra,
        )
        for size, dim in shapes
    ]
    expected = bench.render(samples, "python benchmarks/scale_bench.py", "2026-01-01", "machine").splitlines()
    assert lines[0] == expected[0] and lines[-1] == expected[-1], "the section's name differs from its rows"
    assert lines[1] == expected[1], "the title differs from what render writes for these rows"
    prose = lines[3]
    assert prose.startswith("`python benchmarks/scale_bench.py ") and " on 20" in prose, "command and date"
    assert " cores (" in prose and "load average" in prose, "the machine is not stated"
    method = expected[3].split("machine. Seeded ", 1)[1]
    assert _form(prose.split(". Seeded ", 1)[-1]) == _form(method), "the method text changed: regenerate it"
    wanted = [line for line in expected if line.startswith("|")][2:]
    for row, want in zip(cells, wanted, strict=True):
        assert row[0] == want.strip("|").split("|")[0].strip(), row  # "100k x 64", as size_label writes
        # Digits aside, each cell as `row` writes it; an ef beyond the grid is written "> 1024".
        form = [_form(cell).removeprefix("> ") for cell in row[1:]]
        assert form == [_form(cell) for cell in want.strip("|").split("|")[1:]], row


def _writes_rows(bench: Any) -> list[Any]:
    """One round of phases per ack policy, in the script's own types (made-up numbers)."""
    reads = bench.WrkResult(1000, 2.0, 0, 3.0, 20.0, 0.1)
    writes = bench.Writes(120, 0, 2.0, 50.0, 200.0)
    cpu = bench.Cpu(0.5, 1.0, 0.2, 0.1, 2.0)
    phases = {"A": (reads, None), "B": (reads, writes), "C": (None, writes)}
    return [bench.Phase(ack, 1, phase, *phases[phase], cpu) for ack in bench.ACKS for phase in bench.PHASES]


WRITES_SECTION = re.compile(r"<!-- (writes-bench(?:-r\d+)?):begin -->(.*?)<!-- \1:end -->", re.S)


def test_writes_bench_section_matches_its_command() -> None:
    bench: Any = _load("writes_bench", ROOT / "benchmarks" / "writes_bench.py")
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    assert bench.BEGIN in doc and bench.END in doc, "run: make bench-writes"
    sections = {match.group(1): match.group(2) for match in WRITES_SECTION.finditer(doc)}
    for name, block in sections.items():
        replicas = int(name.rsplit("-r", 1)[1]) if "-r" in name else bench.DEFAULT_REPLICAS
        assert bench.markers(replicas)[0] == f"<!-- {name}:begin -->"
        _check_writes_section(bench, block, replicas)


def _check_writes_section(bench: Any, block: str, replicas: int) -> None:
    assert "`python benchmarks/writes_bench.py" in block
    if replicas != bench.DEFAULT_REPLICAS:
        assert f"--replicas {replicas}" in block
    assert "load average" in block and "fsync" in block
    assert f"2 shards x {replicas} replicas" in block
    tables = [t.splitlines() for t in re.split(r"\n\s*\n", block) if t.startswith("|")]
    assert len(tables) == 2, "a phases table and a summary table"
    phases, summary = tables
    header = phases[0].split("|")
    header[3] = re.sub(r"-c\d+", "-c8", re.sub(r"\d+ writers", "8 writers", header[3]))
    assert ["|".join(header), phases[1]] == bench.phases_table([], 8, 8).splitlines(), "regenerate it"
    assert summary[:2] == bench.summary_table([]).splitlines(), "the summary's header changed"
    # Rows: for each round, each ack policy's phases A, B, C in order; cells in the script's form.
    expected = bench.phases_table(_writes_rows(bench), 8, 8).splitlines()[2:]
    labels = [[c.strip() for c in line.split("|")[1:4:2]] for line in expected]
    rows = [[c.strip() for c in line.split("|")[1:4:2]] for line in phases[2:]]
    assert rows and len(rows) % len(labels) == 0
    assert rows == labels * (len(rows) // len(labels)), (
        "phases not interleaved per round as the script runs them"
    )
    for line in phases[2:]:
        assert len(line.split("|")) == len(expected[0].split("|")), line
    assert [line.split("|")[1].strip() for line in summary[2:]] == list(bench.ACKS)


def test_writes_bench_tables_have_their_shape() -> None:
    """The tables from rows in the script's types: one row per phase, one summary row per ack."""
    bench: Any = _load("writes_bench", ROOT / "benchmarks" / "writes_bench.py")
    rows = _writes_rows(bench)
    phases = bench.phases_table(rows, 8, 8).splitlines()
    assert len(phases) == 2 + len(rows)
    assert all(len(line.split("|")) == len(phases[0].split("|")) for line in phases)
    summary = bench.summary_table(rows).splitlines()
    assert [line.split("|")[1].strip() for line in summary[2:]] == list(bench.ACKS)
    assert "| 1.00 | 1.00 |" in summary[2], "B/A ratios of identical reads"
    assert "Errors over every phase: 0 reads" in bench.reading(rows, 2)


def _router_workers_cpu(block: str, label: str) -> tuple[float, float]:
    """(router, shards) CPU ms per request of the saturating single-query row of one router
    configuration in the router-workers table."""
    scenario = f"{label}, single query, wrk -c64 (saturating)"
    cpu = _cpu(_row(block, scenario, "benchmarks/router_workers.py --write-doc")[7])
    return cpu["router"], cpu["shards"]


def test_router_workers_section_matches_its_command_and_the_design_quotes_it() -> None:
    bench, block = _marked_block("router_workers")
    machine = r"^- Machine: .*load average [\d.]+ at start, [\d.]+ at end"
    assert re.search(machine, block, re.M), "the section states the machine and its load"
    scenarios = [line.split("|")[1].strip() for line in block.splitlines() if line.startswith("| router (")]
    per_config = [
        f"{label}, {shape}"
        for label in (f"router ({w} worker{'s' if w > 1 else ''}, {s})" for w, s in bench.CONFIGS)
        for shape in (
            "single query, wrk -c16",
            "single query, wrk -c64 (saturating)",
            "single query",  # the half-load row names its own concurrency
            "batches of 64, wrk -c4",
            "batches of 64, wrk -c16",
        )
    ]
    assert len(scenarios) == len(per_config), scenarios
    assert all(row.startswith(want) for row, want in zip(scenarios, per_config, strict=True)), scenarios
    # design.md quotes the 1- and 2-worker saturating rows and what they say: the quote follows
    # the table, and a rerun that reverses the finding fails here until the prose is rewritten.
    one = _router_workers_cpu(block, "router (1 worker, reuseport)")
    two = _router_workers_cpu(block, "router (2 workers, reuseport)")
    design = " ".join((ROOT / "docs" / "design.md").read_text(encoding="utf-8").split())
    quote = (
        f"2 workers spent {two[0]:.3f} ms of router CPU and {two[1]:.3f} ms of shard CPU per request, "
        f"1 worker {one[0]:.3f} and {one[1]:.3f} ms"
    )
    assert quote in design, f"design.md should quote the router-workers rows: {quote}"
    extra = f"(in that run by {two[0] / one[0] - 1:.0%} and {two[1] / one[1] - 1:.0%})"
    assert extra in design, extra
    assert two[0] > one[0] and two[1] > one[1], "the finding reversed: rewrite design.md's paragraph"
    # ... and the 2-worker ratios to in-process that its speed-goals paragraph quotes
    ratios = [
        re.search(r"ratio ([\d.]+) x in-process", line)
        for line in block.splitlines()
        if line.startswith(
            (
                "| router (2 workers, reuseport), single query, wrk -c64 (saturating) |",
                "| router (2 workers, reuseport), batches of 64, wrk -c16 |",
            )
        )
    ]
    assert len(ratios) == 2 and all(ratios), ratios
    single, batched = (match.group(1) for match in ratios if match)
    assert f"reached {single}x single and {batched}x batched" in design, (single, batched)


def _main_table_note(doc: str, scenario: str) -> str:
    """The note cell of one row of `make bench`'s own table (the first table of benchmarks.md)."""
    return _row(doc.split("<!--", 1)[0], scenario, "make bench")[-1]


def _router_load() -> Any:
    return _load("router_load", ROOT / "benchmarks" / "router_load.py")


def test_the_interleaved_pass_flips_its_order_every_round() -> None:
    bench = _router_load()
    calls: list[str] = []
    speed = iter([1.0, 0.5, 1.0])  # the machine halves its speed in round 2, for both sides

    def baselines(seconds: float) -> tuple[float, float]:
        calls.append(f"in-process {seconds:g}")
        return 1000.0 * factor, 2000.0 * factor

    def router_single(seconds: float) -> tuple[float, float]:
        calls.append(f"router single {seconds:g}")
        return 800.0 * factor, 0.7

    def router_batched(seconds: float) -> tuple[float, float]:
        calls.append("router batched")
        return 1900.0 * factor, 1950.0 * factor

    rounds = []
    for _ in range(3):
        factor = next(speed)
        rounds += bench.headline_rounds(baselines, router_single, router_batched, rounds=1, seconds=5)
    assert calls[:3] == ["in-process 5", "router single 5", "router batched"]
    calls.clear()
    factor = 1.0
    bench.headline_rounds(baselines, router_single, router_batched, rounds=2, seconds=5)
    assert calls == [
        *("in-process 5", "router single 5", "router batched"),
        *("router single 5", "router batched", "in-process 5"),
    ], "odd rounds measure the router first"
    assert {(r.single, r.batched, r.router_cpu, r.batched_b64) for r in rounds} == {
        (0.8, 0.95, 0.7, 0.975)
    }, "a speed change that hits both sides leaves the ratio alone"


def test_the_interleaved_table_gives_each_goal_its_median_and_verdict() -> None:
    bench = _router_load()
    rounds = [
        bench.HeadlineRound(0.74, 0.91, 0.52, 0.88),
        bench.HeadlineRound(0.78, 0.85, 0.48, 0.92),
        bench.HeadlineRound(0.76, 0.95, 0.55, 0.89),
    ]
    goals = bench.headline_goals(64, 16, 64)
    lines = bench.headline_table(rounds, goals).splitlines()
    assert _cells(lines[0]) == [
        "goal",
        "round 1",
        "round 2",
        "round 3",
        "median",
        "rounds met",
        "verdict by the median",
    ]
    assert _cells(lines[2])[1:] == ["0.74", "0.78", "0.76", "0.76", "2 of 3", "met"]
    assert _cells(lines[3])[1:] == ["0.91", "0.85", "0.95", "0.91", "2 of 3", "met"]
    assert _cells(lines[4])[1:] == ["0.52", "0.48", "0.55", "0.52", "1 of 3", "not met"], "CPU: at most 0.5"
    assert _cells(lines[5]) == [
        "batches of 64 as vector_b64, wrk -c16 / in-process batched (>= 0.9)",
        *("0.88", "0.92", "0.89", "0.89", "1 of 3", "not met"),
    ]
    assert _cells(lines[2])[0] == "single query, wrk -c64 / in-process single (>= 0.75)"
    section = bench.headline_section(rounds, goals, 5.0)
    assert section.startswith(bench.HEADLINE_HEADING) and "each measurement 5 s" in section


def _headline(doc: str) -> dict[str, list[str]]:
    """`make bench`'s interleaved table: goal -> its cells after the label."""
    bench = _router_load()
    assert bench.HEADLINE_HEADING in doc, "rerun make bench: the interleaved pass is missing"
    block = doc.split(bench.HEADLINE_HEADING, 1)[1].split("<!--", 1)[0]
    rows = [_cells(line) for line in block.splitlines() if line.startswith("|") and "---" not in line]
    return {cells[0]: cells[1:] for cells in rows[1:]}


def test_design_quotes_the_speed_goals_as_make_bench_measured_them() -> None:
    """design.md's verdict on the serving issue's speed goals quotes `make bench`'s interleaved
    pass and its half-load row; a rerun that moves a number fails here until the paragraph says
    what the new tables say."""
    doc = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    half_load_row = next(
        line
        for line in doc.split("<!--", 1)[0].splitlines()
        if line.startswith("| router, single query,") and "(~half load)" in line
    )
    p99 = _cells(half_load_row)[4]
    p99_met = "p99 goal <= 10 ms: met" in half_load_row
    headline = _headline(doc)
    by_goal = {label.split(" (", 1)[0].split(",", 1)[0]: cells for label, cells in headline.items()}
    single = by_goal["single query"]
    batched = by_goal["batches of 64"]
    router = by_goal["router CPU per single query / the shards'"]
    b64 = by_goal["batches of 64 as vector_b64"]
    design = " ".join((ROOT / "docs" / "design.md").read_text(encoding="utf-8").split())
    paragraph = design.split("**The speed goals of the serving issue**", 1)[1]
    paragraph = paragraph.split("- The measurements", 1)[0]
    for quote in (
        f"p99 at half load is {p99} ms (goal <= 10 ms)",
        f"single queries {single[-3]}x in-process (goal >= 0.75x; {single[-2]} rounds)",
        f"batches {batched[-3]}x (goal >= 0.9x; {batched[-2]} rounds)",
        f"router CPU per query {router[-3]}x the shards' (goal <= 0.5x; {router[-2]} rounds)",
        f"the same batches with their vectors as base64 (`vector_b64`) {b64[-3]}x ({b64[-2]} rounds)",
    ):
        assert quote in paragraph, f"design.md's speed-goals paragraph should say: {quote}"
    met = {name: cells[-1] == "met" for name, cells in by_goal.items()} | {"p99": p99_met}
    assert ("are not met as a whole" in paragraph) == (not all(met.values())), met
    # The CPU view of the batch goal, from the main table's CPU column.
    main = doc.split("<!--", 1)[0]
    inprocess = _cpu(_row(main, "in-process hnswlib, batches of 64, 2 threads", "make bench")[7])
    numbers = _cpu(_row(main, "router, batches of 64, wrk -c16", "make bench")[7])
    b64 = _cpu(_row(main, "router, batches of 64 as vector_b64, wrk -c16", "make bench")[7])
    by_cpu = inprocess["in-process"] / (numbers["router"] + numbers["shards"])
    for quote in (
        f"{inprocess['in-process']:.3f} / ({numbers['router']:.3f} + {numbers['shards']:.3f}) "
        f"= {by_cpu:.2f}x in this run's main table",
        f"from {numbers['router']:.3f} to {b64['router']:.3f} ms",
        f"{inprocess['in-process'] / (b64['router'] + b64['shards']):.2f}x by CPU",
    ):
        assert quote in paragraph, f"design.md's speed-goals paragraph should say: {quote}"


def _cpu(cell: str) -> dict[str, float]:
    """A CPU cell of make bench's tables ("router+2 workers 1.586, shards x4 6.467, wrk 0.082") by
    kind of process: {"router": 1.586, "shards": 6.467, "wrk": 0.082}."""
    parts = (part.rsplit(" ", 1) for part in cell.split(", "))
    return {re.split(r"[+ ]", name)[0]: float(value) for name, value in parts if value not in {"—", "-"}}


def test_router_cpu_section_matches_its_command_and_the_design_quotes_it() -> None:
    """benchmarks/router_cpu.py --write-doc: one row per (workers, concurrency, code), the floor
    without shards; design.md quotes the floor and how the router/shards ratio moves with load."""
    _, block = _marked_block("router_cpu")
    assert re.search(r"^- Machine: .*load average [\d.]+ at start, [\d.]+ at end", block, re.M)
    header = next(line for line in block.splitlines() if line.startswith("| workers |"))
    rows = [_cells(line) for line in block.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert rows and all(len(row) == len(_cells(header)) for row in rows), rows
    by_key = {(row[1], row[2]): row for row in rows if row[0] == "1"}
    concurrencies = sorted({int(row[1]) for row in rows})
    low, high = str(concurrencies[0]), str(concurrencies[-1])
    floor, new_low, new_high = by_key[(high, "floor")], by_key[(low, "new")], by_key[(high, "new")]
    assert floor[4] == "0.000" and floor[5] == "—", "the floor runs no shards"
    assert float(floor[3]) < float(new_high[3]), "the floor costs less than the router"
    design = " ".join((ROOT / "docs" / "design.md").read_text(encoding="utf-8").split())
    paragraph = design.split("**The speed goals of the serving issue**", 1)[1].split("- The measurements", 1)[
        0
    ]
    share = float(floor[3]) / float(new_high[3])
    without_http = (float(new_high[3]) - float(floor[3])) / float(new_high[4])
    for quote in (
        f"costs {floor[3]} ms of CPU per request at wrk -c{high}, "
        f"{share:.0%} of the router's {new_high[3]} ms",
        f"{without_http:.2f}x the shards'",
        f"at wrk -c{low} the router spends {new_low[5]}x the shards' CPU per query "
        f"and at -c{high} {new_high[5]}x",
    ):
        assert quote in paragraph, f"design.md's speed-goals paragraph should say: {quote}"
