"""benchmarks/campaign.py: the decision rules on hand-made numbers, the work queue's claims, and the
campaign end to end in ``--smoke`` mode through its command line (tiny BERT, a small label.csv, two
seeds, two epochs): one record per finished run, a rerun that trains nothing, tables rendered from
the records alone."""
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

from benchmarks import campaign  # noqa: E402
from benchmarks.campaign import CHOICE_ROWS, LR_ROWS, Campaign, Slot  # noqa: E402


# ---- the rules ------------------------------------------------------------------------------------
def test_a_switch_beats_the_default_only_by_more_than_the_larger_std():
    reference = np.array([0.80, 0.82, 0.84])            # mean 0.82, std 0.0163
    assert campaign.beats(np.array([0.78, 0.79, 0.80]), reference)        # 0.79: 0.03 lower
    assert not campaign.beats(np.array([0.80, 0.81, 0.81]), reference)    # 0.807: 0.013 lower, within
    assert not campaign.beats(np.array([0.70, 0.80, 0.90]), reference)    # lower mean, but std 0.08
    assert not campaign.beats(reference + 0.05, reference)                # worse


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
    monkeypatch.setattr(campaign, "SEEDS", SMALL_SEEDS)


def test_the_lr_table_chooses_each_familys_lower_mean_and_waits_for_every_seed():
    maes = {"floor@quick": [0.86, 0.87, 0.85], "floor@table5": [0.90, 0.91, 0.92],
            "khar@quick": [0.85, 0.90, 0.88], "khar@table5": [0.84, 0.86, 0.85]}
    assert campaign.chosen_rates(SMALL, _finder(maes)) == {"floor": "quick", "khar": "table5"}
    maes["khar@table5"] = maes["khar@table5"][:2] + [None]
    missing = dict(maes)

    def find(slot):
        rec = _finder(missing)(slot)
        return None if rec is None or rec["outcome"]["result"]["valid"]["MAE"] is None else rec
    assert campaign.chosen_rates(SMALL, find) is None
    assert campaign.table_slots(SMALL, "walk", find) is None and campaign.table_slots(SMALL, "final", find) is None
    assert len(campaign.table_slots(SMALL, "lr", find)) == len(LR_ROWS) * len(SMALL_SEEDS)


def test_choices_adopt_only_clear_winners_the_best_of_a_field_and_combine_fields():
    base = [0.85, 0.86, 0.87]
    maes = {f"{r.key}@quick": base for r in CHOICE_ROWS}
    maes["tau-0.07@quick"] = [0.80, 0.81, 0.80]      # clear winner
    maes["tau-0.2@quick"] = [0.78, 0.79, 0.78]       # clearer winner of the same field
    maes["text-len-50@quick"] = [0.82, 0.83, 0.82]   # clear winner of another field
    maes["no-gate-noise@quick"] = [0.845, 0.855, 0.86]  # within the std: not adopted
    maes["floor-text-len-50@quick"] = [0.80, 0.80, 0.80]  # the floor's own switch, against the floor
    chosen = campaign.chosen_switches(SMALL, _finder(maes), {"khar": "quick", "floor": "quick"})
    assert chosen == {"khar": {"contrastive_temperature": 0.2, "text_len": 50}, "floor": {"text_len": 50}}
    final = campaign.table_slots(SMALL, "final", _finder({**maes, **{f"{f}@{r}": base for f in ("floor", "khar")
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
    assert len(final) == len(campaign.FINAL_ROWS) * len(SMALL_SEEDS) and final["test_MAE"].notna().all()
    baselines = final[final["model"].isin(campaign.BASELINES)]
    assert len(baselines) == 3 * len(SMALL_SEEDS) and baselines["valid_MAE"].isna().all()
    assert final[final["model"] == "khar"]["valid_MAE"].notna().all()
    assert runs[runs["table"] == "choices"]["test_MAE"].isna().all()


def test_tfn_trains_on_batches_of_more_than_one_clip():
    """MMSA's loader keeps a short last batch and TFN's BatchNorm refuses one clip in training: the
    1281 training transcripts in MMSA's batches of 32 leave exactly one."""
    tfn = next(r for r in campaign.FINAL_ROWS if r.family == "tfn")
    batch = SMALL.config(tfn, "quick")["batch_size"]
    assert batch == campaign.TFN_BATCH_SIZE and 1281 % batch > 1
    import MMSA
    mmsa_batch = json.loads((Path(MMSA.__file__).parent / "config" / "config_regression.json").read_text())
    assert 1281 % mmsa_batch["tfn"]["datasetParams"]["mosi"]["batch_size"] == 1   # why the override exists


def test_rows_with_the_same_settings_are_the_same_run_across_tables():
    """The lr table's run at the chosen rate is the walk's and the choices' row: same variant, same
    config, so the queue trains it once."""
    lr = Slot(next(r for r in LR_ROWS if r.family == "khar" and r.rate == "quick"), 1, "quick")
    walk = Slot(campaign.WALK_ROWS[-1], 1, "quick")
    choice = Slot(CHOICE_ROWS[0], 1, "quick")
    assert lr.variant == walk.variant == choice.variant == "khar@quick"
    assert SMALL.config(lr.row, "quick") == SMALL.config(walk.row, "quick") == SMALL.config(choice.row, "quick")


def test_no_setting_of_a_real_run_is_a_path_so_identities_hold_across_machines():
    """The encoder goes by name ('all-MiniLM-L6-v2'), never by the folder it is installed in: a run's
    identity (config hash) and its record's settings are the same in any checkout or venv."""
    rows = LR_ROWS + campaign.WALK_ROWS + CHOICE_ROWS + campaign.table3_rows()
    configs = [SMALL.config(row, rate) for row in rows for rate in campaign.RATES]
    assert configs and all(not str(v).startswith(os.sep) for cfg in configs for v in cfg.values())
    assert {cfg.get("pretrained", cfg.get("encoder")) for cfg in configs} == {campaign.ENCODER}


# ---- claims ---------------------------------------------------------------------------------------
def test_a_claim_blocks_other_workers_until_its_process_is_gone(tmp_path):
    assert campaign._claim(tmp_path, "run1")
    assert not campaign._claim(tmp_path, "run1")            # this (live) process holds it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run2").write_text(f"{os.uname().nodename} {int(dead.stdout)}\n")
    assert campaign._claim(tmp_path, "run2")                # a dead process's claim is taken over
    assert (tmp_path / "run2").read_text().split()[1] == str(os.getpid())


# ---- end to end through the command line ----------------------------------------------------------
def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.campaign", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_table3_row_is_read_against_full_khar_by_the_larger_std_once_both_have_every_seed():
    from benchmarks.campaign_report import against_full
    full = np.array([0.56, 0.57, 0.58])                       # std 0.0082
    assert against_full(np.array([0.60, 0.61, 0.62]), full, 3) == "worse by more than the larger std"
    assert against_full(np.array([0.53, 0.54, 0.55]), full, 3) == "better by more than the larger std"
    assert against_full(np.array([0.55, 0.60, 0.65]), full, 3) == "within the larger std"   # +0.03, std 0.041
    assert against_full(np.array([0.60, 0.61]), full, 3) == "pending (2/3 seeds)"


def test_every_table3_row_has_its_sentence_and_no_sentence_names_a_missing_row():
    from benchmarks.campaign_report import TABLE3_WHY
    assert set(TABLE3_WHY) == {row.key for row in campaign.table3_rows()}


def test_the_walk_reads_full_khar_against_the_floor_and_the_text_path_once_every_seed_is_in(tmp_path):
    from benchmarks.campaign_report import end_to_end
    camp = Campaign(work=tmp_path, records=tmp_path, smoke=True)          # seeds 1111, 1112

    def recs(*maes):
        return [{"seed": s, "outcome": {"result": {"valid": {"MAE": m}}}} for s, m in zip(camp.seeds, maes)]
    rows = {"khar": ("full", recs(0.70, 0.72)), "floor": ("the floor", recs(0.80, 0.84)),
            "text-path": ("the text path", recs(0.71))}
    floor_note, path_note = end_to_end(camp, rows)
    assert floor_note.startswith("Full KHaR against the floor: -0.110 in mean validation MAE (larger std 0.020; "
                                 "paired -0.110 ± 0.010 over 2 seeds): lowers the MAE by more than the larger std")
    assert path_note == "Full KHaR against the text path: pending."


def test_khar_is_read_against_each_final_row_on_test_and_the_goal_needs_a_clear_mae_gain_and_no_corr_loss(tmp_path):
    from benchmarks.campaign_report import khar_on_test
    camp = Campaign(work=tmp_path, records=tmp_path, smoke=True)          # seeds 1111, 1112

    def recs(*pairs):
        return [{"seed": s, "outcome": {"result": {"metrics": {"MAE": m, "Corr": c}}}}
                for s, (m, c) in zip(camp.seeds, pairs)]
    floor = recs((0.80, 0.70), (0.82, 0.72))
    notes = khar_on_test(camp, [("the floor", floor), ("KHaR", recs((0.70, 0.71), (0.72, 0.73))),
                                ("TFN", recs((0.90, 0.50), (0.92, 0.52))), ("MulT", recs((0.80, 0.70)))])
    assert notes[0] == ("KHaR against the floor on test: MAE -0.100 (larger std 0.010): better by more than it; "
                        "Corr +0.010 (larger std 0.010): within it.")
    assert notes[1].endswith("MAE -0.200 (larger std 0.010): better by more than it; "
                             "Corr +0.210 (larger std 0.010): better by more than it.")
    assert notes[2] == "KHaR against MulT on test: pending."
    assert notes[3].endswith(": met.")
    worse_corr = khar_on_test(camp, [("the floor", floor), ("KHaR", recs((0.70, 0.60), (0.72, 0.62)))])
    assert "Corr -0.100 (larger std 0.010): worse by more than it" in worse_corr[0] and worse_corr[-1].endswith(
        ": not met.")
    tie = khar_on_test(camp, [("the floor", floor), ("KHaR", recs((0.795, 0.71), (0.815, 0.73)))])
    assert "MAE -0.005 (larger std 0.010): within it" in tie[0] and tie[-1].endswith(": not met.")


def test_the_machine_note_names_each_machine_once_with_its_runs_and_load_range():
    from benchmarks.campaign_report import machines_text
    line = "Xeon, 2 usable cores; torch 2.13.0+cpu; 1-min load average at start "
    recs = [{"machine": line + load, "outcome": {}} for load in ("2.0", "4.22", "3.1")] + \
        [{"machine": None, "outcome": {"host": "vm"}}, {"machine": "GPU box; 1-min load average at start 0.5",
                                                         "outcome": {}}]
    text = machines_text(recs)
    assert text.count("Xeon") == 1 and "(3 runs, 1-min load average at start 2.00–4.22)" in text
    assert "vm (1 run)" in text and "GPU box (1 run, 1-min load average at start 0.50)" in text


def test_campaign_smoke_records_resumes_and_renders_from_records_alone(tmp_path, labels):
    work, records = tmp_path / "work", tmp_path / "records"
    common = ["--smoke", "--work", str(work), "--records", str(records), "--labels", str(labels)]
    first = _cli("run", "--tables", "lr", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(records.glob("*.json"))
    assert len(files) == len(LR_ROWS) * len(campaign.SMOKE_SEEDS)
    rec = json.loads(files[0].read_text())
    assert rec["run_id"] == files[0].stem and rec["identity"]["code"] == rec["code_version"]
    result = rec["outcome"]["result"]
    assert result["epochs_run"] == campaign.SMOKE_EPOCHS == len(result["curve"])   # the fixed budget
    assert set(result["valid"]) >= {"MAE", "Corr"} and "MAE" in result["metrics"]

    again = _cli("run", "--tables", "lr", *common)     # everything recorded: nothing trains
    assert again.returncode == 0 and "done in" not in again.stderr, again.stderr[-2000:]
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
