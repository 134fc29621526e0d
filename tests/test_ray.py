"""The Ray paths: benchmark runs as Ray tasks, and the Ray Tune search (needs the ``ray`` extra).

One local Ray instance (``ray.init(num_cpus=2)``, module-scoped, every test here on one xdist
worker) serves every test that needs one; the checks that must happen before Ray starts run
without it.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
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

# Under pytest-xdist (--dist=loadgroup) every test here runs on one worker: one Ray instance.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for this module's tests (one worker runs them all), shut down after the last:
    its workers import the test modules (runners named by them)."""
    path = os.pathsep.join([str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        yield ray
    finally:
        ray.shutdown()


def test_a_finished_run_stays_in_the_table_when_another_ray_worker_raises(tmp_path, ray_cluster) -> None:
    from khar_mmsa.experiments.sweep import ExecutorOptions, RunSpec, SweepFailed, run_sweep, write_tables
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    specs = [RunSpec(model="m", dataset="mosi", seed=s, feature_path=str(data), out_dir=str(tmp_path / f"r{s}"),
                     config={"fail": s == 2}, runner="test_sweep:quick_runner") for s in (1, 2)]
    with pytest.raises(SweepFailed, match="1 of 2 runs failed") as failed:
        run_sweep(specs, ExecutorOptions(executor="ray", data_transfer="object-store"),
                  manifest_path=tmp_path / "sweep-manifest.jsonl", stream=io.StringIO())
    assert "planted failure" in failed.value.outcome.errors[specs[1].run_id]
    paths = write_tables(specs, failed.value.outcome, tmp_path)
    assert pd.read_csv(paths["results"])["seed"].tolist() == [1]
    assert pd.read_csv(paths["summary"])["n_seeds"].tolist() == [1]


def test_ray_tune_search_that_must_fail_stops_before_ray_starts(tmp_path, tiny_features, tiny_bert,
                                                                 monkeypatch) -> None:
    """Every grid point's width not divisible by the heads, or a missing feature file: a
    TuneSetupError at once, and Ray is never started (its start raises here)."""
    from khar_mmsa.experiments import sweep
    from khar_mmsa.tuning import ray_tune
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(sweep, "ray_init", lambda *a, **k: pytest.fail("Ray was started"))
    grid = {"modal_dim": [18, 30], "learning_rate": [1e-3, 1e-4]}
    config_file = tune_config_file(tmp_path, "khar", grid)
    overrides = dict(TINY_KHAR, pretrained=str(tiny_bert), encoder_heads=4)
    overrides.pop("modal_dim")
    with pytest.raises(ray_tune.TuneSetupError, match=r"every one of the 4 grid points.*not divisible by encoder_heads=4"):
        ray_tune.search("khar", "mosi", config_file=str(config_file), config=overrides,
                        custom_feature=str(tiny_features("mosi")), num_samples=4, out_dir=tmp_path / "tune")
    with pytest.raises(ray_tune.TuneSetupError, match=r"the data cannot be used.*missing\.pkl"):
        ray_tune.search("khar", "mosi", config_file=str(config_file), config=dict(overrides, modal_dim=16),
                        custom_feature=str(tmp_path / "missing.pkl"), num_samples=4, out_dir=tmp_path / "tune")


class _RayStarted(Exception):
    """Raised where Ray would start: what happened before is all a test needs."""


def test_ray_tune_checks_at_most_the_limit_of_grid_points_and_says_so(tmp_path, tiny_features, tiny_bert,
                                                                      monkeypatch, caplog) -> None:
    """``python -m khar_mmsa tune -m khar``: KHaR's grid is larger than the preflight limit; the log
    names how many points were checked (at most the limit) out of the grid's size."""
    from khar_mmsa import cli
    from khar_mmsa.experiments import sweep
    from khar_mmsa.tuning import ray_tune

    def start_ray(*args, **kwargs):
        raise _RayStarted()
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(sweep, "ray_init", start_ray)
    with caplog.at_level("INFO", logger="MMSA"), pytest.raises(_RayStarted):
        cli.main(["tune", "-m", "khar", "-d", "mosi", "--custom-feature", str(tiny_features("mosi")),
                  "--set", f"pretrained={tiny_bert}", "--out", str(tmp_path / "tune")])
    lines = [r.getMessage() for r in caplog.records if "points checked before Ray starts" in r.getMessage()]
    assert len(lines) == 1, caplog.text[-2000:]
    checked, size = (int(w) for w in re.match(r"Ray Tune: (\d+) of the grid's (\d+) points", lines[0]).groups())
    assert size > ray_tune.PREFLIGHT_MAX_POINTS >= checked == len(ray_tune.preflight_indices(size))
    assert f"at most {ray_tune.PREFLIGHT_MAX_POINTS}" in lines[0]


def test_address_auto_without_ray_is_one_line(tmp_path, monkeypatch, capsys) -> None:
    from khar_mmsa import cli
    from khar_mmsa.experiments import sweep

    def no_cluster(*args, **kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to "
                              "by setting `--address` flag or `RAY_ADDRESS` environment variable.")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0")
    code = cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "--custom-feature", str(data), "--out",
                     str(tmp_path / "o"), "--executor", "ray", "--address", "auto"])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == ["python -m khar_mmsa: error: --address auto: no Ray cluster is running on this machine (Could "
                   "not find any running Ray instance. Please specify the one to connect to by setting `--address` "
                   "flag or `RAY_ADDRESS` environment variable.); start one with `ray start --head`, or leave "
                   "--address out to start a local Ray instance for this run"]
    assert cli.user_error(sweep.RayUnavailable("x")) is not None


def test_compare_through_ray_gives_the_local_table(tmp_path, tiny_bert, ray_cluster, fast_mmsa) -> None:
    """TFN x 2 seeds: as Ray tasks (feature pickle shipped through the object store) and in a local
    loop, the same table; only the driver wrote it.  One task in flight: one Ray worker
    imports MMSA, not two (several workers at once: the finished-run test above)."""
    from benchmarks import compare
    tables = {}
    for executor in ("local", "ray"):
        extra = ["--data-transfer", "object-store", "--max-in-flight", "1"] if executor == "ray" else []
        res = compare.main(["--data", "planted", "--smoke", "--out", str(tmp_path / executor), "--encoder", str(tiny_bert),
                            "--models", "tfn", "--seeds", "1", "2", "--threads", "1",
                            "--executor", executor, *extra])
        tables[executor] = pd.read_csv(res["table_csv"]).drop(columns=["wall_s"])
        records = [json.loads(line) for line in (tmp_path / executor / "sweep-manifest.jsonl").read_text().splitlines()]
        assert sum(r["event"] == "done" for r in records) == 2
        assert {r["executor"] for r in records if r["event"] == "start"} == {executor}
    assert tables["ray"].equals(tables["local"])
    ours = tables["ray"][tables["ray"]["source"] == "ours"]
    assert ours["row"].tolist() == ["TFN"] and (ours["seeds"] == 2).all()
    assert ours["MAE_mean"].map(math.isfinite).all()


def test_ray_tune_search_through_the_command_line_returns_a_config_that_mmsa_run_accepts(
        tmp_path, tiny_features, tiny_bert, ray_cluster, mmsa_run_kwargs, fast_mmsa, caplog, capsys,
        monkeypatch) -> None:
    """``python -m khar_mmsa tune`` on the defaults, shrunk only in size: adapter pretraining stays on
    (its epochs run in each trial, and the per-epoch report sees only the main training's); the
    :func:`ray_tune.search` outcome it prints is checked too, and the config file it writes trains
    with ``MMSA_run``.  One Tune run serves both (each costs a Tune start and a trial actor that
    imports MMSA): the search's two options without a flag (``search_seed``, ``progress_interval_s``)
    are added to the command line's call."""
    from khar_mmsa import cli
    from khar_mmsa.tuning import ray_tune
    from conftest import TINY_KHAR_SIZE
    from MMSA import MMSA_run
    search, outcomes = ray_tune.search, []

    def spied(*args, **kwargs):
        outcomes.append(search(*args, **dict(kwargs, search_seed=0, progress_interval_s=0.0)))
        return outcomes[-1]
    monkeypatch.setattr(ray_tune, "search", spied)
    grid = {"learning_rate": [1e-3, 1e-4], "contrastive_weight": [0.0, 0.1]}
    config_file = tune_config_file(tmp_path, "khar", grid)
    sizes = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_epochs=1, pretrained=str(tiny_bert))
    feature = Path(os.path.relpath(tiny_features("mosi")))  # as typed, relative to the working folder
    with caplog.at_level("INFO", logger="MMSA"):
        code = cli.main(["tune", "-m", "khar", "-d", "mosi", "-c", str(config_file), "--custom-feature", str(feature),
                         "--samples", "2", "-s", "1", "--out", str(tmp_path / "tune"), "--threads", "1",
                         "--grace-period", "1", "--reduction-factor", "2", "--cpus-per-trial", "1",
                         "--max-concurrent", "1",  # one trial actor, reused: one MMSA import
                         *[a for k, v in sizes.items() for a in ("--set", f"{k}={v}")]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert len(outcomes) == 1
    outcome = outcomes[0]
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Ray Tune: ") and "trials ended" in r.getMessage()]
    assert progress and progress[-1].startswith("Ray Tune: 2/2 trials ended (0 failed), 0 running, best valid_Loss")
    assert outcome.trials == 2 and outcome.metric == "valid_Loss" and outcome.mode == "min"
    assert set(outcome.best_params) == set(grid)
    assert all(outcome.best_params[k] in v for k, v in grid.items())
    # validation reported every epoch of the main training (none of pretraining's); the best is the
    # lowest validation loss any epoch reached
    history = pd.concat([r.metrics_dataframe for r in outcome.results if r.metrics_dataframe is not None])
    assert set(history["epoch"]) == {1, 2}
    assert outcome.best_value == pytest.approx(history["valid_Loss"].min())
    assert "Test_Loss" not in history.columns and not any(c.startswith("test") for c in history.columns)
    printed = re.search(r"best by validation valid_Loss = (\d+\.\d{4}) \(2 trials, epochs trained per trial "
                        r"\[(\d+), (\d+)\]\)", out)
    assert printed, out
    assert printed.group(1) == f"{outcome.best_value:.4f}"
    epochs = [int(printed.group(2)), int(printed.group(3))]
    assert epochs == outcome.epochs_per_trial and 2 in epochs and set(epochs) <= {1, 2}, out  # ASHA may stop one at 1
    trial_logs = list((tmp_path / "tune").rglob("mmsa.log"))
    assert len(trial_logs) == 2 and all("Pretraining adapters" in p.read_text() for p in trial_logs)
    # the written config file is in MMSA's schema and MMSA_run trains from it
    written = json.loads(Path(outcome.config_file).read_text())
    params = written["khar"]["datasetParams"]["mosi"]
    assert {k: params[k] for k in grid} == outcome.best_params and params["epochs"] == 2
    assert written["datasetCommonParams"]["mosi"]["unaligned"]["featurePath"] == str(tiny_features("mosi").resolve())
    assert f"config file: {outcome.config_file}" in out
    monkeypatch.chdir(tmp_path)  # -c from another folder
    row = MMSA_run("khar", "mosi", config_file=str(outcome.config_file), **mmsa_run_kwargs)
    assert row["Model"] == "khar" and math.isfinite(row["MAE"])
