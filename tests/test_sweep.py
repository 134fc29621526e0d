"""Resumable sweeps (:mod:`khar_mmsa.experiments.sweep`) with the local executor, and the command line.

Ray's executor and Ray Tune are in ``test_ray.py`` (skipped without Ray).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import pandas as pd
import psutil
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


def _sweep_driver(args: list, cwd: str) -> None:
    """``python -m khar_mmsa <args>`` in a forked child of the test process (which has imported
    MMSA already): the module entry point run as ``python -m`` runs it."""
    os.chdir(cwd)
    sys.argv = ["khar_mmsa", *args]
    runpy.run_module("khar_mmsa", run_name="__main__", alter_sys=True)


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path: Path, tiny_features, fast_mmsa) -> None:
    """SIGKILL the driver (``python -m khar_mmsa sweep``, a process of its own) after its first
    finished run; the same command again finishes the sweep and trains each finished run exactly once."""
    out = tmp_path / "sweep"
    args = ["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "2", "--custom-feature", str(tiny_features("mosi")),
            "--out", str(out), "--threads", "1", *TFN_TINY]
    manifest = out / "sweep-manifest.jsonl"
    proc = multiprocessing.get_context("fork").Process(target=_sweep_driver, args=(args, str(tmp_path)))
    proc.start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.is_alive():
            text = manifest.read_text() if manifest.is_file() else ""
            # kill once the first run is done and the next one has started (not in between:
            # on a busy machine the manifest's fsync makes that gap long enough to hit)
            if '"event": "done"' in text and text.count('"event": "start"') >= 2:
                break
            time.sleep(0.05)
        assert proc.is_alive(), f"the sweep ended (exit code {proc.exitcode}) before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=30)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=30)
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


def test_cli_trains_khar_on_a_tiny_planted_pickle(tmp_path: Path, tiny_features, tiny_bert, fast_mmsa, capsys,
                                                  monkeypatch) -> None:
    """``python -m khar_mmsa -m khar ...``: the module entry point, run in-process (runpy)."""
    from khar_mmsa.registration.configs import merged_config
    from test_tune_mode import TINY_KHAR
    config = merged_config("regression")
    config["khar"]["datasetParams"]["mosi"].update(TINY_KHAR, pretrained=str(tiny_bert))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    dirs = {d: tmp_path / d for d in ("models", "results", "logs")}
    argv = ["-m", "khar", "-d", "mosi", "-s", "7", "-g", "0", "-c", str(config_file),
            "--custom-feature", str(tiny_features("mosi")), "-n", "0", "-v", "0", "--set", "epochs=1",
            "--model-save-dir", str(dirs["models"]), "--res-save-dir", str(dirs["results"]), "--log-dir", str(dirs["logs"])]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["khar_mmsa", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("khar_mmsa", run_name="__main__", alter_sys=True)
    out, err = capsys.readouterr()
    assert exit_.value.code == 0, err[-3000:]
    table = pd.read_csv(dirs["results"] / "normal" / "mosi.tidy.csv")  # the numeric table beside MMSA's
    assert table["Model"].tolist() == ["khar"] and str(table["seeds"].iloc[0]) == "7"
    assert table["MAE"].notna().all() and (dirs["models"] / "khar-mosi.pth").is_file()
    assert json.loads(out)["Model"] == "khar"  # the row, printed
    assert "EPOCH-(khar) seed 7 epoch 1/1:" in (dirs["logs"] / "khar-mosi.log").read_text()  # --set epochs=1 reached it


# ---- identity: data by content, code by version -------------------------------------------------
def quick_runner(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    """A run that reads its data file and reports its seed (module-level: named by runners)."""
    if spec.config.get("fail"):
        raise RuntimeError(f"planted failure of {spec.title}")
    return {"metrics": {"MAE": spec.seed / 10 + len(Path(feature_path).read_bytes()) / 1000, "Mult_acc_2": 0.5}}


def _specs(tmp_path: Path, data: Path, seeds=(1, 2), **config: Any) -> list:
    return [RunSpec(model="m", dataset="mosi", seed=s, feature_path=str(data), out_dir=str(tmp_path / f"r{s}"),
                    config=dict(config), runner="test_sweep:quick_runner") for s in seeds]


def test_rerun_after_a_code_change_trains_again(tmp_path: Path, monkeypatch) -> None:
    from khar_mmsa.io import identity
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    manifest = tmp_path / "manifest.jsonl"
    monkeypatch.setattr(identity, "code_version", lambda: "0.1.0+aaaa")
    run_sweep(_specs(tmp_path, data), manifest_path=manifest, stream=io.StringIO())
    assert run_sweep(_specs(tmp_path, data), manifest_path=manifest, stream=io.StringIO()).skipped  # same code: reused
    monkeypatch.setattr(identity, "code_version", lambda: "0.1.0+bbbb")  # one source byte changed
    outcome = run_sweep(_specs(tmp_path, data), manifest_path=manifest, stream=io.StringIO())
    assert outcome.skipped == [] and len(outcome.results) == 2
    assert {r["identity"]["code"] for r in Manifest(manifest).records} == {"0.1.0+aaaa", "0.1.0+bbbb"}


def test_a_run_in_another_work_folder_is_the_same_run(tmp_path: Path) -> None:
    """Where a run's adapter file lives (a path under its --out) is not part of its identity; what
    it computes is: two folders give one run id, another setting another id."""
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)

    def spec(folder: str, **config):
        return RunSpec(model="khar", dataset="mosi", seed=1, feature_path=str(data), out_dir=str(tmp_path / folder),
                       config={"modal_dim": 64, "pretrained_adapters_path": str(tmp_path / folder / "a.pt"), **config})
    assert spec("walk").run_id == spec("walk-b").run_id
    assert spec("walk").run_id != spec("walk", modal_dim=32).run_id


def test_same_size_pickle_with_other_content_is_not_reused(tmp_path: Path) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    manifest = tmp_path / "manifest.jsonl"
    first = [s.run_id for s in _specs(tmp_path, data)]
    run_sweep(_specs(tmp_path, data), manifest_path=manifest, stream=io.StringIO())
    data.write_bytes(b"0" * 10)  # rewritten byte-identical: the same runs
    assert len(run_sweep(_specs(tmp_path, data), manifest_path=manifest, stream=io.StringIO()).skipped) == 2
    data.write_bytes(b"1" * 10)  # re-extracted: same name, same size, other labels
    again = _specs(tmp_path, data)
    assert not {s.run_id for s in again} & set(first)
    outcome = run_sweep(again, manifest_path=manifest, stream=io.StringIO())
    assert outcome.skipped == [] and all(Manifest(manifest).starts(s.run_id) == 1 for s in again)


def test_object_store_cache_is_reused_only_for_the_same_content(tmp_path: Path) -> None:
    from khar_mmsa.experiments.sweep import node_local_copy
    data = b"the shipped features"
    path = node_local_copy(data, tmp_path)
    assert path.read_bytes() == data and path.name.startswith(hashlib.sha256(data).hexdigest())
    path.write_bytes(b"X" * len(data))
    assert node_local_copy(data, tmp_path).read_bytes() == data  # same size, other bytes: rewritten


# ---- one driver per folder, Ray leftovers -------------------------------------------------------
def test_second_driver_on_the_same_folder_stops_with_one_line(tmp_path: Path, capsys) -> None:
    from khar_mmsa.experiments.sweep import SweepLock, SweepLocked
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    out = tmp_path / "sweep"
    with SweepLock(out):  # the first driver
        with pytest.raises(SweepLocked, match=r"another sweep driver \(pid \d+ on .*\) is running on"):
            run_sweep(_specs(out, data), manifest_path=out / "sweep-manifest.jsonl", stream=io.StringIO())
        code = cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "--custom-feature", str(data),
                         "--out", str(out)])
        assert code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("python -m khar_mmsa: error: another sweep driver (pid")
        assert not (out / "sweep-manifest.jsonl").exists()  # the second driver started nothing
    run_sweep(_specs(out, data), manifest_path=out / "sweep-manifest.jsonl", stream=io.StringIO())  # lock released


def test_lock_file_planted_as_a_link_is_not_followed(tmp_path: Path) -> None:
    from khar_mmsa.experiments.sweep import LOCK_NAME, SweepLock, SweepLocked
    target = tmp_path / "elsewhere"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK_NAME).symlink_to(target)
    with pytest.raises(SweepLocked, match="symbolic link"):
        with SweepLock(tmp_path / "out"):
            pass
    assert not target.exists()


_FAKE_RAY_DRIVER = """
import importlib.util, shutil, subprocess, sys, time, types
spec = importlib.util.find_spec("khar_mmsa")  # the package without its MMSA registration: a fast start
pkg = types.ModuleType("khar_mmsa"); pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["khar_mmsa"] = pkg
from khar_mmsa.experiments.sweep import RayProcessRecord
record = RayProcessRecord(sys.argv[1])
record.before_start()  # the token goes into the environment the 'Ray' processes inherit
# stand-ins for Ray's idle workers: their command line is what Ray's is (ray::IDLE), and for one of
# Ray's agents, whose retitling leaves its environment empty
children = [subprocess.Popen(["ray::IDLE", "120"], executable=shutil.which("sleep")) for _ in range(2)]
children.append(subprocess.Popen(["ray::DashboardAgent", "120"], executable=shutil.which("sleep"), env={}))
record.update()
print("ready", flush=True)
time.sleep(120)
"""


def _alive_as_recorded(pid: int, start: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - start) < 1.0
    except psutil.NoSuchProcess:
        return False


def test_ray_processes_of_a_killed_driver_are_stopped_by_the_next_one(tmp_path: Path) -> None:
    """A driver records the processes its Ray started; SIGKILLed, it leaves them running; the next
    sweep on the same folder stops them before it starts (here stand-ins for two Ray workers and
    an agent)."""
    from khar_mmsa.experiments.sweep import RAY_RECORD_NAME
    out = tmp_path / "sweep"
    out.mkdir()
    driver = subprocess.Popen([sys.executable, "-c", _FAKE_RAY_DRIVER, str(out)], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stdout.close()
    recorded = json.loads((out / RAY_RECORD_NAME).read_text())["processes"]
    assert len(recorded) == 3 and all(_alive_as_recorded(p["pid"], p["start"]) for p in recorded)  # orphaned
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    run_sweep(_specs(out, data, seeds=(1,)), manifest_path=out / "sweep-manifest.jsonl", stream=io.StringIO())
    assert not any(_alive_as_recorded(p["pid"], p["start"]) for p in recorded)  # stopped
    assert not (out / RAY_RECORD_NAME).exists()


# ---- a crafted record: nothing but the driver's own Ray processes is ever stopped -----------------
def _sleeper(argv0: str = "sleep", token: Optional[str] = None) -> subprocess.Popen:
    """``sleep 120`` with the command line ``<argv0> 120``, the sweep's token in its environment or not."""
    from khar_mmsa.experiments.sweep.processes import TOKEN_ENV
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.Popen([argv0, "120"], executable=shutil.which("sleep"), env=env)


def _execed(pid: int, argv0: str) -> psutil.Process:
    """The process ``pid`` once it runs its program (its command line starts with ``argv0``): right
    after a fork the child still shows its parent's command line, longer on a loaded machine."""
    process = psutil.Process(pid)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[:1] == [argv0]:
                return process
        time.sleep(0.02)
    return process


def _user_shell() -> list:
    """A user's shell and the ``sleep`` it waits for."""
    shell = subprocess.Popen(["sh", "-c", "sleep 120 & wait"])
    deadline = time.monotonic() + 30
    while not psutil.Process(shell.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [shell.pid] + [c.pid for c in psutil.Process(shell.pid).children()]


# case: (what the record lists, what the record says about itself, the reason logged); "genuine" is stopped
CRAFTED = {
    "user's shell and its sleep": ("shell", {}, "its command line is not a Ray process's"),
    "a Ray-titled process without the token": ("ray-no-token", {}, "does not carry the recording driver's token"),
    "the token but not a Ray command line": ("plain-token", {}, "its command line is not a Ray process's"),
    "recorded for another --out": ("ray-token", {"out": "elsewhere"}, "written for another folder"),
    "another start time (a reused pid)": ("ray-token", {"shift": 100.0}, "not the recorded process"),
    "its driver still running": ("ray-token", {"live_driver": True}, "is still running"),
    "an empty environment under a live Ray process": ("ray-under-ray", {}, "is a running Ray process"),
    "genuine": ("ray-token", {}, None),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_ray_record_stops_only_the_drivers_own_ray_processes(case: str, tmp_path: Path, caplog) -> None:
    """``sweep-ray-processes.json`` listing pids that are not Ray processes this --out's driver
    started: the next sweep leaves them running and logs why; a genuine leftover is stopped."""
    from khar_mmsa.experiments.sweep import RAY_RECORD_NAME
    what, record_says, reason = CRAFTED[case]
    token = "0123456789abcdef0123456789abcdef"
    out = tmp_path / "sweep"
    out.mkdir()
    spawned: list = []
    helper: list = []
    try:
        if what == "shell":
            pids = _user_shell()
            spawned = [psutil.Process(p) for p in pids]
        elif what == "ray-under-ray":  # another Ray instance's agent: its parent is a live Ray process
            code = ("import shutil, subprocess, time; c = subprocess.Popen(['ray::DashboardAgent', '120'], "
                    "executable=shutil.which('sleep'), env={}); print(c.pid, flush=True); time.sleep(120)")
            parent = subprocess.Popen(["ray::raylet", "-c", code], executable=sys.executable, stdout=subprocess.PIPE,
                                      text=True)
            helper.append(parent.pid)
            spawned = [_execed(int(parent.stdout.readline()), "ray::DashboardAgent")]
            parent.stdout.close()
        else:
            argv0 = "sleep" if what == "plain-token" else "ray::IDLE"
            proc = _sleeper(argv0, token if what in ("ray-token", "plain-token") else None)
            spawned = [_execed(proc.pid, argv0)]
        live_driver = _user_shell() if record_says.get("live_driver") else []
        helper += live_driver
        dead = subprocess.Popen(["true"])
        dead.wait()
        driver = (live_driver[0], psutil.Process(live_driver[0]).create_time()) if live_driver else (dead.pid, 0.0)
        record = {"driver": driver[0], "driver_start": driver[1], "host": socket.gethostname(),
                  "out": str(tmp_path / "elsewhere") if record_says.get("out") else str(out.resolve()),
                  "token": token,
                  "processes": [{"pid": p.pid, "start": p.create_time() - record_says.get("shift", 0.0),
                                 "cmdline": p.cmdline()} for p in spawned]}
        (out / RAY_RECORD_NAME).write_text(json.dumps(record))
        data = tmp_path / "features.pkl"
        data.write_bytes(b"0" * 10)
        with caplog.at_level("INFO", logger="MMSA"):
            run_sweep(_specs(out, data, seeds=(1,)), manifest_path=out / "sweep-manifest.jsonl", stream=io.StringIO())
        alive = [_alive_as_recorded(p.pid, p.create_time()) for p in spawned]
        if reason is None:
            assert not any(alive), "a genuine leftover Ray process of a killed driver was not stopped"
            assert "stopped 1 Ray process(es) that an earlier sweep driver" in caplog.text
        else:
            assert all(alive), f"{case}: a process that is not this driver's Ray was stopped"
            assert reason in caplog.text and "left alone" in caplog.text
            assert "stopped" not in caplog.text
        assert not (out / RAY_RECORD_NAME).exists()
    finally:
        for pid in [p.pid for p in spawned] + helper:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()


# ---- manifest lines that are not records ---------------------------------------------------------
def test_malformed_manifest_lines_are_ignored_by_name_and_their_runs_redone(tmp_path: Path, caplog) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    manifest = tmp_path / "manifest.jsonl"
    specs = _specs(tmp_path, data, seeds=(1, 2, 3))
    run_sweep(specs, manifest_path=manifest, stream=io.StringIO())
    lines = manifest.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    done = {r["run_id"]: n for n, r in enumerate(records) if r["event"] == "done"}
    # runs 2 and 3: their done records damaged in place (no outcome; an outcome without result)
    lines[done[specs[1].run_id]] = json.dumps(dict(records[done[specs[1].run_id]], outcome=None))
    lines[done[specs[2].run_id]] = json.dumps(dict(records[done[specs[2].run_id]], outcome={"wall_s": 1.0}))
    lines += [json.dumps([1, 2]), json.dumps({"event": "done", "outcome": {"result": {}}}), '{"run_id": "cut']
    manifest.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger="MMSA"):
        record = Manifest(manifest)
    assert sorted(record.ignored) == sorted([done[specs[1].run_id] + 1, done[specs[2].run_id] + 1,
                                             len(lines) - 2, len(lines) - 1, len(lines)])
    assert len([r for r in caplog.records if "Ignored: the run it records runs again" in r.getMessage()]) == 5
    for problem in ("'outcome' is null", "outcome lacks its 'result' object", "is a JSON list",
                    "lacks key(s) ['run_id']", "is not valid JSON"):
        assert problem in caplog.text, problem
    assert f"{manifest}:{done[specs[1].run_id] + 1}: manifest record" in caplog.text
    outcome = run_sweep(specs, manifest_path=manifest, stream=io.StringIO())  # no TypeError / KeyError
    assert outcome.skipped == [specs[0].run_id]  # the runs whose done record was damaged are made again
    assert [Manifest(manifest).starts(s.run_id) for s in specs] == [1, 2, 2]


# ---- the command line: seeds, tables, failures ---------------------------------------------------
def _fake_mmsa_run_one(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    if spec.seed == 13:
        raise RuntimeError("planted failure: a worker raised")
    return {"metrics": {"MAE": 0.7 + 0.05 * (spec.seed % 2), "Mult_acc_2": 0.6}}


def sweep_with_runner(tmp_path: Path, monkeypatch, runner, seeds) -> Tuple[int, Path]:
    """``python -m khar_mmsa sweep -m tfn -d mosi -s <seeds>`` with ``runner`` in place of
    ``mmsa_run_one`` (planted results, no training); returns the exit status and the --out folder."""
    from khar_mmsa.experiments import sweep
    monkeypatch.setattr(sweep, "mmsa_run_one", runner)
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    out = tmp_path / "sweep"
    return cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", *map(str, seeds), "--custom-feature", str(data),
                     "--out", str(out)]), out


def test_sweep_runs_every_repeated_seed_and_tables_in_mmsa_scale(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out = sweep_with_runner(tmp_path, monkeypatch, _fake_mmsa_run_one, (1111, 1112))
    assert code == 0
    runs = pd.read_csv(out / "results.csv")
    assert sorted(runs["seed"]) == [1111, 1112]
    assert runs["MAE"].tolist() == pytest.approx([75.0, 70.0])  # x100, as MMSA's results CSV
    summary = pd.read_csv(out / "summary.csv")
    row = summary.iloc[0]
    assert row["Model"] == "tfn" and row["n_seeds"] == 2 and str(row["seeds"]) == "1111 1112"
    assert (row["MAE"], row["MAE_std"]) == (72.5, 2.5)  # mean and population std (np.std) of 75 and 70
    assert (row["Mult_acc_2"], row["Mult_acc_2_std"]) == (60.0, 0.0)
    assert "n_seeds" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "-s", "1"],
                                  ["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "2", "1"],
                                  ["-m", "tfn", "-d", "mosi", "-s", "1", "-s", "1"]])
def test_duplicate_seeds_are_refused(argv, tmp_path: Path, capsys) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0")
    extra = ["--custom-feature", str(data), "--out", str(tmp_path / "o")] if argv[0] == "sweep" else []
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv + extra)
    assert exit_.value.code == 2
    assert "seed(s) 1 given more than once in -s" in capsys.readouterr().err


def test_tune_refuses_a_second_seed(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "-m", "khar", "-d", "mosi", "-s", "1", "-s", "2"])
    assert exit_.value.code == 2
    assert "-s given twice (1 and 2)" in capsys.readouterr().err


def test_finished_runs_are_in_the_table_when_another_run_fails(tmp_path: Path, monkeypatch, capsys) -> None:
    code, out = sweep_with_runner(tmp_path, monkeypatch, _fake_mmsa_run_one, (12, 13))
    assert code == 1
    assert pd.read_csv(out / "results.csv")["seed"].tolist() == [12]
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("python -m khar_mmsa")]
    assert len(err) == 1 and "1 of 2 runs failed" in err[0]


def test_threads_option_on_every_command(tmp_path: Path, monkeypatch) -> None:
    import torch
    from khar_mmsa.experiments import sweep
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(sweep, "mmsa_run_one", _fake_mmsa_run_one)
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    assert cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "--custom-feature", str(data),
                     "--out", str(tmp_path / "o"), "--threads", "3"]) == 0
    assert calls == [3, 3]  # the driver, then the run
    for parser in (cli.train_parser(), cli.tune_parser(), cli.sweep_parser()):
        assert "--threads" in parser.format_help()
    with pytest.raises(SystemExit):
        cli.train_parser().parse_args(["--threads", "0"])


# ---- one-line errors, light --help ----------------------------------------------------------------
def test_offline_encoder_error_is_one_line_in_cli_spelling_and_logged(tmp_path: Path, tiny_features, capsys) -> None:
    logs = tmp_path / "logs"
    code = cli.main(["-m", "khar", "-d", "mosi", "-s", "1", "-g", "0", "-n", "0", "-v", "0",
                     "--custom-feature", str(tiny_features("mosi")), "--set", f"pretrained={tmp_path / 'no-bert'}",
                     "--model-save-dir", str(tmp_path / "models"), "--res-save-dir", str(tmp_path / "results"),
                     "--log-dir", str(logs)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"python -m khar_mmsa: error: pretrained={tmp_path / 'no-bert'}: no such folder")
    assert "--set pretrained=all-MiniLM-L6-v2" in err[0] and "pretrained='" not in err[0]
    assert "[ERROR] - pretrained=" in (logs / "khar-mosi.log").read_text()


def test_cli_message_spelling() -> None:
    from khar_mmsa.config import ConfigError
    assert cli.cli_message(ConfigError("fusion='sums' is not one of ...; pass fusion='sum'")) == \
        "fusion=sums is not one of ...; pass --set fusion=sum"
    assert cli.cli_message(ValueError("x='a'")) == "x='a'"  # not a settings error: left as it is
    chained = RuntimeError("MMSA_run failed")
    chained.__cause__ = FileNotFoundError(2, "No such file or directory", "/x.pkl")
    assert cli.user_error(chained) is chained.__cause__ and cli.user_error(RuntimeError("bug")) is None


_HELP_IMPORTS = """
import json, runpy, sys
import khar_mmsa
package_heavy = sorted(m for m in ("torch", "MMSA", "transformers", "ray") if m in sys.modules)
sys.argv = ["khar_mmsa", "--help"]
try:
    runpy.run_module("khar_mmsa", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps({"package": package_heavy,
                  "help": sorted(m for m in ("torch", "MMSA", "transformers", "ray") if m in sys.modules)}))
"""


def test_help_imports_no_torch_mmsa_or_transformers() -> None:
    done = subprocess.run([sys.executable, "-c", _HELP_IMPORTS], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "python -m khar_mmsa" in done.stdout and "khar" in done.stdout
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    if loaded["package"]:
        pytest.skip(f"`import khar_mmsa` itself loads {loaded['package']} (made light separately)")
    assert loaded["help"] == []


def test_cli_commands_import_nothing_heavy_before_they_run() -> None:
    """cli.py and the sweep module, imported with a bare ``khar_mmsa`` package, pull in none of
    torch, MMSA, transformers or Ray, and --help of every command runs without them."""
    code = """
import importlib.util, sys, types
spec = importlib.util.find_spec("khar_mmsa")
pkg = types.ModuleType("khar_mmsa"); pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["khar_mmsa"] = pkg
from khar_mmsa import cli
for argv in (["--help"], ["tune", "--help"], ["sweep", "--help"]):
    try:
        cli.main(argv)
    except SystemExit as e:
        assert e.code == 0, argv
heavy = sorted(m for m in ("torch", "MMSA", "transformers", "ray", "pandas") if m in sys.modules)
print("light" if not heavy else heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("light"), done.stderr[-2000:]


# ---- the first hour's stumbles: the rerun's tables, the progress line -----------------------------
def _metrics_in_runner_order(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    """Metrics in the order a trainer gives them (not by name), as MMSA's do_test does."""
    return {"metrics": {"MAE": 0.7 + spec.seed / 1000, "Corr": 0.5, "Mult_acc_2": 0.6}}


def test_a_rerun_writes_the_tables_with_the_first_runs_columns(tmp_path: Path, monkeypatch, caplog) -> None:
    """The rerun reads finished runs back from the manifest (stored with sorted keys): its
    results.csv and summary.csv have the first run's header, also with a new seed mixed in."""
    from khar_mmsa.experiments import sweep
    monkeypatch.setattr(sweep, "mmsa_run_one", _metrics_in_runner_order)
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    out = tmp_path / "sweep"
    argv = ["sweep", "-m", "tfn", "-d", "mosi", "--custom-feature", str(data), "--out", str(out)]
    with caplog.at_level("INFO", logger="MMSA"):
        assert cli.main(argv + ["-s", "1"]) == 0
    headers = {name: (out / name).read_text().splitlines()[0] for name in ("results.csv", "summary.csv")}
    assert cli.main(argv + ["-s", "1"]) == 0  # every run reused from the manifest
    assert {name: (out / name).read_text().splitlines()[0] for name in headers} == headers
    assert cli.main(argv + ["-s", "1", "2"]) == 0  # one reused, one made now
    assert {name: (out / name).read_text().splitlines()[0] for name in headers} == headers
    assert pd.read_csv(out / "results.csv")["seed"].tolist() == [1, 2]
    # the progress line and the messages name the sweep once
    assert "sweep sweep" not in caplog.text
    assert any(r.getMessage().startswith("sweep mosi: 1/1 done") for r in caplog.records)


def test_a_lock_file_link_stops_the_sweep_before_any_work(tmp_path: Path, capsys) -> None:
    """``sweep.lock`` planted as a link: one line naming it, and nothing made -- no manifest, no run
    folder, nothing where the link points."""
    from khar_mmsa.experiments.sweep import LOCK_NAME
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    out = tmp_path / "sweep"
    out.mkdir()
    target = tmp_path / "journal.txt"
    (out / LOCK_NAME).symlink_to(target)
    code = cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", "1", "--custom-feature", str(data), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / LOCK_NAME} is a symbolic link" in err[0]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME] and not target.exists()


@pytest.mark.parametrize("size", [1, 7, 4095, 4096, 4097, 8192, 8193, 11664, 6377292000])
def test_preflight_checks_every_grid_point_up_to_the_limit_and_never_more(size: int) -> None:
    """Ray Tune's preflight (no Ray needed to pick the points): all points up to
    PREFLIGHT_MAX_POINTS, else at most that many, first point included."""
    from khar_mmsa.tuning.ray_tune import PREFLIGHT_MAX_POINTS, preflight_indices
    indices = preflight_indices(size)
    assert len(indices) == min(size, PREFLIGHT_MAX_POINTS) or size > PREFLIGHT_MAX_POINTS >= len(indices)
    assert len(indices) <= PREFLIGHT_MAX_POINTS and indices[0] == 0 and indices[-1] < size
    if size <= PREFLIGHT_MAX_POINTS:
        assert list(indices) == list(range(size))


RAY_DIR = "/venv/lib/python3.11/site-packages/ray"
RAY_COMMANDS = [  # the command lines of a local Ray instance's processes (ray 2.x), its folder RAY_DIR
    [f"{RAY_DIR}/core/src/ray/gcs/gcs_server", "--log_dir=/tmp/ray/session_x/logs"],
    [f"{RAY_DIR}/core/src/ray/raylet/raylet", "--raylet_socket_name=/tmp/ray/session_x/sockets/raylet"],
    ["/venv/bin/python", "-u", f"{RAY_DIR}/autoscaler/_private/monitor.py", "--logs-dir=/tmp/ray"],
    ["/venv/bin/python", f"{RAY_DIR}/dashboard/dashboard.py", "--host=127.0.0.1"],
    ["/venv/bin/python", "-u", f"{RAY_DIR}/_private/log_monitor.py", "--session-dir=/tmp/ray/session_x"],
    ["/venv/bin/python", f"{RAY_DIR}/_private/workers/default_worker.py", "--node-ip-address=127.0.0.1"],
    ["ray::IDLE"], ["ray::execute"], ["ray::DashboardAgent"],
]
NOT_RAY_COMMANDS = [
    ["sleep", "120"], ["/bin/bash"], ["sh", "-c", "sleep 120 & wait"], ["/venv/bin/python", "-c", "import ray"],
    ["/venv/bin/python", "/home/user/ray/train.py"], ["/usr/local/bin/raylet", "--fake"], ["python", "-m", "ray"],
    ["/venv/bin/python", "-u", "/home/user/x.py", f"{RAY_DIR}/dashboard/dashboard.py"], [], [""],
]


@pytest.mark.parametrize("cmdline", RAY_COMMANDS + NOT_RAY_COMMANDS)
def test_a_ray_process_is_told_by_its_command_line(cmdline) -> None:
    from khar_mmsa.experiments.sweep import is_ray_process
    assert is_ray_process(cmdline, ray_dir=RAY_DIR) == (cmdline in RAY_COMMANDS)
