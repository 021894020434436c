"""The extras split by image (pyproject.toml): `[serving]` for the data-plane image, `[operator]` for the
operator image, base dependencies only what both need. Checked against what the code imports:
the operator's whole import graph (grimp, lazy imports included) and, for the data plane, the modules
its commands load (each console script run with --help, as the image's smoke test runs them, with the
modules of every other distribution made unimportable)."""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tomllib
from functools import cache

import grimp
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.ship.tools import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
SELF = canonicalize_name(PROJECT["name"])
OPERATOR_PACKAGE = "shardrec_operator"
OPERATOR_SCRIPT = "shardrec-operator"
# The data-plane commands the operator runs in pods: shard, router, index-build Job.
SERVING_COMMANDS = (
    ["shardrec-shard", "--help"],
    ["shardrec-router", "--help"],
    ["recctl", "index", "build", "--help"],
)
NOT_IN_OPERATOR_IMAGE = {"hnswlib", "numpy", "fastapi", "uvicorn", "starlette"}
# Not modules of a distribution: the script itself, and the pseudo-module Cython extensions register.
STDLIB = set(sys.stdlib_module_names) | {"__main__", "__mp_main__", "cython_runtime"}

# Runs a console script as the image would: modules of distributions outside the extra cannot be
# imported (optional imports then take their fallback, as in the image); prints what it loaded.
_RUN_WITH_ONLY = """
import importlib.metadata as md, json, sys
blocked = set(json.loads(sys.argv[1]))
at_start = set(sys.modules)  # the interpreter's own, and what site's .pth files loaded

class OnlyTheExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not installed by the extra)", name=name)

sys.meta_path.insert(0, OnlyTheExtra())
(entry,) = md.entry_points(group="console_scripts", name=sys.argv[2])
try:
    entry.load()(sys.argv[3:])
except SystemExit as stop:
    if stop.code not in (0, None):
        raise
print("\\n" + json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - at_start})))
"""


def _project_requirements(extra: str | None) -> list[Requirement]:
    """Base dependencies plus `extra`'s, with the project's own `shardrec[...]` references expanded."""
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for raw in PROJECT["optional-dependencies"].get(extra, []) if extra else []:
        req = Requirement(raw)
        if canonicalize_name(req.name) == SELF:
            for inner in req.extras:
                reqs += [r for r in _project_requirements(inner) if r not in reqs]
        else:
            reqs.append(req)
    return reqs


@cache
def _dependency_closure(extra: str | None) -> frozenset[str]:
    """Every distribution `pip install shardrec[extra]` installs (from the installed metadata)."""
    seen: set[str] = set()
    todo = [(r, frozenset()) for r in _project_requirements(extra)]
    while todo:
        req, extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
            continue
        name = canonicalize_name(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in seen:
            continue
        seen.add(key)
        todo += [(Requirement(r), frozenset(req.extras)) for r in md.requires(name) or []]
    return frozenset(k.split("[")[0] for k in seen)


def _distributions(modules: set[str]) -> set[str]:
    """The distributions providing these top-level modules (the project's own excluded)."""
    owners = md.packages_distributions()
    found: set[str] = set()
    for module in modules - STDLIB:
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists or module.startswith("_") or module in {"shardrec", OPERATOR_PACKAGE}, (
            f"no installed distribution provides the imported module {module!r}"
        )
        found |= dists - {SELF}
    return found


def _operator_imports() -> set[str]:
    graph = grimp.build_graph("shardrec", OPERATOR_PACKAGE, include_external_packages=True)
    reached: set[str] = set()
    todo = [m for m in graph.modules if m.split(".")[0] == OPERATOR_PACKAGE]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo += graph.find_modules_directly_imported_by(module)
    return {m.split(".")[0] for m in reached}


def _outside(extra: str) -> list[str]:
    """Top-level modules that only distributions outside `pip install shardrec[extra]` provide."""
    inside = _dependency_closure(extra) | {SELF}
    return sorted(
        module
        for module, dists in md.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & inside
    )


def _serving_imports() -> set[str]:
    loaded: set[str] = set()
    blocked = json.dumps(_outside("serving"))
    for command in SERVING_COMMANDS:
        proc = subprocess.run(
            [sys.executable, "-c", _RUN_WITH_ONLY, blocked, *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
        assert proc.returncode == 0, f"{command} with only [serving] installed: {proc.stderr}"
        loaded |= set(json.loads(proc.stdout.splitlines()[-1]))
    return loaded


def test_operator_extra_covers_the_operator_and_carries_no_data_plane() -> None:
    used = _distributions(_operator_imports())
    installed = _dependency_closure("operator")
    assert used <= installed, f"imported by {OPERATOR_PACKAGE} but not in [operator]: {used - installed}"
    assert not NOT_IN_OPERATOR_IMAGE & installed, NOT_IN_OPERATOR_IMAGE & installed
    assert not NOT_IN_OPERATOR_IMAGE & _operator_imports()


def test_serving_extra_covers_the_data_plane_commands() -> None:
    used = _distributions(_serving_imports())
    installed = _dependency_closure("serving")
    assert used <= installed, f"imported by {SERVING_COMMANDS} but not in [serving]: {used - installed}"
    assert {"hnswlib", "numpy", "fastapi", "kubernetes"} <= installed


def test_base_dependencies_are_what_both_images_use() -> None:
    base = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    operator, serving = _distributions(_operator_imports()), _distributions(_serving_imports())
    assert base <= operator & serving, (
        f"base dependencies one image does not use: {base - (operator & serving)}"
    )
    assert OPERATOR_SCRIPT in PROJECT["scripts"]


def test_dev_installs_every_image_extra() -> None:
    dev = {str(r) for r in _project_requirements("dev")}
    for extra in ("serving", "operator"):
        assert {str(r) for r in _project_requirements(extra)} <= dev


def test_the_makefiles_requirement_pickers_each_pick_one_bench_requirement() -> None:
    """`make bench-peers` installs a missing bench dependency by grepping its requirement out of
    pyproject.toml. Each such pipeline must give exactly one requirement of the bench extra: a
    second match (the same name in mypy's module list, say) makes pip refuse the whole string."""
    makefile = (ROOT / "Makefile").read_text()
    pickers = re.findall(r"\"\$\$\((grep -o '[^']+' pyproject\.toml \| tr -d '\"')\)\"", makefile)
    assert pickers, "no requirement pickers found in the Makefile: update this test"
    bench = {str(requirement) for requirement in _project_requirements("bench")}
    for picker in pickers:
        shell = picker.replace("$$", "$")
        picked = subprocess.run(
            ["sh", "-c", shell], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split("\n")
        assert len(picked) == 2 and not picked[1], f"`{shell}` picks {picked[:-1]}, not one line"
        assert str(Requirement(picked[0])) in bench, f"`{shell}` picks {picked[0]!r}, not a bench requirement"
