"""``MMSA_test`` through the same gate as ``MMSA_run``: restricted unpickling, checked samples, and
KHaR checkpoints predicted with the checkpoint's own shapes (one sample or a whole file)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.io.pickles import UnsafePickleError, load_pickle
from khar_mmsa.data.validation import FeatureValidationError
from MMSA import MMSA_run, MMSA_test
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=1, pretrain_adapters=False)


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


@pytest.mark.parametrize("door, config", [(MMSA_test, "khar"), (MMSA_test, {"model_name": "khar"}),
                                          (khar_mmsa.test, {"model_name": "tfn"})])
def test_mmsa_test_refuses_a_code_running_pickle(door, config, trained, tmp_path):
    """MMSA_test for 'khar'; khar_mmsa.test for every model (MMSA_test stays MMSA's for its own)."""
    evil, marker = evil_pickle(tmp_path)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        door(config, str(trained["weights"]), str(evil), gpu_id=-1)
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


# --- strict booleans --------------------------------------------------------------------------
def _test_entry(model: str):
    """'khar' through MMSA's own MMSA_test (import khar_mmsa sends it to us); MMSA's models
    through khar_mmsa.test, the safe MMSA_test for every model."""
    return MMSA_test if model == "khar" else khar_mmsa.test


@pytest.mark.parametrize("config", [{"model_name": "khar", "trust_pickle": "no"},
                                    {"model_name": "khar", "trust_pickle": "False"},
                                    {"model_name": "tfn", "trust_pickle": "0"}])
def test_trust_pickle_no_does_not_trust(config, trained, tmp_path):
    """A non-empty string is truthy; 'no' must still mean no: the pickle's code does not run."""
    evil, marker = evil_pickle(tmp_path)
    with pytest.raises(UnsafePickleError, match="evil.pkl"):
        _test_entry(config["model_name"])(config, str(trained["weights"]), str(evil), gpu_id=-1)
    assert not marker.exists()


def test_trust_pickle_nonsense_is_an_error_naming_the_key(trained, tmp_path):
    from khar_mmsa.config import ConfigError
    evil, marker = evil_pickle(tmp_path)
    with pytest.raises(ConfigError, match="trust_pickle='sure'"):
        MMSA_test({"model_name": "khar", "trust_pickle": "sure"}, str(trained["weights"]), str(evil),
                  gpu_id=-1)
    assert not marker.exists()


# --- the checkpoint and its .pth.json through the state-file loaders -------------------------
def _copy_checkpoint(trained, tmp_path: Path) -> Path:
    import shutil
    weights = tmp_path / "copy.pth"
    shutil.copy(trained["weights"], weights)
    shutil.copy(f"{trained['weights']}.json", f"{weights}.json")
    return weights


@pytest.mark.parametrize("content,fragment", [
    ("{not json", "checkpoint config is not valid JSON"),
    ("[]", "checkpoint config is a JSON list"),
    ('{"model_name": "khar", "dataset_name": "mosi"}', "lacks key(s) ['config']"),
    ('{"model_name": "khar", "dataset_name": "mosi", "config": {}, "x": 1}', "unknown key(s) ['x']"),
    ('{"model_name": "khar", "dataset_name": "mosi", "config": {"modal_dim": "16"}}', "modal_dim='16'"),
])
def test_damaged_checkpoint_config_names_the_file(trained, tmp_path, content, fragment):
    from khar_mmsa.io.state_files import StateFileError
    weights = _copy_checkpoint(trained, tmp_path)
    Path(f"{weights}.json").write_text(content)
    sample = dump(tmp_path, sample_of(trained["features"]))
    with pytest.raises(StateFileError) as ei:
        MMSA_test("khar", str(weights), str(sample), gpu_id=-1)
    assert str(ei.value).startswith(f"{weights}.json: ") and fragment in str(ei.value)


def test_truncated_checkpoint_names_the_file(trained, tmp_path):
    from khar_mmsa.io.state_files import StateFileError
    weights = _copy_checkpoint(trained, tmp_path)
    weights.write_bytes(weights.read_bytes()[:2000])
    sample = dump(tmp_path, sample_of(trained["features"]))
    with pytest.raises(StateFileError, match=r"copy\.pth: checkpoint is truncated"):
        MMSA_test("khar", str(weights), str(sample), gpu_id=-1)


def test_seq_lens_are_taken_from_the_checkpoint_not_its_json(trained, tmp_path):
    import json
    weights = _copy_checkpoint(trained, tmp_path)
    saved = json.loads(Path(f"{weights}.json").read_text())
    saved["config"]["seq_lens"] = [50, 3, 4]  # not what the checkpoint's position tables hold
    Path(f"{weights}.json").write_text(json.dumps(saved))
    sample = dump(tmp_path, sample_of(trained["features"], index=1))
    got = MMSA_test("khar", str(weights), str(sample), gpu_id=-1)
    assert got == pytest.approx(MMSA_test("khar", str(trained["weights"]), str(sample), gpu_id=-1), abs=1e-6)
    saved["config"]["seq_lens"] = [50, 10 ** 9, 500]
    Path(f"{weights}.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"seq_lens=\[50, 1000000000, 500\]"):
        MMSA_test("khar", str(weights), str(sample), gpu_id=-1)


# --- samples: segment ids and lengths -----------------------------------------------------------
@pytest.mark.parametrize("model", ["khar", "tfn"])
@pytest.mark.parametrize("edit,fragment", [
    (lambda s: s["text_bert"].__setitem__((2, 0), 5), "segment ids (row 2) range over [0, 5]"),
    (lambda s: s["text_bert"].__setitem__((1, 0), 3), "the attention mask (row 1) holds [3]"),
    (lambda s: s.__setitem__("audio_lengths", "seven"), "[audio_lengths]: is 'seven', expected one whole number"),
    (lambda s: s.__setitem__("vision_lengths", np.array([], dtype=np.int64)), "[vision_lengths]: is array([]"),
    (lambda s: s.__setitem__("audio_lengths", 10 ** 6), "[audio_lengths]: is 1000000, outside 1.."),
])
def test_bad_sample_is_a_clear_error(model, edit, fragment, trained, tmp_path):
    sample = sample_of(trained["features"])
    sample["text_bert"] = np.array(sample["text_bert"], dtype=np.float32)
    edit(sample)
    with pytest.raises(FeatureValidationError) as ei:
        _test_entry(model)({"model_name": model}, str(trained["weights"]), str(dump(tmp_path, sample)),
                           gpu_id=-1)
    assert fragment in str(ei.value), str(ei.value)
