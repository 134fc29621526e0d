"""The Ray paths: benchmark runs as Ray tasks, and the Ray Tune search (needs the ``ray`` extra).

One local Ray instance (``ray.init(num_cpus=2)``) serves the module.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' runs these tests")
pytest.importorskip("ray.tune", reason="Ray Tune is not installed: pip install -e '.[ray]' runs these tests")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import khar_mmsa  # noqa: E402,F401 - registers the patches
from test_tune_mode import TINY_KHAR, tune_config_file  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_compare_through_ray_gives_the_local_table(tmp_path, tiny_bert, ray_cluster, fast_mmsa) -> None:
    """2 models x 2 seeds: as Ray tasks (feature pickle shipped through the object store) and in a
    local loop, the same table; only the driver wrote it."""
    from benchmarks import compare
    tables = {}
    for executor in ("local", "ray"):
        extra = ["--data-transfer", "object-store"] if executor == "ray" else []
        res = compare.main(["--data", "planted", "--smoke", "--out", str(tmp_path / executor), "--encoder", str(tiny_bert),
                            "--models", "tfn", "mult", "--seeds", "1", "2", "--threads", "1",
                            "--executor", executor, *extra])
        tables[executor] = pd.read_csv(res["table_csv"]).drop(columns=["wall_s"])
        records = [json.loads(line) for line in (tmp_path / executor / "sweep-manifest.jsonl").read_text().splitlines()]
        assert sum(r["event"] == "done" for r in records) == 4
        assert {r["executor"] for r in records if r["event"] == "start"} == {executor}
    assert tables["ray"].equals(tables["local"])
    ours = tables["ray"][tables["ray"]["source"] == "ours"]
    assert ours["row"].tolist() == ["TFN", "MulT"] and (ours["seeds"] == 2).all()
    assert ours["MAE_mean"].map(math.isfinite).all()


def test_ray_tune_search_returns_a_config_that_mmsa_run_accepts(tmp_path, tiny_features, tiny_bert, ray_cluster,
                                                               mmsa_run_kwargs, fast_mmsa) -> None:
    from khar_mmsa.experiments import ray_tune
    from MMSA import MMSA_run
    grid = {"learning_rate": [1e-3, 1e-4], "contrastive_weight": [0.0, 0.1]}
    config_file = tune_config_file(tmp_path, "khar", grid)
    overrides = dict(TINY_KHAR, pretrained=str(tiny_bert), epochs=3, early_stop=3)
    outcome = ray_tune.search("khar", "mosi", config_file=str(config_file), config=overrides,
                              custom_feature=str(tiny_features("mosi")), seed=1, num_samples=4, grace_period=1,
                              reduction_factor=2, cpus_per_trial=1, out_dir=tmp_path / "tune", search_seed=0)
    assert outcome.trials == 4 and outcome.metric == "valid_Loss" and outcome.mode == "min"
    assert set(outcome.best_params) == set(grid)
    assert all(outcome.best_params[k] in v for k, v in grid.items())
    # validation reported every epoch; the best is the lowest validation loss any epoch reached
    history = pd.concat([r.metrics_dataframe for r in outcome.results if r.metrics_dataframe is not None])
    assert set(history["epoch"]) == {1, 2, 3}
    assert outcome.best_value == pytest.approx(history["valid_Loss"].min())
    assert "Test_Loss" not in history.columns and not any(c.startswith("test") for c in history.columns)
    # the written config file is in MMSA's schema and MMSA_run trains from it
    written = json.loads(Path(outcome.config_file).read_text())
    params = written["khar"]["datasetParams"]["mosi"]
    assert {k: params[k] for k in grid} == outcome.best_params and params["epochs"] == 3
    row = MMSA_run("khar", "mosi", config_file=str(outcome.config_file), **mmsa_run_kwargs)
    assert row["Model"] == "khar" and math.isfinite(row["MAE"])
