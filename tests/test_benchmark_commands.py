"""Every benchmark is a script with a documented command that runs (tests/benchmarks is not collected)."""

from __future__ import annotations

import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from list_benchmarks import benchmarks  # noqa: E402


def test_every_benchmark_documents_its_command():
    listed = benchmarks()
    assert {name for name, _, _ in listed} == {p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py")}
    for name, what, commands in listed:
        assert what and commands, f"bench_{name}.py: its docstring names no command that runs it"


@pytest.mark.parametrize("name", [name for name, _, _ in benchmarks()])
def test_every_benchmark_answers_help(name, monkeypatch):
    """`make bench-NAME ARGS=--help`: the script imports and parses its options (what `make bench` lists)."""
    path = BENCHMARKS / f"bench_{name}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        runpy.run_path(str(path), run_name="__main__")
    assert done.value.code in (0, None) and "usage:" in out.getvalue()
