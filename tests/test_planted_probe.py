"""benchmarks/planted_probe.py: the ridge read-out against an independent least-squares solution,
pooling that never sees padding, and the probe end to end through its command line (--smoke)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import planted_probe  # noqa: E402


def _reference_ridge(x_train, y_train, x_eval, penalty):
    """Ridge as ordinary least squares on the augmented system [Z; sqrt(lam) I] w = [y - ȳ; 0]."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    z = (x_train - mean) / std
    lam = penalty * len(z)
    a = np.vstack([z, np.sqrt(lam) * np.eye(z.shape[1])])
    b = np.concatenate([y_train - y_train.mean(), np.zeros(z.shape[1])])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    return (x_eval - mean) / std @ w + y_train.mean()


def test_ridge_matches_least_squares_at_the_penalty_with_the_lowest_validation_error():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=6)
    x = {s: rng.normal(size=(n, 6)) * [1, 2, 3, 1, 1, 5] for s, n in (("train", 40), ("valid", 20), ("test", 20))}
    y = {s: x[s] @ w_true + rng.normal(scale=2.0, size=len(x[s])) for s in x}
    pred, penalty = planted_probe.ridge_fit_predict(x, y)
    valid_mse = {p: np.mean((_reference_ridge(x["train"], y["train"], x["valid"], p) - y["valid"]) ** 2)
                 for p in planted_probe.PENALTIES}
    assert penalty == min(valid_mse, key=valid_mse.get)
    for split in ("train", "valid", "test"):
        np.testing.assert_allclose(pred[split], _reference_ridge(x["train"], y["train"], x[split], penalty),
                                   rtol=1e-8, atol=1e-8)


def test_pooling_reads_only_each_samples_valid_frames():
    frames = np.full((2, 4, 3), 1e6)                 # padding: huge values that must not count
    frames[0, :2] = [[1, 2, 3], [3, -2, 5]]
    frames[1, :3] = [[0, 0, 0], [-3, 1, 1], [3, 4, -1]]
    split = {"audio": frames, "audio_lengths": np.array([2, 3])}
    pooled = planted_probe.pooled_frames(split, "audio", with_max=True)
    np.testing.assert_allclose(pooled[:, :3], [[2, 0, 4], [0, 5 / 3, 0]])
    np.testing.assert_allclose(pooled[:, 3:], [[3, 2, 5], [3, 4, 1]])
    np.testing.assert_allclose(planted_probe.pooled_frames(split, "audio", with_max=False), pooled[:, :3])


def test_probe_smoke_through_its_command_line_writes_its_section(tmp_path):
    md = tmp_path / "RESULTS.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.planted_probe", "--smoke", "--out", str(tmp_path / "w"),
                           "--results-md", str(md)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = md.read_text()
    assert "benchmark:planted-probe-smoke:start" in text
    for row in ("| text | encoder output", "| audio | frames, mean and max", "| text + audio + vision |"):
        assert row in text
    floor = float(text.split("best possible predictor): ")[1].split(".\n")[0].rstrip("."))
    constant = float(text.split("training mean: test MAE ")[1].split(";")[0])
    assert 0 < floor < constant                     # the planted signal beats the constant predictor
