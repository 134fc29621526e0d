"""benchmarks/walk.py: its log reading and fit verdicts on hand-written curves, and the three tables
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

LOG = """\
x - MMSA [INFO] - TRAIN-(khar) epoch 1 >> loss 1.7 (the sum of the weighted terms)
x - MMSA [INFO] - TRAIN-(khar) epoch 1 >> weighted task=0.80 mib_kl=0.0045
x - MMSA [INFO] - TRAIN-(khar) epoch 1 >> Mult_acc_5: 0.5417 Mult_acc_7: 0.5417 MAE: 0.9000 Corr: -0.0181
x - MMSA [INFO] - VAL-(khar) >> Has0_acc_2: 0.5000 Mult_acc_5: 0.1250
x - MMSA [INFO] - VAL-(khar) >> Mult_acc_7: 0.1250 MAE: 0.8736 Corr: 0.3431 Loss: 0.8736
x - MMSA [INFO] - EPOCH-(khar) seed 1 epoch 1/9: valid Loss 0.8736 | best 0.8736 at epoch 1
x - MMSA [INFO] - TRAIN-(khar) epoch 2 >> MAE: 0.7000 Corr: 0.2
x - MMSA [INFO] - VAL-(khar) >> MAE: 0.8000 Corr: 0.5 Loss: 0.8
x - MMSA [INFO] - EPOCH-(khar) seed 1 epoch 2/9: valid Loss 0.8000 | best 0.8000 at epoch 2
x - MMSA [INFO] - TRAIN-(khar) epoch 3 >> MAE: 0.6000 Corr: 0.4
x - MMSA [INFO] - VAL-(khar) >> MAE: 0.8500 Corr: 0.45 Loss: 0.85
x - MMSA [INFO] - EPOCH-(khar) seed 1 epoch 3/9: valid Loss 0.8500 | best 0.8000 at epoch 2 | 1/2 epochs without improvement
x - MMSA [INFO] - TEST-(khar) >> MAE: 0.1 Corr: 0.9
"""


def test_parse_khar_log_reads_the_curve_and_the_selected_epoch():
    parsed = walk.parse_khar_log(LOG)
    assert parsed["best_epoch"] == 2 and parsed["epochs_run"] == 3
    assert [c["train_MAE"] for c in parsed["curve"]] == [0.9, 0.7, 0.6]
    assert [c["valid_MAE"] for c in parsed["curve"]] == [0.8736, 0.8, 0.85]
    assert parsed["valid"]["MAE"] == 0.8 and parsed["valid"]["Corr"] == 0.5  # never the TEST line
    # a second run in the same log (a rerun of the seed) replaces the first
    again = walk.parse_khar_log(LOG + LOG.replace("MAE: 0.8000", "MAE: 0.7000"))
    assert again["epochs_run"] == 3 and again["valid"]["MAE"] == 0.7


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
@pytest.fixture(scope="module")
def labels(tmp_path_factory) -> Path:
    """A small MMSA-style label.csv: 16/8/8 clips with words of the tiny BERT's vocabulary."""
    import random
    rng = random.Random(0)
    words = "good bad fine movie really not great plot acting boring".split()
    lines = ["id,text,label,mode"]
    for split, n in (("train", 16), ("valid", 8), ("test", 8)):
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            lines.append(f"clip{split}{i},{text},{rng.uniform(-3, 3):.2f},{split}")
    path = tmp_path_factory.mktemp("labels") / "label.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


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
