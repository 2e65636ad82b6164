"""A run killed mid-way resumes: the same command recomputes only the shards that had not finished."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import kill_run_when, make_images, planted_job
from pipeline.cli import main

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
    assert f"resumed: {finished} shard(s) reused from the interrupted run, {80 - finished} computed" in out

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert main(["run", str(job), "--out", str(fresh / "catalog")]) == 0
    for name in ("units", "examples"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "catalog" / f"{name}.parquet"),
                                      pd.read_parquet(fresh / "catalog" / f"{name}.parquet"), check_exact=True)
