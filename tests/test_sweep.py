"""Resumable sweeps (:mod:`khar_mmsa.experiments.sweep`) with the local executor, and the command line.

Ray's executor and Ray Tune are in ``test_ray.py`` (skipped without Ray).
"""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict

import pandas as pd
import pytest

from khar_mmsa import cli
from khar_mmsa.experiments.sweep import Manifest, RunSpec, SweepFailed, SweepProgress, run_sweep

REPO = Path(__file__).resolve().parents[1]
TFN_TINY = ["--set", "tfn:early_stop=1", "--set", "tfn:batch_size=8"]


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TQDM_DISABLE="1", OMP_NUM_THREADS="1")
    return env


# ---- a runner that fails once, then works (module-level: runners are named 'module:function') ----
def flaky_runner(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    marker = Path(spec.out_dir) / "attempted"
    if spec.config.get("fail_once") and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"planted failure of {spec.title}")
    return {"metrics": {"MAE": spec.seed / 10}}


def test_sweep_skips_finished_runs_and_retries_failed_ones(tmp_path: Path) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    specs = [RunSpec(model="m", dataset="mosi", seed=s, feature_path=str(data), out_dir=str(tmp_path / f"r{s}"),
                     config={"fail_once": s == 2}, runner="test_sweep:flaky_runner") for s in (1, 2, 3)]
    manifest = tmp_path / "manifest.jsonl"
    with pytest.raises(SweepFailed, match=r"1 of 3 runs failed.*run the same sweep again") as failed:
        run_sweep(specs, manifest_path=manifest, stream=io.StringIO())
    assert set(failed.value.outcome.results) == {specs[0].run_id, specs[2].run_id}
    assert "planted failure" in failed.value.outcome.errors[specs[1].run_id]

    outcome = run_sweep(specs, manifest_path=manifest, stream=io.StringIO())
    assert outcome.skipped == [specs[0].run_id, specs[2].run_id]
    assert [outcome.result(s)["metrics"]["MAE"] for s in specs] == [0.1, 0.2, 0.3]
    record = Manifest(manifest)
    assert [record.starts(s.run_id) for s in specs] == [1, 2, 1]  # only the failed run ran again
    assert all(record.state(s.run_id) == "done" for s in specs)
    # another config is another run
    changed = RunSpec(**{**specs[0].__dict__, "config": {"fail_once": False, "x": 1}})
    assert changed.run_id != specs[0].run_id and record.state(changed.run_id) is None


def test_progress_line_counts_and_eta() -> None:
    progress = SweepProgress("sweep mosi", total=5, done=1, stream=io.StringIO())
    progress.running = 2
    assert progress.line() == "sweep mosi: 1/5 done, 2 running, 0 failed, 2 left, ETA ?"
    progress.start -= 10.0  # 10 s ago
    progress.running, progress.done, progress.failed = 1, 2, 1  # 2 finished in this session: 0.2 runs/s
    assert progress.line() == "sweep mosi: 2/5 done, 1 running, 1 failed, 1 left, ETA 10 s"


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path, tiny_features, fast_mmsa) -> None:
    """SIGKILL the driver (``python -m khar_mmsa sweep``) after its first finished run; the same
    command again finishes the sweep and trains each finished run exactly once."""
    out = tmp_path / "sweep"
    args = ["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "2", "--custom-feature", str(tiny_features("mosi")),
            "--out", str(out), "--threads", "1", *TFN_TINY]
    manifest = out / "sweep-manifest.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "khar_mmsa", *args], env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            text = manifest.read_text() if manifest.is_file() else ""
            # kill once the first run is done and the next one has started (not in between:
            # on a busy machine the manifest's fsync makes that gap long enough to hit)
            if '"event": "done"' in text and text.count('"event": "start"') >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    before = Manifest(manifest)
    done_before = [i for i, r in before.last.items() if r["event"] == "done"]
    assert len(done_before) == 1 and any(r["event"] == "start" for r in before.last.values())

    assert cli.main(args) == 0
    after = Manifest(manifest)
    assert len(after.last) == 2 and all(r["event"] == "done" for r in after.last.values())
    assert all(after.starts(i) == 1 for i in done_before)
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["seed"]) == [1, 2] and results["MAE"].notna().all()


def test_cli_help_lists_mmsa_models_and_ours(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for name in ("khar", "tfn", "mult", "self_mm", "lf_dnn", "mmim", "tfr_net", "simsv2", "mosei",
                 "-Ft", "--model-save-dir", "-tt", "tune", "sweep"):
        assert name in text, name


def test_cli_trains_khar_on_a_tiny_planted_pickle(tmp_path: Path, tiny_features, tiny_bert) -> None:
    from khar_mmsa.integration.configs import merged_config
    from test_tune_mode import TINY_KHAR
    config = merged_config("regression")
    config["khar"]["datasetParams"]["mosi"].update(TINY_KHAR, pretrained=str(tiny_bert))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    dirs = {d: tmp_path / d for d in ("models", "results", "logs")}
    cmd = [sys.executable, "-m", "khar_mmsa", "-m", "khar", "-d", "mosi", "-s", "7", "-g", "0", "-c", str(config_file),
           "--custom-feature", str(tiny_features("mosi")), "-n", "0", "-v", "0", "--set", "epochs=1",
           "--model-save-dir", str(dirs["models"]), "--res-save-dir", str(dirs["results"]), "--log-dir", str(dirs["logs"])]
    done = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(dirs["results"] / "normal" / "mosi.csv")
    assert table["Model"].tolist() == ["khar"] and str(table["seeds"].iloc[0]) == "7"
    assert table["MAE"].notna().all() and (dirs["models"] / "khar-mosi.pth").is_file()
    assert json.loads(done.stdout)["Model"] == "khar"  # the row, printed
    assert "EPOCH-(khar) seed 1 epoch 1/1:" in (dirs["logs"] / "khar-mosi.log").read_text()  # --set epochs=1 reached it
