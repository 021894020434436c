"""`recctl status` as a readable table, from the files the supervisor writes."""

from __future__ import annotations

from typing import Any

from shardrec.tools.local.state import StateDir, is_supervisor_running, read_json


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in status.get("conditions", []):
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def render_status(state: StateDir) -> str:
    status: dict[str, Any] = read_json(state.status_file) if state.status_file.exists() else {}
    runtime: dict[str, Any] = read_json(state.runtime_file) if state.runtime_file.exists() else {}
    running = is_supervisor_running(state)
    ready = _condition(status, "Ready")
    summary = _table(
        [
            ["NAME", "SHARDS", "READY-REPLICAS", "ACTIVE", "TARGET", "PHASE", "READY", "ROUTER"],
            [
                state.root.name,
                str(len(status.get("shards", []))),
                f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}",
                status.get("activeVersion", "") or "-",
                status.get("targetVersion", "") or "-",
                status.get("phase", "Pending") if running else "Stopped",
                ready.get("status", "Unknown"),
                runtime.get("router_url", "-") if running else "-",
            ],
        ]
    )
    parts = [summary]
    shards = status.get("shards", [])
    if shards:
        parts.append(
            _table(
                [["SHARD", "READY", "REPLICAS"]]
                + [[str(s["shard"]), str(s["readyReplicas"]), str(s["replicas"])] for s in shards]
            )
        )
    layouts = status.get("layouts", [])
    if layouts:
        parts.append(
            _table(
                [["LAYOUT", "VERSION", "SHARDS", "STATE", "SINCE", "MESSAGE"]]
                + [
                    [
                        layout["name"],
                        layout["version"],
                        str(layout["shards"]),
                        layout["state"],
                        layout["stateSince"],
                        layout.get("message", ""),
                    ]
                    for layout in layouts
                ]
            )
        )
    for kind in ("Progressing", "Degraded"):
        condition = _condition(status, kind)
        if condition.get("status") == "True":
            parts.append(f"{kind}: {condition.get('reason', '')}: {condition.get('message', '')}")
    return "\n\n".join(parts)
