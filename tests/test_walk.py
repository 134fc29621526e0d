"""benchmarks/walk.py: the recorded curves and fit verdicts on hand-written curves, and the three tables
end to end in ``--smoke`` mode (tiny BERT, a small synthetic label.csv, one seed) into ``tmp_path``."""
from __future__ import annotations

import hashlib
import math
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import walk  # noqa: E402

def _epoch(epoch, train_mae, valid_mae, valid_corr):
    """One entry of a trainer's ``state.history`` as TrainingCurves writes it."""
    return {"epoch": epoch, "valid": valid_mae, "raw": {"task": train_mae}, "expert_load": {},
            "train_metrics": {"MAE": train_mae, "Corr": 0.1, "Loss": train_mae},
            "valid_metrics": {"MAE": valid_mae, "Corr": valid_corr, "Loss": valid_mae}}


def test_recorded_history_gives_the_curve_and_the_selected_epoch():
    from types import SimpleNamespace
    from khar_mmsa.training.callbacks import RecordHistory
    recorder = RecordHistory()
    recorder.on_fit_end(SimpleNamespace(history=[{"epoch": 1, "valid": 0.5}], best_epoch=1), None)  # pretraining
    assert recorder.curve()["valid"] == {} and recorder.curve()["epochs_run"] == 0
    history = [_epoch(1, 0.9, 0.8736, 0.34), _epoch(2, 0.7, 0.8, 0.5), _epoch(3, 0.6, 0.85, 0.45)]
    recorder.on_fit_end(SimpleNamespace(history=history, best_epoch=2), None)
    parsed = recorder.curve()
    assert parsed["best_epoch"] == 2 and parsed["epochs_run"] == 3
    assert [c["train_MAE"] for c in parsed["curve"]] == [0.9, 0.7, 0.6]
    assert [c["valid_MAE"] for c in parsed["curve"]] == [0.8736, 0.8, 0.85]
    assert parsed["valid"] == {"MAE": 0.8, "Corr": 0.5, "Loss": 0.8}


def test_a_sweep_run_of_khar_returns_its_curve_from_the_trainer(tmp_path, tiny_features, tiny_bert, fast_mmsa):
    """The sweep's default runner (through khar-mmsa's runner, MMSA_run's arguments): one curve point
    per epoch with the training and validation metrics the trainer computed, and the selected
    epoch's validation metrics, which the tables report as the selection's number."""
    from conftest import TINY_KHAR_SIZE
    from khar_mmsa.experiments.sweep import RunSpec, mmsa_run_one
    spec = RunSpec(model="khar", dataset="mosi", seed=1, feature_path=str(tiny_features("mosi")),
                   out_dir=str(tmp_path / "run"), config=dict(TINY_KHAR_SIZE, pretrained=str(tiny_bert), epochs=2,
                                                             early_stop=2, pretrain_adapters=False, save_curves=False))
    result = mmsa_run_one(spec, spec.feature_path)
    assert result["epochs_run"] == 2 and result["best_epoch"] in (1, 2)
    for point in result["curve"]:
        assert {"train_MAE", "train_Corr", "valid_MAE", "valid_Corr", "valid_Loss"} <= set(point)
        assert all(math.isfinite(v) for v in point.values())
    assert result["valid"]["MAE"] == result["curve"][result["best_epoch"] - 1]["valid_MAE"]
    assert result["valid"]["MAE"] != result["metrics"]["MAE"]  # validation, not the test split


@pytest.mark.parametrize("train,best,verdict", [
    ([0.9, 0.7, 0.6], 2, "over-fits"),
    ([0.9, 0.7, 0.7], 2, "under-fits (plateau)"),
    ([0.9, 0.7, 0.6], 3, "under-fits (cap)"),
    ([], 0, "-"),
])
def test_fit_verdict(train, best, verdict):
    curve = [{"epoch": i + 1, "train_MAE": t, "valid_MAE": 1.0} for i, t in enumerate(train)]
    assert walk.fit_verdict(curve, best) == verdict


def test_close_pairs_use_the_larger_std():
    from benchmarks.common import Stat

    def row(title, mean, std):
        return {"title": title, "valid": {"MAE": Stat(mean, std, 3)}}
    rows = [row("a", 80.0, 1.0), row("b", 81.5, 2.0), row("c", 90.0, 0.5)]
    assert walk.close_pairs(rows) == [("a", "b")]
    assert walk.close_pairs(rows, reference=2) == []


# ---- the script end to end ------------------------------------------------------------------------
PROTECTED = [REPO / "benchmarks" / "RESULTS.md"]


def _digest():
    files = PROTECTED + sorted((REPO / "benchmarks" / "results").glob("*"))
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def test_walk_smoke(tmp_path, tiny_bert, labels, fast_mmsa):
    before = _digest()
    res = walk.main(["--smoke", "--out", str(tmp_path / "w"), "--encoder", str(tiny_bert), "--labels", str(labels)])
    assert _digest() == before, "a --smoke run wrote into benchmarks/"
    assert list(res["rows"]) == [k for k, _, _ in walk.WALK_ROWS]
    table = pd.read_csv(res["table_csv"])
    assert table["row"].tolist() == [t for _, t, _ in walk.WALK_ROWS]
    assert table["MAE_mean"].map(math.isfinite).all() and table["Corr_mean"].map(math.isfinite).all()
    for key, row in res["rows"].items():
        run = row["results"][0]
        assert run["epochs_run"] == 2 and 1 <= run["best_epoch"] <= 2 and len(run["curve"]) == 2, key
        # the validation number is the selected epoch's, not the test split's
        chosen = next(c for c in run["curve"] if c["epoch"] == run["best_epoch"])
        assert row["valid"]["MAE"].mean == pytest.approx(100 * chosen["valid_MAE"], abs=0.01), key
    md = res["table_md"].read_text()
    assert "Δ valid MAE vs row above" in md and "Acc-7" not in md and "test" not in md.split("\n\n")[1].lower()
    section = (tmp_path / "w" / "RESULTS.md").read_text()
    assert "<!-- benchmark:walk-transcripts-mosi-smoke:start -->" in section
    for field in ("- Command: `python -m benchmarks.walk", "- Machine: ", "- Seeds: 1111", "- Data: ",
                  "- Code version: ", "- Wall time: "):
        assert field in section, field
    # harvesting rows pretrain one shared adapter file; KHaR's text-path row has no adapters at all
    assert (tmp_path / "w" / "adapters" / "L50-seed1111.pt").is_file()
    assert "pretrained_adapters_path" not in res["rows"]["text-path"]["config"]
    assert res["rows"]["harvesting"]["config"]["pretrained_adapters_path"].endswith("L50-seed1111.pt")


def test_walk_switches_and_final_smoke(tmp_path, tiny_bert, labels, fast_mmsa):
    out = tmp_path / "w"
    common = ["--smoke", "--out", str(out), "--encoder", str(tiny_bert), "--labels", str(labels)]
    res = walk.main(["--table", "switches", "--rows", "khar", "text-len-50", "routing-sample", *common])
    assert list(res["rows"]) == ["khar", "text-len-50", "routing-sample"]
    md = res["table_md"].read_text()
    assert "Δ valid MAE vs default" in md and "| +0.000 |" in md  # the default row against itself
    switch_lines = [line for line in md.splitlines() if line.startswith("| transcripts cut") or
                    line.startswith("| one routing per sample")]
    assert len(switch_lines) == 2 and all(re.search(r"\((within one std|better by > 1 std|worse by > 1 std)\)", line)
                                          for line in switch_lines)  # each switch says where it stands
    sections = (out / "RESULTS.md").read_text()
    assert "L=50" in sections and "L=50" in sections.split("- Data: ")[1].split("|")[0]  # smoke's own length
    final = walk.main(["--table", "final", *common])
    table = pd.read_csv(final["table_csv"])
    assert table["row"].tolist() == ["Text-only floor (encoder + linear head)", "KHaR"]
    assert table["Mult_acc_7_mean"].map(math.isfinite).all()
    # the final table's KHaR run is the switches table's default run, reused from the manifest
    text = (out / "RESULTS.md").read_text()
    assert "walk-final-transcripts-mosi-smoke" in text and "reused from its sweep manifest" in text
