"""benchmarks/campaign*.py: the decision rules and the paired reading on hand-made numbers (the
interval, p and MDE recomputed by hand in closed form), the work queue's claims, and the campaign end
to end in ``--smoke`` mode through its command line (tiny BERT, a small label.csv, two seeds, two
epochs): one record per finished run, a rerun that trains nothing, a damaged record run again, a
stale claim taken over and said so, tables rendered from the records alone."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import campaign, campaign_plan  # noqa: E402
from benchmarks.campaign_plan import CHOICE_ROWS, LR_ROWS, Campaign, Slot  # noqa: E402


# ---- the rules ------------------------------------------------------------------------------------
def test_a_switch_beats_the_default_only_by_more_than_the_larger_std():
    reference = np.array([0.80, 0.82, 0.84])            # mean 0.82, std 0.0163
    assert campaign_plan.beats(np.array([0.78, 0.79, 0.80]), reference)        # 0.79: 0.03 lower
    assert not campaign_plan.beats(np.array([0.80, 0.81, 0.81]), reference)    # 0.807: 0.013 lower, within
    assert not campaign_plan.beats(np.array([0.70, 0.80, 0.90]), reference)    # lower mean, but std 0.08
    assert not campaign_plan.beats(reference + 0.05, reference)                # worse


def _finder(maes):
    """A finder over hand-made validation MAEs: {variant: [one per seed]}."""
    def find(slot):
        seeds = maes.get(slot.variant)
        if seeds is None:
            return None
        return {"seed": slot.seed, "outcome": {"result": {"valid": {"MAE": seeds[slot.seed - 1]}}}}
    return find


SMALL = Campaign(work=Path("unused"), records=Path("unused"))
SMALL_SEEDS = (1, 2, 3)


@pytest.fixture(autouse=True)
def _three_seeds(monkeypatch):
    monkeypatch.setattr(campaign_plan, "SEEDS", SMALL_SEEDS)


def test_the_lr_table_chooses_each_familys_lower_mean_and_waits_for_every_seed():
    maes = {"floor@quick": [0.86, 0.87, 0.85], "floor@table5": [0.90, 0.91, 0.92],
            "khar@quick": [0.85, 0.90, 0.88], "khar@table5": [0.84, 0.86, 0.85]}
    assert campaign_plan.chosen_rates(SMALL, _finder(maes)) == {"floor": "quick", "khar": "table5"}
    maes["khar@table5"] = maes["khar@table5"][:2] + [None]
    missing = dict(maes)

    def find(slot):
        rec = _finder(missing)(slot)
        return None if rec is None or rec["outcome"]["result"]["valid"]["MAE"] is None else rec
    assert campaign_plan.chosen_rates(SMALL, find) is None
    assert campaign_plan.table_slots(SMALL, "walk", find) is None and campaign_plan.table_slots(SMALL, "final", find) is None
    assert len(campaign_plan.table_slots(SMALL, "lr", find)) == len(LR_ROWS) * len(SMALL_SEEDS)


def test_choices_adopt_only_clear_winners_the_best_of_a_field_and_combine_fields():
    base = [0.85, 0.86, 0.87]
    maes = {f"{r.key}@quick": base for r in CHOICE_ROWS}
    maes["tau-0.07@quick"] = [0.80, 0.81, 0.80]      # clear winner
    maes["tau-0.2@quick"] = [0.78, 0.79, 0.78]       # clearer winner of the same field
    maes["text-len-50@quick"] = [0.82, 0.83, 0.82]   # clear winner of another field
    maes["no-gate-noise@quick"] = [0.845, 0.855, 0.86]  # within the std: not adopted
    maes["floor-text-len-50@quick"] = [0.80, 0.80, 0.80]  # the floor's own switch, against the floor
    chosen = campaign_plan.chosen_switches(SMALL, _finder(maes), {"khar": "quick", "floor": "quick"})
    assert chosen == {"khar": {"contrastive_temperature": 0.2, "text_len": 50}, "floor": {"text_len": 50}}
    final = campaign_plan.table_slots(SMALL, "final", _finder({**maes, **{f"{f}@{r}": base for f in ("floor", "khar")
                                                                    for r in ("quick", "table5")}}))
    khar = [s for s in final if s.row.family == "khar"]
    assert {s.variant for s in khar} == {"khar@quick+contrastive_temperature=0.2+text_len=50"}
    assert all(s.row.text_len == 50 and dict(s.chosen) == {"contrastive_temperature": 0.2} for s in khar)
    assert all(s.row.text_len == 50 for s in final if s.row.family not in ("khar", "floor"))  # KHaR's data


def test_the_runs_csv_holds_mmsa_baselines_which_report_the_test_split_only():
    """MMSA's TFN / MulT / Self-MM records carry test metrics and no validation epoch; the final table's
    rows of them have test numbers and empty validation cells, KHaR's have both."""
    from benchmarks.campaign_report import runs_frame
    base = [0.85, 0.86, 0.87]
    maes = {f"{r.key}@quick": base for r in CHOICE_ROWS}
    maes.update({f"{f}@{r}": base for f in ("floor", "khar") for r in ("quick", "table5")})

    def find(slot):
        if slot.row.family in ("khar", "floor"):
            rec = _finder(maes)(slot)
            rec["outcome"]["result"]["metrics"] = {"MAE": 0.9, "Corr": 0.7}
        else:
            rec = {"seed": slot.seed, "outcome": {"result": {"metrics": {"MAE": 1.0, "Corr": 0.5}}}}
        return {**rec, "variant": slot.variant, "model": slot.model, "identity": {"code": "c"}, "finished": "t",
                "run_id": f"{slot.variant}-{slot.seed}"}
    runs = runs_frame(SMALL, find, ("choices", "final"))
    final = runs[runs["table"] == "final"]
    assert len(final) == len(campaign_plan.FINAL_ROWS) * len(SMALL_SEEDS) and final["test_MAE"].notna().all()
    baselines = final[final["model"].isin(campaign_plan.BASELINES)]
    assert len(baselines) == 3 * len(SMALL_SEEDS) and baselines["valid_MAE"].isna().all()
    assert final[final["model"] == "khar"]["valid_MAE"].notna().all()
    assert runs[runs["table"] == "choices"]["test_MAE"].isna().all()


def test_tfn_trains_on_batches_of_more_than_one_clip():
    """MMSA's loader keeps a short last batch and TFN's BatchNorm refuses one clip in training: the
    1281 training transcripts in MMSA's batches of 32 leave exactly one."""
    tfn = next(r for r in campaign_plan.FINAL_ROWS if r.family == "tfn")
    batch = SMALL.config(tfn, "quick")["batch_size"]
    assert batch == campaign_plan.TFN_BATCH_SIZE and 1281 % batch > 1
    import MMSA
    mmsa_batch = json.loads((Path(MMSA.__file__).parent / "config" / "config_regression.json").read_text())
    assert 1281 % mmsa_batch["tfn"]["datasetParams"]["mosi"]["batch_size"] == 1   # why the override exists


def test_rows_with_the_same_settings_are_the_same_run_across_tables():
    """The lr table's run at the chosen rate is the walk's and the choices' row: same variant, same
    config, so the queue trains it once."""
    lr = Slot(next(r for r in LR_ROWS if r.family == "khar" and r.rate == "quick"), 1, "quick")
    walk = Slot(campaign_plan.WALK_ROWS[-1], 1, "quick")
    choice = Slot(CHOICE_ROWS[0], 1, "quick")
    assert lr.variant == walk.variant == choice.variant == "khar@quick"
    assert SMALL.config(lr.row, "quick") == SMALL.config(walk.row, "quick") == SMALL.config(choice.row, "quick")


def test_no_setting_of_a_real_run_is_a_path_so_identities_hold_across_machines():
    """The encoder goes by name ('all-MiniLM-L6-v2'), never by the folder it is installed in: a run's
    identity (config hash) and its record's settings are the same in any checkout or venv."""
    rows = LR_ROWS + campaign_plan.WALK_ROWS + CHOICE_ROWS + campaign_plan.table3_rows()
    configs = [SMALL.config(row, rate) for row in rows for rate in campaign_plan.RATES]
    assert configs and all(not str(v).startswith(os.sep) for cfg in configs for v in cfg.values())
    assert {cfg.get("pretrained", cfg.get("encoder")) for cfg in configs} == {campaign_plan.ENCODER}


# ---- records ------------------------------------------------------------------------------------
def _record(run_id="abc", **changes):
    rec = {"run_id": run_id, "variant": "khar@quick", "model": "khar", "seed": 1111, "config": {},
           "finished": "t", "outcome": {"result": {"metrics": {"MAE": 0.8}}},
           "identity": {"model": "khar", "variant": "khar@quick", "seed": 1111, "runner": campaign_plan.KHAR_RUNNER,
                        "code": campaign_plan.CAMPAIGN_CODE_VERSION, "data": {"name": "d", "sha256": "0"}}}
    rec.update(changes)
    return rec


def test_a_record_is_accepted_only_whole_and_status_names_a_damaged_one_without_crashing(tmp_path, caplog):
    cases = {"good": _record("good"), "only-id": {"run_id": "only-id"}, "renamed": _record("other"),
             "no-code": _record("no-code", identity={**_record()["identity"], "code": None}),
             "no-metrics": _record("no-metrics", outcome={"result": {"valid": {}}}), "list": [1, 2]}
    for stem, rec in cases.items():
        (tmp_path / f"{stem}.json").write_text(json.dumps(rec))
    (tmp_path / "cut.json").write_text('{"run_id": "cut", "identity": {')
    records, damaged = Campaign(work=tmp_path, records=tmp_path).scan_records()
    assert set(records) == {"good"}
    why = {path.stem: text for path, text in damaged.items()}
    assert why == {"only-id": "the record has no dict 'identity'", "renamed": "its run_id 'other' is not the file's name",
                   "no-code": "its identity has no str 'code'", "no-metrics": "its outcome has no result with metrics",
                   "list": "the record is not an object", "cut": why["cut"]} and why["cut"].startswith("not JSON")
    import logging
    with caplog.at_level(logging.INFO, logger="MMSA"):
        out = campaign.main(["status", "--records", str(tmp_path), "--work", str(tmp_path / "work")])
    assert out["lr"] == (0, len(LR_ROWS) * len(SMALL_SEEDS))
    assert "only-id.json: damaged campaign record (the record has no dict 'identity')" in caplog.text


# ---- claims ---------------------------------------------------------------------------------------
def test_a_claim_blocks_other_workers_until_its_process_is_gone(tmp_path):
    assert campaign._claim(tmp_path, "run1")
    assert not campaign._claim(tmp_path, "run1")            # this (live) process holds it
    dead = subprocess.run([sys.executable, "-c", "import os, psutil; p = psutil.Process(); "
                           "print(os.getpid(), p.create_time())"], capture_output=True, text=True)
    (tmp_path / "run2").write_text(f"{os.uname().nodename} {dead.stdout}")
    assert campaign._claim(tmp_path, "run2")                # a dead process's claim is taken over
    assert (tmp_path / "run2").read_text().split()[1] == str(os.getpid())


def test_a_claim_is_held_only_by_the_live_worker_that_wrote_it():
    import psutil
    host, me = os.uname().nodename, psutil.Process()
    assert campaign.claim_holder(f"{host} {me.pid} {me.create_time():.3f}")[0]          # this worker
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "benchmarks.campaign", "run"])
    try:
        import time
        time.sleep(0.3)
        started = {p.pid: psutil.Process(p.pid).create_time() for p in (sleeper, worker)}
        holder, why = campaign.claim_holder(f"{host} {sleeper.pid} {started[sleeper.pid]:.3f}")
        assert holder is None and "is not a campaign worker" in why          # alive, but not a worker
        assert campaign.claim_holder(f"{host} {worker.pid} {started[worker.pid]:.3f}")[0]
        holder, why = campaign.claim_holder(f"{host} {worker.pid} {started[worker.pid] - 5:.3f}")
        assert holder is None and "another process" in why                  # its id, reused
        assert campaign.claim_holder(f"{host} {worker.pid}")[0] is None      # no start time: not ours
        assert campaign.claim_holder("elsewhere 1 0.0")[0]                   # another host: cannot check
    finally:
        for p in (sleeper, worker):
            p.kill()
            p.wait()


# ---- end to end through the command line ----------------------------------------------------------
def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.campaign", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


#: A worker's session that goes on: one interpreter runs ``benchmarks.campaign`` commands one after another
#: (a JSON line ``[log file, argv]`` each on stdin), each command's stdout and stderr into its own log file,
#: its exit status as one line on the session's own stdout.
_SESSION = r"""
import json, os, sys, traceback
from benchmarks import campaign
report = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    log, argv = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1); os.dup2(fd, 2); os.close(fd)
    try:
        campaign.main(argv)
        rc = 0
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush(); sys.stderr.flush()
    print(int(rc), file=report, flush=True)
"""


class _Session:
    """``python -m benchmarks.campaign`` commands run in one interpreter, one after another, as one worker's
    session that goes on (what a fresh process per command would pay in imports, it pays once); each call
    returns what :func:`_cli` returns (its stderr holds the command's stdout and stderr)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.count = folder, 0
        env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
        self.log = open(folder / "session.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", _SESSION], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        import threading
        self.count += 1
        log = self.folder / f"command{self.count}.log"
        self.proc.stdin.write(json.dumps([str(log), list(args)]) + "\n")
        self.proc.stdin.flush()
        watchdog = threading.Timer(300, self.proc.kill)          # the timeout _cli has
        watchdog.start()
        try:
            status = self.proc.stdout.readline()
        finally:
            watchdog.cancel()
        text = log.read_text() if log.is_file() else ""
        if not status:                                           # the session died: say how
            text += f"\n[session ended, exit status {self.proc.wait()}]\n" + (self.folder / "session.log").read_text()
        return subprocess.CompletedProcess(["benchmarks.campaign", *args], int(status) if status else -1, "", text)

    def close(self) -> None:
        """Ends the session: every command has answered by now (or the test failed), so it is killed rather
        than left to tear its interpreter down."""
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()
        self.log.close()


# ---- the paired reading, recomputed by hand -------------------------------------------------------
def _t2(q):
    """Student's t quantile with 2 degrees of freedom, in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    a = 2 * q - 1
    return a * (2 / (1 - a * a)) ** 0.5


def _by_hand(diffs):
    """mean, 95 % interval, two-sided p and MDE of three paired differences (df 2, closed forms)."""
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5
    se = sd / n ** 0.5
    t = abs(mean) / se
    return mean, mean - _t2(0.975) * se, mean + _t2(0.975) * se, 1 - t / (2 + t * t) ** 0.5, (_t2(0.975) + _t2(0.8)) * se


def test_paired_interval_p_and_mde_match_a_hand_computation():
    from benchmarks.campaign_stats import paired
    assert abs(_t2(0.975) - 4.303) < 1e-3 and abs(_t2(0.8) - 1.061) < 1e-3       # the printed t table
    for diffs, verdict in (([-0.02, -0.03, -0.04], "better"), ([0.01, -0.02, 0.04], "undecided"),
                           ([-0.01, -0.03, 0.005], "undecided"), ([0.01, 0.03, -0.005], "undecided"),
                           ([0.05, 0.06, 0.08], "worse")):       # 3rd and 4th: an interval just across 0
        got = paired({s: 0.8 + d for s, d in zip((1, 2, 3), diffs)}, {1: 0.8, 2: 0.8, 3: 0.8})
        mean, low, high, p, mde = _by_hand(diffs)
        assert got.n == 3 and got.verdict == verdict
        assert np.allclose([got.mean, got.low, got.high, got.p, got.mde], [mean, low, high, p, mde], atol=1e-9)
    corr = paired({1: 0.72, 2: 0.73, 3: 0.74}, {1: 0.70, 2: 0.70, 3: 0.70}, lower_is_better=False)
    assert corr.verdict == "better" and corr.better == 3                # Corr: higher is better
    only = paired({1: 0.7, 2: 0.8}, {2: 0.9, 3: 0.1})                    # seeds both have: one
    assert only.n == 1 and only.verdict == "undecided"


def _records(values, split="valid"):
    """Hand-made records {seed: (MAE, Corr)} on ``split``."""
    field = "valid" if split == "valid" else "metrics"
    return [{"seed": s, "outcome": {"result": {field: {"MAE": m, "Corr": c}, "metrics": {"MAE": m, "Corr": c}}}}
            for s, (m, c) in values.items()]


def test_the_walk_table_prints_the_hand_computed_paired_interval_verdict_and_mde():
    """Two verdicts recomputed by hand: the text path against the floor is better (d = -0.02, -0.03, -0.04),
    the next row against the text path undecided (d = +0.01, -0.02, +0.04); the table prints exactly those."""
    from benchmarks.campaign_report import walk_like_table
    floor = {1: 0.80, 2: 0.82, 3: 0.84}
    path = {s: floor[s] + d for s, d in zip(SMALL_SEEDS, (-0.02, -0.03, -0.04))}
    harvest = {s: path[s] + d for s, d in zip(SMALL_SEEDS, (0.01, -0.02, 0.04))}
    maes = {"floor@quick": floor, "text-path@quick": path, "harvesting@quick": harvest}
    maes.update({f"{f}@{r}": floor for f in ("floor", "khar") for r in ("quick", "table5")})

    def find(slot):
        seeds = maes.get(slot.variant)
        return None if seeds is None else _records({slot.seed: (seeds[slot.seed], 0.7)})[0]
    body, _ = walk_like_table(SMALL, find, "walk")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in body.splitlines()[2:]}
    for title, diffs, verdict in (("KHaR's text path, linear head", (-0.02, -0.03, -0.04), "better"),
                                  ("+ adapters and harvesting", (0.01, -0.02, 0.04), "undecided")):
        mean, low, high, p, mde = _by_hand(diffs)
        cells = rows[title][5:10]
        assert cells == [f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]", f"{p:.3f}",
                         f"{sum(d < 0 for d in diffs)}/3", verdict, f"{mde:.3f}"], cells
    assert rows["+ adapters and harvesting"][5:10] == ["+0.010 [-0.065, +0.085]", "0.622", "1/3", "undecided",
                                                       "0.093"]
    assert rows["KHaR's text path, linear head"][5:10] == ["-0.030 [-0.055, -0.005]", "0.035", "3/3", "better",
                                                           "0.031"]
    assert rows["+ MLP in the refiner slot"][8] == "-"                # no record: no verdict


def test_every_table3_row_has_its_sentence_and_no_sentence_names_a_missing_row():
    from benchmarks.campaign_report import TABLE3_WHY
    assert set(TABLE3_WHY) == {row.key for row in campaign_plan.table3_rows()}


def test_the_walk_reads_full_khar_against_the_floor_and_the_text_path_once_every_seed_is_in(tmp_path):
    from benchmarks.campaign_report import end_to_end
    camp = Campaign(work=tmp_path, records=tmp_path, smoke=True)          # seeds 1111, 1112

    def recs(*maes):
        return [{"seed": s, "outcome": {"result": {"valid": {"MAE": m}}}} for s, m in zip(camp.seeds, maes)]
    rows = {"khar": ("full", recs(0.70, 0.72)), "floor": ("the floor", recs(0.80, 0.84)),
            "text-path": ("the text path", recs(0.71))}
    floor_note, path_note = end_to_end(camp, rows)
    # d = -0.10, -0.12: mean -0.11, sd 0.01414, se 0.01; t(0.975, 1) = 12.706, t(0.8, 1) = 1.376
    assert floor_note.startswith("Full KHaR against the floor, validation MAE, paired: -0.110 [-0.237, +0.017], "
                                 "p 0.058, 2/2 seeds better: undecided (MDE 0.141)"), floor_note
    assert path_note == "Full KHaR against the text path: pending."


def test_khar_is_read_against_each_final_row_on_test_paired_and_the_goal_needs_a_better_mae(tmp_path):
    from benchmarks.campaign_report import khar_on_test
    camp = Campaign(work=tmp_path, records=tmp_path, smoke=True)          # seeds 1111, 1112

    def recs(*pairs):
        return [{"seed": s, "outcome": {"result": {"metrics": {"MAE": m, "Corr": c}}}}
                for s, (m, c) in zip(camp.seeds, pairs)]
    floor = recs((0.80, 0.70), (0.82, 0.72))
    table, notes = khar_on_test(camp, [("the floor", floor), ("KHaR", recs((0.70, 0.71), (0.716, 0.73))),
                                       ("MulT", recs((0.80, 0.70)))])
    lines = [line.split(" | ") for line in table.splitlines()[2:]]
    # MAE: d = -0.10, -0.104 (se 0.002; t(0.975, 1) = tan(0.475 pi) = 12.706): better; Corr: d = +0.01 twice
    assert lines[0][1:] == ["MAE", "-0.102 [-0.127, -0.077]", "0.012", "2/2", "better", "0.028 |"], lines[0]
    assert lines[1][1:5] == ["Corr", "+0.010 [+0.010, +0.010]", "0.000", "2/2"] and lines[1][5] == "better"
    assert lines[2][:2] == ["| MulT", "MAE"] and lines[2][5].startswith("pending (1/2")
    assert notes[-1].endswith("paired, met (MAE better, Corr better).")
    _, tie = khar_on_test(camp, [("the floor", floor), ("KHaR", recs((0.70, 0.71), (0.86, 0.73)))])
    assert tie[-1].endswith("paired, not met (MAE undecided, Corr better).")


def test_the_machine_note_names_each_machine_once_with_its_runs_and_load_range():
    from benchmarks.campaign_report import machines_text
    line = "Xeon, 2 usable cores; torch 2.13.0+cpu; 1-min load average at start "
    recs = [{"machine": line + load, "outcome": {}} for load in ("2.0", "4.22", "3.1")] + \
        [{"machine": None, "outcome": {"host": "vm"}}, {"machine": "GPU box; 1-min load average at start 0.5",
                                                         "outcome": {}}]
    text = machines_text(recs)
    assert text.count("Xeon") == 1 and "(3 runs, 1-min load average at start 2.00–4.22)" in text
    assert "vm (1 run)" in text and "GPU box (1 run, 1-min load average at start 0.50)" in text


def test_campaign_smoke_records_resumes_and_renders_from_records_alone(tmp_path, labels, request):
    work, records = tmp_path / "work", tmp_path / "records"
    common = ["--smoke", "--work", str(work), "--records", str(records), "--labels", str(labels)]
    # one worker's session trains the table, and later takes over a stale claim; every other command is a
    # fresh process (a later session), 'held' among them: it finds the first session's records and reuses them
    session = _Session(tmp_path / "session")
    request.addfinalizer(session.close)
    first = session("run", "--tables", "lr", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(records.glob("*.json"))
    assert len(files) == len(LR_ROWS) * len(campaign_plan.SMOKE_SEEDS)
    rec = json.loads(files[0].read_text())
    assert rec["run_id"] == files[0].stem and rec["identity"]["code"] == rec["code_version"]
    result = rec["outcome"]["result"]
    assert result["epochs_run"] == campaign_plan.SMOKE_EPOCHS == len(result["curve"])   # the fixed budget
    assert set(result["valid"]) >= {"MAE", "Corr"} and "MAE" in result["metrics"]

    again = session("run", "--tables", "lr", *common)  # everything recorded: nothing trains, and it says so
    assert again.returncode == 0 and "done in" not in again.stderr, again.stderr[-2000:]
    assert "nothing pending in lr" in again.stderr, again.stderr[-2000:]

    # a record holding only its run id is damaged: status lists it (no crash), run makes it again
    damaged = files[1]
    damaged.write_text(json.dumps({"run_id": damaged.stem}))
    listed = _cli("status", *common)
    assert listed.returncode == 0 and "lr: 7/8 runs recorded" in listed.stderr, listed.stderr[-2000:]
    assert f"{damaged.name}: damaged campaign record (the record has no dict 'identity')" in listed.stderr
    # ... while a live process that is no campaign worker claims it: a stale claim, taken over and said so
    import psutil
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "benchmarks.campaign", "run"])
    try:
        (work / "claims").mkdir(exist_ok=True)
        claim = work / "claims" / damaged.stem
        claim.write_text(f"{os.uname().nodename} {worker.pid} {psutil.Process(worker.pid).create_time():.3f}\n")
        held = _cli("run", "--tables", "lr", *common)      # a live worker holds it: nothing to do, said so
        assert held.returncode == 0 and "done in" not in held.stderr, held.stderr[-2000:]   # 7 records reused
        assert f"1 pending run(s), each claimed by a live worker (process {worker.pid})" in held.stderr
        claim.write_text(f"{os.uname().nodename} {sleeper.pid} {psutil.Process(sleeper.pid).create_time():.3f}\n")
        redone = session("run", "--tables", "lr", *common)
    finally:
        for proc in (sleeper, worker):
            proc.kill()
            proc.wait()
    assert redone.returncode == 0 and redone.stderr.count("done in") == 1, redone.stderr[-3000:]
    assert f"process {sleeper.pid}" in redone.stderr and "is not a campaign worker" in redone.stderr
    assert json.loads(damaged.read_text())["identity"]["code"] and not claim.exists()
    gated = _cli("status", *common)    # lr complete: the walk's gate is open, its floor and KHaR rows are shared
    assert "lr: 8/8 runs recorded" in gated.stderr and "walk: 4/16 runs recorded" in gated.stderr, gated.stderr
    assert "final: waiting for its gate" in gated.stderr

    import shutil
    shutil.rmtree(work / "data")                        # render needs the records only
    md = tmp_path / "RESULTS.md"
    shown = _cli("render", *common, "--results-md", str(md), "--tables-dir", str(tmp_path / "tables"))
    assert shown.returncode == 0, shown.stderr[-3000:]
    table = (tmp_path / "tables" / "campaign-lr.md").read_text()
    assert table.count("| 2/2 |") == len(LR_ROWS) and "Decision (the rule" in table
    assert "campaign-lr" in md.read_text() and not (work / "data").exists()
    import pandas as pd
    runs = pd.read_csv(tmp_path / "tables" / "campaign-runs.csv")   # one row per run of each table
    lr_runs = runs[runs["table"] == "lr"]
    assert len(lr_runs) == len(files) and set(lr_runs["run_id"]) == {f.stem for f in files}
    assert lr_runs["valid_MAE"].notna().all() and lr_runs["test_MAE"].isna().all()   # lr is read on validation
    assert set(runs["table"]) == {"lr", "walk", "choices"}      # the walk's and choices' shared rows
    assert (tmp_path / "tables" / "campaign-walk.png").read_bytes()[:4] == b"\x89PNG"


def test_campaign_run_refuses_another_library(tmp_path, monkeypatch):
    monkeypatch.setattr(campaign, "CAMPAIGN_CODE_VERSION", "0.0.0+not-this-code")
    camp = Campaign(work=tmp_path, records=tmp_path / "records")
    with pytest.raises(SystemExit, match="the campaign's is 0.0.0"):
        campaign.run_queue(camp, ["lr"])
    assert not (tmp_path / "records").exists()


def test_make_campaign_defaults_write_records_into_the_repository_only_outside_smoke(tmp_path):
    args = argparse.Namespace(work=str(tmp_path), records=None, smoke=False, labels="x")
    assert campaign.make_campaign(args).records == campaign.RECORDS_DIR
