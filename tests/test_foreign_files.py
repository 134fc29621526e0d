"""Nothing of the user's is renamed or written outside the folders given, and only our own
checkpoint is tested (issue 23): through ``MMSA_run``, ``MMSA_test``, ``khar_mmsa.run``, the command
line (a subprocess) and a sweep.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
import torch

import khar_mmsa
from khar_mmsa.experiments.sweep import RunSpec, run_sweep
from khar_mmsa.registration.configs import ConfigFileError
from khar_mmsa.runs.run_files import RunFileError
from khar_mmsa.io.names import UnsafeNameError
from khar_mmsa.io.state_files import ForeignFileError
from MMSA import MMSA_run, MMSA_test
from conftest import TINY_KHAR_SIZE
from test_mmsa_package import DummyTrainer, dummy_khar  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=1, early_stop=1, pretrain_epochs=1, save_curves=False)
UNSAFE = "x/../../../outside/pwn"


def _khar(tiny_features, tiny_bert, kwargs, **overrides) -> Any:
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), **overrides)
    return MMSA_run("khar", "mosi", config=config, **kwargs)


def _nothing_outside(root: Path) -> None:
    assert not (root / "outside").exists() and not list(root.rglob("pwn*"))


# ---- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["MMSA_run khar", "MMSA_run tfn", "khar_mmsa.run", "MMSA_run model"])
def test_a_name_that_leaves_the_folders_is_refused_before_anything_is_written(call, tmp_path: Path) -> None:
    root = tmp_path / "a" / "b" / "c"
    kwargs = dict(model_save_dir=root / "models", res_save_dir=root / "results", log_dir=root / "logs",
                  seeds=[1], gpu_ids=[0], verbose_level=0)
    with pytest.raises(UnsafeNameError, match="dataset_name='x/../../../outside/pwn'|model_name="):
        if call == "MMSA_run model":
            MMSA_run(UNSAFE, "mosi", **kwargs)
        elif call == "khar_mmsa.run":
            khar_mmsa.run("khar", UNSAFE, **kwargs)
        else:
            MMSA_run(call.split()[1], UNSAFE, **kwargs)
    _nothing_outside(tmp_path)
    assert not root.exists()  # not even the output folders


def test_mmsa_test_refuses_an_unsafe_name(tmp_path: Path) -> None:
    with pytest.raises(UnsafeNameError, match="dataset_name"):
        MMSA_test({"model_name": "khar", "dataset_name": UNSAFE}, tmp_path / "w.pth", tmp_path / "f.pkl", -1)


def test_a_sweep_refuses_an_unsafe_name_before_its_manifest(tmp_path: Path) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    spec = RunSpec(model="m", dataset=UNSAFE, seed=1, feature_path=str(data), out_dir=str(tmp_path / "r1"),
                   runner="test_sweep:flaky_runner")
    with pytest.raises(UnsafeNameError):
        run_sweep([spec], manifest_path=tmp_path / "manifest.jsonl")
    assert not (tmp_path / "manifest.jsonl").exists()
    _nothing_outside(tmp_path)


def _cli(args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TQDM_DISABLE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "khar_mmsa", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


# ---- -c files ----------------------------------------------------------------------------------------
BAD_CONFIGS = {
    "not-json": ("{'khar': 1", "is not valid JSON"),
    "no-khar": (json.dumps({"tfn": {}, "datasetCommonParams": {}}), "model 'khar' is missing"),
    "no-dataset": (json.dumps({"khar": {"commonParams": {"need_data_aligned": False},
                                        "datasetParams": {"mosi": {}}},
                               "datasetCommonParams": {"dataset_root_dir": ""}}),
                   "datasetCommonParams.'mosi' is missing"),
    "no-model-dataset": (json.dumps({"khar": {"commonParams": {"need_data_aligned": False}, "datasetParams": {}},
                                     "datasetCommonParams": {"dataset_root_dir": ""}}),
                         "khar.datasetParams.'mosi' is missing"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_bad_config_file_is_one_line_naming_it(name: str, tmp_path: Path, mmsa_run_kwargs) -> None:
    content, fragment = BAD_CONFIGS[name]
    path = tmp_path / f"{name}.json"
    path.write_text(content)
    with pytest.raises(ConfigFileError) as refused:
        MMSA_run("khar", "mosi", config_file=str(path), **mmsa_run_kwargs)
    assert str(path) in str(refused.value) and fragment in str(refused.value)


def test_the_command_line_says_which_config_file_is_bad(tmp_path: Path) -> None:
    """One fresh interpreter (it imports MMSA before the file is read): every kind of bad file is the
    same ConfigFileError of check_config_file, one line through the same handler of cli.main; each
    kind's message is checked in-process by test_a_bad_config_file_is_one_line_naming_it."""
    for name in ("no-dataset",):
        content, fragment = BAD_CONFIGS[name]
        path = tmp_path / f"{name}.json"
        path.write_text(content)
        done = _cli(["-m", "khar", "-d", "mosi", "-c", str(path), "--log-dir", str(tmp_path / "logs"),
                     "--model-save-dir", str(tmp_path / "m"), "--res-save-dir", str(tmp_path / "r")], tmp_path)
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if "error" in line.lower()]
        assert len(lines) == 1 and lines[0].startswith("python -m khar_mmsa: error: "), done.stderr
        assert str(path) in lines[0] and fragment in lines[0], done.stderr
        assert "Traceback" not in done.stderr
        assert "JSONDecodeError" not in done.stderr and "KeyError" not in done.stderr


# ---- files of the user's ---------------------------------------------------------------------------------
def test_adapters_path_at_a_users_file_is_an_error_and_the_file_untouched(tiny_features, tiny_bert,
                                                                          mmsa_run_kwargs, fast_mmsa,
                                                                          tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a checkpoint\n")
    with pytest.raises(ForeignFileError) as refused:
        _khar(tiny_features, tiny_bert, mmsa_run_kwargs, pretrain_adapters=True,
              pretrained_adapters_path=str(notes))
    assert str(notes) in str(refused.value) and "nothing was trained" in str(refused.value)
    assert notes.read_text() == "my notes, not a checkpoint\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("notes")] == ["notes.txt"]
    log = (Path(mmsa_run_kwargs["log_dir"]) / "khar-mosi.log").read_text()
    assert "train samples" not in log and "HARVEST-" not in log  # found before any data was read


def test_a_users_file_at_the_seeds_record_is_not_renamed(dummy_khar, mmsa_run_kwargs, fast_mmsa) -> None:
    models = Path(mmsa_run_kwargs["model_save_dir"])
    models.mkdir(parents=True)
    theirs = models / "khar-mosi.pth.seeds.json"
    theirs.write_text("{my own bookkeeping")
    with pytest.raises(ForeignFileError, match="khar-mmsa did not write this file"):
        MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert theirs.read_text() == "{my own bookkeeping" and not list(models.glob("*.damaged-*"))


def test_a_read_only_checkpoint_is_found_before_training(dummy_khar, mmsa_run_kwargs, fast_mmsa) -> None:
    models = Path(mmsa_run_kwargs["model_save_dir"])
    models.mkdir(parents=True)
    checkpoint = models / "khar-mosi.pth"
    checkpoint.write_bytes(b"keep me")
    checkpoint.chmod(0o444)
    with pytest.raises(RunFileError, match="khar-mosi.pth.*read-only.*nothing was trained"):
        MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    assert DummyTrainer.events == [] and checkpoint.read_bytes() == b"keep me"


# ---- a checkpoint this seed's run did not write ------------------------------------------------------------
def test_a_swapped_in_checkpoint_is_not_resumed_from(tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa,
                                                     caplog) -> None:
    from khar_mmsa.training.loop import Callback

    class Stop(Callback):
        def on_epoch_end(self, state, loop):
            raise KeyboardInterrupt("stopped after the first epoch")

    models = Path(mmsa_run_kwargs["model_save_dir"])
    kwargs: Dict[str, Any] = dict(pretrain_adapters=False, epochs=2, early_stop=2)
    with pytest.raises(KeyboardInterrupt):
        _khar(tiny_features, tiny_bert, mmsa_run_kwargs, callbacks=[Stop()], **kwargs)
    best = models / "khar-mosi.pth"
    assert (models / "khar-mosi.pth.resume").is_file() and best.is_file()
    other_seed = {k: v + 1.0 if v.is_floating_point() else v for k, v in torch.load(best).items()}
    torch.save(other_seed, best)  # another seed's checkpoint, swapped in: same shapes, loads fine
    with caplog.at_level("INFO", logger="MMSA"):
        _khar(tiny_features, tiny_bert, mmsa_run_kwargs, **kwargs)
    assert "is not the file this seed's run wrote" in caplog.text
    assert "Resuming KHaR" not in caplog.text
    assert "EPOCH-(khar) seed 1 epoch 1/2" in caplog.text  # trained from the start


def test_the_command_line_refuses_an_unsafe_name_before_writing(tmp_path: Path) -> None:
    """The train command's -d takes only the config files' dataset keys (argparse), and its name
    check runs before the error log's name is made of them."""
    root = tmp_path / "a" / "b" / "c"
    done = _cli(["-m", "khar", "-d", UNSAFE, "--log-dir", str(root / "logs"), "--model-save-dir",
                 str(root / "m"), "--res-save-dir", str(root / "r")], tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr and UNSAFE in done.stderr
    _nothing_outside(tmp_path)
    assert not root.exists()
