"""A run killed mid-way resumes: the same command recomputes only the shards that had not finished."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import kill_run_when, make_images, planted_job
from pipeline.cli import main
from pipeline.job.load import load_job
from pipeline.registry import STAGES
from pipeline.run import run_job

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # a run in a subprocess, killed


def test_killed_run_resumes_from_finished_shards(tmp_path, capsys):
    make_images(tmp_path / "images", count=160, size=96)
    job = planted_job(tmp_path, batch=2, shard=2)  # 80 shards of one batch each
    job.write_text(job.read_text().replace("input_size = 32", "input_size = 96"))
    kill_run_when(job, "*/shard-*.pkl", 2)
    work = tmp_path / "catalog" / ".work"
    finished = len(list(work.glob("*/shard-*.pkl")))
    assert 2 <= finished < 80
    assert not (tmp_path / "catalog" / "manifest.json").exists()

    assert main(["run", str(job)]) == 0
    out = capsys.readouterr().out
    line, = [ln for ln in out.splitlines() if "resumed:" in ln]
    computed = int(line.split("interrupted run, ")[1].split(" computed")[0])
    assert f"resumed: {finished} shard(s) reused from the interrupted run" in line

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    whole = run_job(load_job(job, STAGES), out=fresh / "catalog")  # the activations' 80 shards, then the crops' chunks
    assert whole.shards_reused == 0 and whole.shards_computed == finished + computed > 80
    for name in ("units", "examples"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "catalog" / f"{name}.parquet"),
                                      pd.read_parquet(fresh / "catalog" / f"{name}.parquet"), check_exact=True)
