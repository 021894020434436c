"""The A/B section of docs/benchmarks.md was written by the current `python benchmarks/ab.py`: same
command, same table headers, one row per part and payload it measures, verdicts that follow the
threshold. The numbers themselves are not asserted (the machine is shared and noisy)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _ab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ab", REPO / "benchmarks" / "ab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_ab", module)
    spec.loader.exec_module(module)
    return module


ab = _ab()


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.strip() for cell in line[2:-2].split(" | ")]


def check_section(section: str) -> None:
    """Fails when `section` is not in the format `benchmarks/ab.py` writes today."""
    assert section.startswith(ab.BEGIN) and section.endswith(ab.END)
    assert f"Command: `{ab.COMMAND}` (also `make bench-ab`)" in section
    assert re.search(r"^- Machine: .*load average [\d.]+ at start, [\d.]+ at end", section, re.M), section
    lines = section.splitlines()
    detail = lines.index(ab.DETAIL_HEADER)
    assert lines[detail + 1] == ab.DETAIL_RULE
    width = len(_cells(ab.DETAIL_HEADER))
    parts = {part.name: part for part in ab.PARTS}
    seen = []
    for line in lines[detail + 2 :]:
        if not line:
            break
        cells = _cells(line)
        assert len(cells) == width, line
        part = parts[cells[0]]
        assert cells[1] in part.payloads and (cells[2], cells[3]) == (part.a, part.b), line
        assert float(cells[4].replace(",", "")) >= 0 and float(cells[5].replace(",", "")) >= 0
        assert re.fullmatch(r"[\d.]+x", cells[6]), line
        seen.append((cells[0], cells[1]))
    assert seen == [(part.name, payload) for part in ab.PARTS for payload in part.payloads]
    verdict = lines.index(ab.VERDICT_HEADER)
    assert lines[verdict + 1] == ab.VERDICT_RULE
    rows = [_cells(line) for line in lines[verdict + 2 : lines.index(ab.END)] if line]
    assert [row[0] for row in rows] == [part.name for part in ab.PARTS]
    for name, module, ratio, decision in rows:
        assert module == f"`{parts[name].module}`"
        assert decision == ("keep" if float(ratio.rstrip("x")) >= ab.THRESHOLD else "drop"), (name, ratio)


def test_the_committed_ab_section_has_the_current_format() -> None:
    check_section(ab.section_of((REPO / "docs" / "benchmarks.md").read_text()))


def test_what_the_command_writes_passes_the_same_check(tmp_path: Path) -> None:
    """The check above is the writer's format, not a copy that could drift from it."""
    results = []
    for n, part in enumerate(ab.PARTS):
        for payload in part.payloads:
            result = ab.Result(part.name, payload, server=n == 0)
            result.a.add(0.5, 1.0, 1000)
            result.b.add(0.5 * (1 + n), 1.0, 1000)
            results.append(result)
    section = ab.render_section(
        results,
        machine=ab.machine_line(1.0, 2.0),
        rounds=2,
        concurrency={"client": 8, "router": 16},
        elapsed=1.0,
    )
    check_section(section)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nthe wrk table\n")
    ab.write_section(doc, section)
    ab.write_section(doc, section)  # rewriting replaces the section, keeps the rest
    assert doc.read_text().count(ab.BEGIN) == 1 and "the wrk table" in doc.read_text()
    check_section(ab.section_of(doc.read_text()))


def test_the_library_router_is_served_as_a_router_worker_serves(monkeypatch: Any) -> None:
    """B of the gate's A/B differs from A only at the edge: its uvicorn configuration is the
    router's own (`router.main.server_config`: the guarded httptools protocol, which also sends a
    response in one write, the backlog, the timeouts). A hand-copied configuration drifted once,
    and B paid two send() calls per response that A did not."""
    import uvicorn

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import ab_router
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    from shardrec.serving.router.main import server_config

    served: list[uvicorn.Config] = []

    class Recorder:
        def __init__(self, config: uvicorn.Config) -> None:
            served.append(config)

        def run(self, sockets: Any = None) -> None:
            for sock in sockets or ():
                sock.close()

    app = object()
    monkeypatch.setattr(ab_router, "settings_from_args", lambda args: (None, None, 0))
    monkeypatch.setattr(ab_router, "create_library_app", lambda settings, source: app)
    monkeypatch.setattr(uvicorn, "Server", Recorder)
    monkeypatch.setattr(sys, "argv", ["ab_router.py", "--host", "127.0.0.1"])
    assert ab_router.main() == 0
    (config,) = served
    router = server_config(app, loop=config.loop, log_level=config.log_level)  # type: ignore[arg-type]
    fields = ("backlog", "timeout_keep_alive", "timeout_graceful_shutdown", "access_log")
    fields += ("proxy_headers", "server_header", "date_header")
    assert {f: getattr(config, f) for f in fields} == {f: getattr(router, f) for f in fields}
    # guarded_protocol makes a class per call: the same protocol, bound to the same limits.
    assert isinstance(config.http, type) and isinstance(router.http, type)
    assert config.http.__mro__[1:] == router.http.__mro__[1:]
    assert config.http.limits == router.http.limits  # type: ignore[attr-defined]


def test_the_gate_ab_runs_each_router_as_one_process(tmp_path: Path) -> None:
    """The A/B reads each router's CPU from its one pid (/proc/PID/stat). `shardrec-router` starts
    a worker per usable CPU by default, and its parent then serves nothing: A measured ~0 CPU and
    the bench divided by it. Both sides run one process serving the port."""
    from shardrec.serving.router.main import build_parser

    a_argv, b_argv = ab.router_argvs(tmp_path / "topology.json", tmp_path / "config.json")
    assert a_argv[1:3] == ["-m", ab.ROUTER_MODULE] and b_argv[1].endswith("ab_router.py")
    for argv in (a_argv, b_argv):
        assert build_parser().parse_args(argv[3 if argv is a_argv else 2 :]).workers == 1, argv
