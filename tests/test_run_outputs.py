"""What one ``MMSA_run('khar', ...)`` shows and leaves: progress bars (on when asked, off in tests),
the arguments the run uses, plain short log lines, one results path, the training-curves PNG, and
a missing feature file named with the ways to fix it."""
import contextlib
import importlib
import io
import re
import types

import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.reporting.log_format import LINE_WIDTH
from khar_mmsa.runs.features import FeatureFileNotFoundError
from khar_mmsa.model.text_encoders import minilm_path
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_epochs=1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Under pytest-xdist (--dist=loadgroup) the tests here run on one worker: the module's one run
# (the ``shown`` fixture) is made once.
pytestmark = pytest.mark.xdist_group("run_outputs")
#: MMSA's console prefix 'MMSA - ' and its own banner lines are a little longer than ours.
CONSOLE_LIMIT = LINE_WIDTH + 10


def _quiet_fast(mp):
    """fast_mmsa for a module-scoped run: no 1 s sleep per seed, one torch thread."""
    import time

    import torch
    run = importlib.import_module("MMSA.run")
    mp.setattr(run, "time", types.SimpleNamespace(sleep=lambda s: None, time=time.time))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


@pytest.fixture(scope="module")
def shown(tmp_path_factory, tiny_features, tiny_bert):
    """One tiny KHaR run as a user starts it (verbose_level=1, TQDM_DISABLE unset), with the text
    encoder named 'all-MiniLM-L6-v2' when that package is installed, offline."""
    import torch
    root = tmp_path_factory.mktemp("shown")
    dirs = {k: root / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    feature = tiny_features("mosi")
    pretrained = "all-MiniLM-L6-v2" if minilm_path() is not None else str(tiny_bert)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TQDM_DISABLE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        threads = _quiet_fast(mp)
        try:
            with contextlib.redirect_stderr(err):
                row = MMSA_run("khar", "mosi", config=dict(TINY_KHAR, pretrained=pretrained),
                               custom_feature=str(feature), gpu_ids=[0], seeds=[1111], num_workers=0,
                               verbose_level=1, **dirs)
        finally:
            torch.set_num_threads(threads)
    log = (dirs["log_dir"] / "khar-mosi.log").read_text()
    return types.SimpleNamespace(row=row, console=err.getvalue(), log=log, dirs=dirs, feature=feature,
                                 pretrained=pretrained)


def _messages(log_text):
    """Log-file lines without the 'date time - MMSA[.module] [LEVEL] - ' prefix."""
    return [line.split(" - ", 2)[-1] for line in log_text.splitlines()
            if re.search(r" - MMSA(\.[\w.]+)? \[", line)]


def test_progress_bars_show_for_pretraining_epochs_and_evaluation(shown):
    for bar in ("KHaR harvest-t epoch 1/1 train", "KHaR harvest-a epoch 1/1 valid",
                "KHaR harvest-v epoch 1/1 train", "KHaR epoch 1/2", "KHaR epoch 2/2", "KHaR VAL", "KHaR TEST"):
        assert bar in shown.console, bar
    assert "it/s]" in shown.console  # a tqdm bar, not a log line


@pytest.mark.parametrize("verbose_level, tqdm_disable", [(0, None), (1, "1")])
def test_no_progress_bars_when_switched_off(verbose_level, tqdm_disable, tiny_features, tiny_bert,
                                            mmsa_dirs, fast_mmsa, monkeypatch, capsys):
    if tqdm_disable is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", tqdm_disable)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), epochs=1, save_curves=False)
    MMSA_run("khar", "mosi", config=config, custom_feature=str(tiny_features("mosi")), gpu_ids=[0],
             seeds=[1], num_workers=0, verbose_level=verbose_level, **mmsa_dirs)
    err = capsys.readouterr().err
    assert "KHaR epoch" not in err and "KHaR harvest" not in err and "KHaR TEST" not in err
    assert not (mmsa_dirs["log_dir"] / "khar-mosi-curves.png").exists()  # save_curves=False


def test_finished_run_leaves_a_curves_png_beside_its_log(shown):
    import numpy as np
    from matplotlib.image import imread
    path = shown.dirs["log_dir"] / "khar-mosi-curves.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.shape[0] >= 500 and image.shape[1] >= 1000 and np.asarray(image).std() > 0.05
    assert f"Training curves saved to {path}" in shown.log


def test_startup_args_are_the_ones_the_run_uses(shown):
    messages = _messages(shown.log)
    assert "Running with args (as this run uses them):" in messages
    assert f"  feature file: {shown.feature} (custom_feature; featurePath is not read)" in messages
    assert "  seq_lens (text, audio, vision): [8, 10, 12] (from the data)" in messages  # TINY_SEQ_LENS
    if shown.pretrained == "all-MiniLM-L6-v2":  # resolved offline to the installed folder
        assert f"  pretrained: all-MiniLM-L6-v2 -> {minilm_path()}" in messages
    assert "unaligned_50.pkl" not in shown.log and "[50, 500, 375]" not in shown.log  # MMSA's defaults
    assert "Running with args:" not in messages  # MMSA's own dump, before the data was read


def test_log_has_one_results_path_plain_numbers_and_short_lines(shown):
    messages = _messages(shown.log)
    saved = [m for m in messages if m.startswith("Results saved to")]
    assert saved == [f"Results saved to {shown.dirs['res_save_dir'] / 'normal' / 'mosi.csv'} (as numbers: mosi.tidy.csv)."]
    assert "np.float" not in shown.log and "PosixPath(" not in shown.log
    assert any(m.startswith("Result for seed 1111: ") and "MAE: " in m for m in messages)
    assert any(m.startswith("EPOCH-(khar) seed 1111 epoch 1/2: valid Loss ") for m in messages)
    too_long = [m for m in messages if len(m) > CONSOLE_LIMIT and "feature file:" not in m]
    assert not too_long, too_long


def test_missing_feature_file_names_every_way_to_the_data(tiny_bert, mmsa_run_kwargs, tmp_path, monkeypatch):
    monkeypatch.delenv("MMSA_DATASET_ROOT", raising=False)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert))
    with pytest.raises(FeatureFileNotFoundError) as err:
        MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)  # MMSA's default featurePath
    message = str(err.value)
    for word in ("MMSA_DATASET_ROOT", "featurePath", "custom_feature", "MOSI/Processed/unaligned_50.pkl",
                 "not set"):
        assert word in message, word
    missing = tmp_path / "nowhere.pkl"
    with pytest.raises(FeatureFileNotFoundError, match=r"nowhere\.pkl: feature file not found \(from custom_feature\)"):
        MMSA_run("khar", "mosi", config=config, custom_feature=str(missing), **mmsa_run_kwargs)


def test_without_matplotlib_the_run_warns_instead_of_drawing(tmp_path, monkeypatch, caplog):
    import sys

    from khar_mmsa.reporting.curves import save_training_curves
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    history = [{"epoch": 1, "valid": 0.9, "raw": {"task": 0.8}, "expert_load": {}}]
    with caplog.at_level("WARNING", logger="MMSA"):
        assert save_training_curves(history, tmp_path / "c.png", key_eval="Loss", best_epoch=1) is False
    assert not (tmp_path / "c.png").exists() and "pip install matplotlib" in caplog.text
