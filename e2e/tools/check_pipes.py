"""Fail on a pipe into an early-exiting reader in a shell script that sets pipefail.

Why: under ``set -o pipefail``, ``cmd | head -1`` fails at random. ``head`` exits after one line, the
writer dies of SIGPIPE (exit 141) on its next write, and pipefail makes the whole pipeline fail. Whether
the writer still had output left when ``head`` exited depends on timing, so a warm machine (which skips
the step) and a lucky cold one pass. ``.ci/run`` once failed on every new machine this way.

Readers that stop reading before their input ends: ``head``, ``grep -q/-m/-l/--quiet/--max-count``,
``sed`` running a ``q`` command, ``awk`` calling ``exit``, and ``read``. Capture the output instead
(``out="$(cmd)"``) or use a reader that drains its input (``grep ... >/dev/null``, ``sed -n 1p``).

Scripts checked: every ``*.sh`` file, ``.ci/run`` and Makefiles (whose ``.SHELLFLAGS`` may set pipefail),
as git lists them. ``# pipes: ok`` at the end of a line silences it where the writer is known to be done.

Usage: python e2e/tools/check_pipes.py [PATH ...]   (default: the git-tracked scripts of the repo)
Exit 1 with one ``path:line: reader: text`` line per finding.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SETS_PIPEFAIL = re.compile(
    r"(^|\s)set\s+(-[a-zA-Z]*o\s+pipefail|-o\s+pipefail|.*\bpipefail\b)|SHELLFLAGS.*pipefail"
)
# A single `|` (not `||`), then the rest up to the next pipe; the reader is the command it starts with.
PIPE_INTO = re.compile(r"(?<!\|)\|(?!\|)\s*(?P<reader>[^|]*)")
EARLY_EXIT_READERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("head", re.compile(r"^head\b")),
    ("grep -q/-m/-l", re.compile(r"^[ef]?grep\b.*\s(-[a-zA-Z]*[qml]|--quiet|--silent|--max-count)")),
    ("sed ...q", re.compile(r"^sed\b.*[\d'\";/}]\s*q\b")),
    ("awk exit", re.compile(r"^awk\b.*\bexit\b")),
    ("read", re.compile(r"^(IFS=\S*\s+)?read\b")),
)
ALLOW_MARK = "# pipes: ok"


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    reader: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: pipe into {self.reader} under pipefail: {self.text.strip()}"


def early_exit_reader(command_after_pipe: str) -> str | None:
    """The name of the early-exiting reader that starts ``command_after_pipe``, or None."""
    text = command_after_pipe.strip()
    for name, pattern in EARLY_EXIT_READERS:
        if pattern.search(text):
            return name
    return None


def findings_in(path: Path, text: str) -> list[Finding]:
    """Every pipe into an early-exiting reader in ``text``, if the script sets pipefail at all."""
    if not SETS_PIPEFAIL.search(text):
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        if not code or ALLOW_MARK in line:
            continue
        for match in PIPE_INTO.finditer(code):
            reader = early_exit_reader(match.group("reader"))
            if reader:
                found.append(Finding(path, number, reader, line))
    return found


def is_script(path: Path) -> bool:
    return path.suffix == ".sh" or path.name == "Makefile" or path.as_posix().endswith(".ci/run")


def tracked_scripts(root: Path) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    return [root / name for name in listed if name and is_script(Path(name))]


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[2]
    paths = [Path(a) for a in argv] or tracked_scripts(root)
    found = [f for p in paths for f in findings_in(p, p.read_text(encoding="utf-8"))]
    for finding in found:
        print(finding)
    if found:
        print(f"{len(found)} pipe(s) into early-exiting readers under pipefail: see {__file__}'s docstring")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
