"""``MMSA_test`` through the same gate as ``MMSA_run``: restricted unpickling, checked samples, and
KHaR checkpoints predicted with the checkpoint's own shapes (one sample or a whole file)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.io.safe_io import UnsafePickleError, load_pickle
from khar_mmsa.data.validation import FeatureValidationError
from MMSA import MMSA_run, MMSA_test

TINY_KHAR = dict(modal_dim=16, encoder_layers=1, encoder_heads=2, encoder_ff_dim=16, text_adapters=1,
                 av_adapters=1, adapter_heads=2, adapter_inner_layers=1, expert_hidden_dim=16,
                 fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8, epochs=2, early_stop=1,
                 batch_size=8, pretrain_adapters=False)


class RunsCode:
    """Unpickling this calls os.system -- what a restricted unpickler must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_features, tiny_bert):
    """A KHaR checkpoint trained by MMSA_run on the tiny MOSI set, with its CSV row."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trained")
    dirs = {k: root / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    features = tiny_features("mosi")
    try:
        row = MMSA_run("khar", "mosi", config=dict(TINY_KHAR, pretrained=str(tiny_bert),
                                                   featurePath=str(features)),
                       seeds=[1], gpu_ids=[0], num_workers=0, verbose_level=0, **dirs)
    finally:
        torch.set_num_threads(threads)
    return {"weights": dirs["model_save_dir"] / "khar-mosi.pth", "features": features, "row": row,
            "root": root}


def evil_pickle(tmp_path: Path) -> tuple:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(RunsCode(marker)))
    return path, marker


def sample_of(features: Path, index: int = 0, split: str = "test") -> dict:
    d = load_pickle(features)[split]
    return {k: d[k][index] for k in ("text_bert", "audio", "vision", "audio_lengths",
                                     "vision_lengths")}


def dump(tmp_path: Path, obj, name: str = "sample.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(pickle.dumps(obj))
    return path


@pytest.mark.parametrize("config", ["khar", {"model_name": "khar"}, {"model_name": "tfn"}])
def test_mmsa_test_refuses_a_code_running_pickle(config, trained, tmp_path):
    evil, marker = evil_pickle(tmp_path)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        MMSA_test(config, str(trained["weights"]), str(evil), gpu_id=-1)
    assert not marker.exists()


def test_mmsa_test_predicts_a_whole_file_as_mmsa_run_scored_it(trained):
    preds = MMSA_test("khar", str(trained["weights"]), str(trained["features"]), gpu_id=-1)
    data = load_pickle(trained["features"])
    assert set(preds) == {"train", "valid", "test"}
    labels = np.asarray(data["test"]["regression_labels"], dtype=np.float64).reshape(-1)
    assert preds["test"].shape == labels.shape and np.isfinite(preds["test"]).all()
    # MMSA_run's test pass scored this checkpoint: MAE x 100, rounded to 2 decimals
    assert abs(np.mean(np.abs(preds["test"] - labels)) * 100 - trained["row"]["MAE"]) <= 0.0051


def test_mmsa_test_predicts_one_sample_with_the_checkpoints_shapes(trained, tmp_path):
    whole = MMSA_test("khar", str(trained["weights"]), str(trained["features"]), gpu_id=-1)
    sample = sample_of(trained["features"], index=2)
    n = int(sample["audio_lengths"])
    sample["audio"] = sample["audio"][:n]  # shorter than seq_lens: MMSA would size the model by it
    one = MMSA_test("khar", str(trained["weights"]), str(dump(tmp_path, sample)), gpu_id=0)
    assert isinstance(one, float)
    assert one == pytest.approx(float(whole["test"][2]), abs=1e-5)


def test_mmsa_test_khar_without_saved_config_reads_shapes_from_the_checkpoint(trained, tmp_path,
                                                                             tiny_bert):
    import shutil
    weights = tmp_path / "copy.pth"
    shutil.copy(trained["weights"], weights)  # no copy.pth.json beside it
    config = dict(TINY_KHAR, model_name="khar", dataset_name="mosi", pretrained=str(tiny_bert),
                  seq_lens=[50, 375, 500])  # MMSA's defaults, not what the checkpoint has
    sample = dump(tmp_path, sample_of(trained["features"], index=2))
    got = MMSA_test(config, str(weights), str(sample), gpu_id=-1)
    want = MMSA_test("khar", str(trained["weights"]), str(sample), gpu_id=-1)
    assert got == pytest.approx(want, abs=1e-6)


def test_mmsa_test_rejects_a_sample_longer_than_the_checkpoint(trained, tmp_path):
    sample = sample_of(trained["features"])
    sample["vision"] = np.concatenate([sample["vision"]] * 2)
    with pytest.raises(FeatureValidationError, match=r"\[vision\].*seq_lens\[2\]=12"):
        MMSA_test("khar", str(trained["weights"]), str(dump(tmp_path, sample)), gpu_id=-1)
    sample = sample_of(trained["features"])
    sample["audio"] = sample["audio"].copy()
    sample["audio"][0, 0] = np.nan
    with pytest.raises(FeatureValidationError, match=r"\[audio\]: holds NaN"):
        MMSA_test("khar", str(trained["weights"]), str(dump(tmp_path, sample)), gpu_id=-1)
