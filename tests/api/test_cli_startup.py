"""`recctl` imports only the module of the command it runs: an index-build pod (the Indexed Job runs
one per shard) must not pay for the CRD generator, the CEL evaluator, the local runtime or the
training pipeline at every start. `--help`, no command or an unknown one still see every command."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shardrec.tools.cli import main as cli

HEAVY = ("shardrec.api.crd", "shardrec.api.cel", "shardrec.api.v1alpha1", "shardrec.tools.local.supervisor")


def _modules_after(argv: list[str]) -> list[str]:
    """shardrec modules imported by a fresh interpreter that runs `recctl <argv>` (help exits 0)."""
    script = (
        "import json, sys\n"
        "from shardrec.tools.cli.main import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('shardrec'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    modules: list[str] = json.loads(out.strip().splitlines()[-1])
    return modules


def test_index_commands_import_neither_the_crd_nor_cel_nor_the_local_runtime() -> None:
    for argv in (["index", "build", "--help"], ["index", "fetch", "--help"]):
        modules = _modules_after(argv)
        assert "shardrec.tools.cli.index_cmd" in modules
        assert not [m for m in HEAVY if m in modules], argv
        assert not [m for m in modules if m.startswith("shardrec.tools.pipeline")], argv


def test_help_and_unknown_commands_still_see_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    listed = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in listed
    with pytest.raises(SystemExit) as exited:
        cli.main(["indx"])
    assert exited.value.code == 2
    assert "'index'" in capsys.readouterr().err, "the choices name every command"


def test_the_command_table_names_exactly_what_each_module_registers() -> None:
    registered: dict[str, str] = {}
    # Every command module on disk, so one left out of the table is caught too.
    cli_folder = Path(cli.__file__).parent
    module_names = sorted(f"shardrec.tools.cli.{path.stem}" for path in cli_folder.glob("*_cmd.py"))
    assert module_names == sorted(cli.SUBCOMMAND_MODULES)
    for module_name in module_names:
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        importlib.import_module(module_name).register(subparsers)
        registered.update(dict.fromkeys(subparsers.choices, module_name))
    assert registered == cli.COMMANDS
