"""Every benchmark of this folder: what it measures and the command that runs it (`make bench` prints this).

Each bench_*.py is a script run by hand (pytest does not collect it); its docstring holds its command, and
docs/BENCHMARKS.md the figures it gave with that command. `make bench-NAME ARGS="..."` runs bench_NAME.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

HERE = Path(__file__).resolve().parent


def benchmarks() -> list[tuple[str, str, list[str]]]:
    """(name, what it measures, its documented command lines) of every bench_*.py, by name."""
    out = []
    for path in sorted(HERE.glob("bench_*.py")):
        text = ast.get_docstring(ast.parse(path.read_text())) or ""
        commands = [line.strip() for line in text.splitlines() if f"benchmarks/{path.name}" in line]
        out.append((path.stem.removeprefix("bench_"), " ".join(text.split("\n\n")[0].split()), commands))
    return out


if __name__ == "__main__":
    for name, what, commands in benchmarks():
        print(f"{name}: {what}")
        for command in commands:
            print(f"    {command}")
    print("\nRun one: make bench-NAME ARGS=\"...\" (its options: make bench-NAME ARGS=--help). Figures: docs/BENCHMARKS.md")
