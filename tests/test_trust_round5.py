"""Issue 31 (trust at the door, round 5), each case at the door where it was found: a tune table
grants no trust, names and seeds are refused by a grammar, a sweep's damaged 'done' record makes
its run again, the results tables stay in agreement after a kill between their appends, results
headers and KeyEval are checked before any work, and our adapter cache gets one decision at every
size.
"""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import runpy
import signal
import sys
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import pytest

import khar_mmsa
from khar_mmsa import cli
from khar_mmsa.experiments.sweep import Manifest, RunSpec, run_sweep, write_tables
from khar_mmsa.tuning import UntrustedCandidateError
from khar_mmsa.io.files import UnsafePathError
from khar_mmsa.io.names import UnsafeNameError, check_name
from khar_mmsa.mmsa_conventions import SeedError
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE
from test_mmsa_package import DummyTrainer, dummy_khar  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
KILL_SCRIPT = REPO / "tests" / "scripts" / "mmsa_run_kill_between_appends.py"
TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=1, early_stop=1, pretrain_adapters=False, save_curves=False)


# ---- names: a grammar matched whole ---------------------------------------------------------------
def test_the_name_grammar_accepts_names_and_nothing_around_them() -> None:
    for name in ("mosi", "self_mm", "sims-v2", "m.1", "A" * 100):
        assert check_name(name, "dataset_name") == name
    for name in ("mosi\n", "mosi\r\n", ".", "..", ".hidden", "-x", "a..b", "", "a/b", "A" * 101, "mosi ", 7):
        with pytest.raises(UnsafeNameError, match="dataset_name="):
            check_name(name, "dataset_name")


@pytest.mark.parametrize("dataset", ["mosi\n", "."])
def test_mmsa_run_refuses_a_trailing_newline_or_a_dot_before_any_folder(dataset: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    with pytest.raises(UnsafeNameError, match=r"dataset_name='(mosi\\n|\.)'"):
        MMSA_run("khar", dataset, model_save_dir=root / "m", res_save_dir=root / "r", log_dir=root / "l",
                 seeds=[1], gpu_ids=[0], verbose_level=0)
    assert not root.exists()


# ---- seeds: [0, 2**32) at every door --------------------------------------------------------------
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40])
def test_mmsa_run_and_its_tune_mode_refuse_a_seed_outside_32_bits(seed: int, tmp_path: Path) -> None:
    root = tmp_path / "out"
    for tune in (False, True):
        with pytest.raises(SeedError, match=rf"seed {seed} is outside \[0, 2\*\*32\)"):
            MMSA_run("khar", "mosi", seeds=[1111, seed], is_tune=tune, model_save_dir=root / "m",
                     res_save_dir=root / "r", log_dir=root / "l", gpu_ids=[0], verbose_level=0)
    assert not root.exists()  # before any folder


def test_the_largest_32_bit_seed_is_a_seed() -> None:
    from khar_mmsa.runs.runner import checked_seeds
    assert checked_seeds([0, 2**32 - 1]) == [0, 2**32 - 1]


@pytest.mark.parametrize("argv", [["-m", "khar", "-d", "mosi", "-s", "-1"],
                                  ["tune", "-m", "khar", "-d", "mosi", "-s", "4294967296"],
                                  ["sweep", "-m", "khar", "-d", "mosi", "-s", "1111", "-1",
                                   "--custom-feature", "x.pkl", "--out", "out"]])
def test_the_command_line_refuses_a_seed_outside_32_bits_in_one_line(argv: List[str], tmp_path: Path,
                                                                     capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "is outside [0, 2**32)" in err[-1] and "Traceback" not in "\n".join(err)


def test_a_sweep_refuses_a_seed_outside_32_bits_before_its_manifest(tmp_path: Path) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    spec = RunSpec(model="m", dataset="mosi", seed=-1, feature_path=str(data), out_dir=str(tmp_path / "r"),
                   runner="test_sweep:flaky_runner")
    with pytest.raises(SeedError, match="seed -1 is outside"):
        run_sweep([spec], manifest_path=tmp_path / "manifest.jsonl", stream=io.StringIO())
    assert not (tmp_path / "manifest.jsonl").exists()


# ---- sweeps -------------------------------------------------------------------------------------------
def test_sweep_with_one_model_named_twice_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["sweep", "-m", "khar", "KHAR", "-d", "mosi", "--custom-feature", "x.pkl", "--out", "out"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "model(s) khar given more than once in -m" in err and "Traceback" not in err


@pytest.mark.parametrize("metrics", [[0.5, 0.6], "0.5", {"MAE": [0.5]}, {"MAE": "0.5"}])
def test_a_done_record_whose_metrics_are_not_numbers_makes_its_run_again(metrics: Any, tmp_path: Path,
                                                                        caplog) -> None:
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    manifest = tmp_path / "manifest.jsonl"
    specs = [RunSpec(model="m", dataset="mosi", seed=s, feature_path=str(data), out_dir=str(tmp_path / f"r{s}"),
                     runner="test_sweep:flaky_runner") for s in (1, 2)]
    run_sweep(specs, manifest_path=manifest, stream=io.StringIO())
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for rec in records:  # run 2's 'done' record, well-formed JSON, its metrics a list (or a string...)
        if rec["event"] == "done" and rec["run_id"] == specs[1].run_id:
            rec["outcome"]["result"]["metrics"] = metrics
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    with caplog.at_level("WARNING", logger="MMSA"):
        outcome = run_sweep(specs, manifest_path=manifest, stream=io.StringIO())
    assert outcome.skipped == [specs[0].run_id]  # run 2 ran again
    assert "Ignored: the run it records runs again" in caplog.text
    assert Manifest(manifest).starts(specs[1].run_id) == 2
    paths = write_tables(specs, outcome, tmp_path)  # no AttributeError: both rows, numbers
    assert pd.read_csv(paths["results"])["MAE"].tolist() == [10.0, 20.0]


# ---- tune: a table grants no trust ------------------------------------------------------------------
def _tune_config(tmp_path: Path) -> Path:
    from khar_mmsa.registration.configs import merged_config
    config = merged_config("tune")
    debug = config["khar"]["debugParams"]
    for key in list(debug):
        if key != "d_paras" and isinstance(debug[key], list):
            debug[key] = debug[key][0]
    debug.update(d_paras=["learning_rate"], learning_rate=[1e-3])
    path = tmp_path / "tune-khar.json"
    path.write_text(json.dumps(config))
    return path


class _Evil:
    """Unpickling it writes a file: the proof that a pickle's code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("door", ["MMSA_run", "cli"])
@pytest.mark.parametrize("edit", [{"trust_pickle": True, "custom_feature": "EVIL"}, {"max_model_memory_gib": 1e9},
                                  {"featurePath": "EVIL"}, {"pretrained": "EVIL"}])
def test_an_edited_tune_table_cannot_grant_trust_paths_or_guards(door: str, edit: Dict[str, Any], tmp_path: Path,
                                                                 tiny_features, tiny_bert, mmsa_run_kwargs,
                                                                 fast_mmsa, capsys) -> None:
    evil, ran = tmp_path / "evil.pkl", tmp_path / "code-ran"
    evil.write_bytes(pickle.dumps(_Evil(str(ran))))
    config = dict(TINY_KHAR, pretrained=str(tiny_bert))
    call = dict(config_file=str(_tune_config(tmp_path)), config=config, is_tune=True, tune_times=1,
                custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    MMSA_run("khar", "mosi", **call)  # a real search: one candidate trained, selected, tested
    csv_file = mmsa_run_kwargs["res_save_dir"] / "tune" / "mosi-khar-by-valid.csv"
    table = pd.read_csv(csv_file)
    edit = {k: str(evil) if v == "EVIL" else v for k, v in edit.items()}
    table["candidate"] = [json.dumps({**json.loads(c), **edit}) for c in table["candidate"]]
    table.to_csv(csv_file, index=False)
    edited = csv_file.read_bytes()
    candidate = mmsa_run_kwargs["model_save_dir"] / "khar-mosi-tune-candidate.pth"
    if door == "MMSA_run":
        with pytest.raises(UntrustedCandidateError, match=r"row 1: its candidate sets \[") as refused:
            MMSA_run("khar", "mosi", **dict(call, tune_times=2))  # would train a new candidate, then select
        message = str(refused.value)
    else:
        folders = [a for k in ("model_save_dir", "res_save_dir", "log_dir")
                   for a in (f"--{k.replace('_', '-')}", str(mmsa_run_kwargs[k]))]
        code = cli.main(["-m", "khar", "-d", "mosi", "-t", "-tt", "2", "-c", call["config_file"], "-s", "1",
                         "--custom-feature", call["custom_feature"], "-v", "0", *folders,
                         *[a for k, v in config.items() for a in ("--set", f"{k}={v}")]])
        assert code == 1
        message = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(csv_file) in message and sorted(edit)[0] in message and "come from the call" in message
    assert not ran.exists() and csv_file.read_bytes() == edited and not candidate.exists()


def test_a_tune_table_that_is_a_link_is_refused_without_reading_it(tmp_path: Path, tiny_features, tiny_bert,
                                                                 mmsa_run_kwargs, fast_mmsa, monkeypatch) -> None:
    mine = tmp_path / "my-notes.csv"
    mine.write_text("candidate,selected_by\nnot json,x\n")
    table = mmsa_run_kwargs["res_save_dir"] / "tune" / "mosi-khar-by-valid.csv"
    table.parent.mkdir(parents=True)
    table.symlink_to(mine)
    read: List[str] = []
    real_read_csv = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda f, *a, **k: read.append(str(f)) or real_read_csv(f, *a, **k))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        MMSA_run("khar", "mosi", config_file=str(_tune_config(tmp_path)), config=dict(TINY_KHAR, pretrained=str(tiny_bert)),
                 is_tune=True, tune_times=1, custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    assert read == [] and table.is_symlink() and mine.read_text() == "candidate,selected_by\nnot json,x\n"


# ---- results tables: whole after a kill, checked before work ------------------------------------------
def _tables(res_dir: Path) -> List[Path]:
    from khar_mmsa.runs.results_files import results_csv_path, tidy_csv_path
    return [results_csv_path(res_dir, "mosi"), tidy_csv_path(res_dir, "mosi")]


def _kill_between_appends(spec: str, cwd: str) -> None:
    """tests/scripts/mmsa_run_kill_between_appends.py run as ``python <script> <spec>`` runs it, in a
    forked child of the test process."""
    os.chdir(cwd)
    os.environ.update(TQDM_DISABLE="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLCONFIGDIR=str(Path(cwd) / "mpl"))
    sys.argv = [str(KILL_SCRIPT), spec]
    runpy.run_path(str(KILL_SCRIPT), run_name="__main__")


def test_a_kill_between_the_two_appends_is_made_whole_by_the_identical_rerun(tmp_path: Path, tiny_features,
                                                                           tiny_bert, mmsa_run_kwargs,
                                                                           fast_mmsa) -> None:
    from khar_mmsa.runs.results_files import read_results_table
    config = dict(TINY_KHAR, pretrained=str(tiny_bert))
    kwargs = dict(mmsa_run_kwargs, custom_feature=str(tiny_features("mosi")))
    spec = {"config": config, "kwargs": {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}}
    # the script runs in a forked child of this process (MMSA imported already, as in test_sweep's
    # killed driver): a process of its own, SIGKILLed by itself between the two appends
    killed = multiprocessing.get_context("fork").Process(
        target=_kill_between_appends, args=(json.dumps(spec), str(tmp_path)))
    killed.start()
    killed.join(timeout=300)
    if killed.is_alive():  # pragma: no cover - the test fails below
        killed.kill()
        killed.join(timeout=30)
    assert killed.exitcode == -signal.SIGKILL, f"exit code {killed.exitcode} (stderr above)"
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs["res_save_dir"])
    assert len(pd.read_csv(mmsa_csv)) == 1 and not tidy_csv.exists()  # the row in one table only
    row = MMSA_run("khar", "mosi", config=config, **kwargs)  # the identical rerun
    mmsa, tidy = read_results_table(mmsa_csv), pd.read_csv(tidy_csv)
    assert len(mmsa) == 1 and len(tidy) == 1
    for metric in ("MAE", "Corr", "Loss"):
        assert mmsa[metric].iloc[0] == tidy[metric].iloc[0] == row[metric]
    MMSA_run("khar", "mosi", config=config, **kwargs)  # a new run: a new row in each, still in agreement
    assert len(read_results_table(mmsa_csv)) == len(pd.read_csv(tidy_csv)) == 2


def test_a_stop_after_both_appends_before_the_seeds_record_is_removed_adds_no_second_row(
        dummy_khar, mmsa_run_kwargs, fast_mmsa, monkeypatch) -> None:
    from khar_mmsa.runs.run_state import RunState
    with monkeypatch.context() as stop:
        stop.setattr(RunState, "remove", lambda self: (_ for _ in ()).throw(KeyboardInterrupt("stopped")))
        with pytest.raises(KeyboardInterrupt):
            MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs["res_save_dir"])
    assert len(pd.read_csv(mmsa_csv)) == len(pd.read_csv(tidy_csv)) == 1
    MMSA_run("khar", "mosi", config_file=str(dummy_khar), **mmsa_run_kwargs)  # the identical rerun
    assert len(pd.read_csv(mmsa_csv)) == len(pd.read_csv(tidy_csv)) == 1


METRICS = ["Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score", "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
           "Loss"]


@pytest.mark.parametrize("table, metrics, fragment", [
    (0, ["MAE", "Corr"], "other metrics"),
    (0, METRICS[::-1], "the same metrics in another order"),
    (1, METRICS[1:] + METRICS[:1], "the same metrics in another order"),
])
def test_a_results_header_that_is_not_this_runs_row_is_refused_before_training(
        table: int, metrics: List[str], fragment: str, tiny_features, tiny_bert, mmsa_run_kwargs, fast_mmsa,
        monkeypatch) -> None:
    from khar_mmsa.runs.results_files import ResultsFileError
    from khar_mmsa.training import trainer
    path = _tables(mmsa_run_kwargs["res_save_dir"])[table]
    path.parent.mkdir(parents=True)
    header = ["Model"] + (["seeds"] + [c for m in metrics for c in (m, f"{m}_std")] if table else metrics)
    path.write_text(",".join(header) + "\n")
    monkeypatch.setattr(trainer.KHaRTrainer, "do_train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ResultsFileError, match=fragment) as refused:
        MMSA_run("khar", "mosi", config=dict(TINY_KHAR, pretrained=str(tiny_bert)),
                 custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    assert str(path) in str(refused.value) and "nothing was trained" in str(refused.value)
    assert path.read_text() == ",".join(header) + "\n"


@pytest.mark.parametrize("key, value", [("KeyEval", "MAEX"), ("KeyEval", ""), ("key_eval", "MAEX"), ("KeyEval", "mae")])
def test_a_key_eval_that_is_not_a_metric_is_refused_before_any_folder(key: str, value: str, tmp_path: Path) -> None:
    from khar_mmsa.config import ConfigError
    root = tmp_path / "out"
    for tune in (False, True):
        with pytest.raises(ConfigError, match=rf"{key}='{value}' is not a metric of a run on mosi: one of Has0_acc_2"):
            MMSA_run("khar", "mosi", config={key: value}, is_tune=tune, seeds=[1], gpu_ids=[0], verbose_level=0,
                     model_save_dir=root / "m", res_save_dir=root / "r", log_dir=root / "l")
    assert not root.exists()


def test_the_command_line_refuses_a_key_eval_that_is_not_a_metric_in_one_line(tmp_path: Path, capsys) -> None:
    root = tmp_path / "out"
    code = cli.main(["-m", "khar", "-d", "mosi", "--set", "KeyEval=MAEX", "--model-save-dir", str(root / "m"),
                     "--res-save-dir", str(root / "r"), "--log-dir", str(root / "l")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("python -m khar_mmsa: error: KeyEval='MAEX' is not a metric")
    assert not root.exists()


@pytest.mark.parametrize("tune", [False, True])
def test_a_key_eval_in_a_config_file_is_checked_before_training(tune: bool, tmp_path: Path, tiny_features, tiny_bert,
                                                                mmsa_run_kwargs, fast_mmsa, monkeypatch) -> None:
    from khar_mmsa.config import ConfigError
    from khar_mmsa.registration.configs import merged_config
    from khar_mmsa.training import trainer
    config_file = _tune_config(tmp_path) if tune else tmp_path / "config.json"
    config = json.loads(config_file.read_text()) if tune else merged_config("regression")
    config["datasetCommonParams"]["mosi"]["unaligned"]["KeyEval"] = "MAEX"
    config_file.write_text(json.dumps(config))
    monkeypatch.setattr(trainer.KHaRTrainer, "do_train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ConfigError, match="KeyEval='MAEX' is not a metric"):
        MMSA_run("khar", "mosi", config_file=str(config_file), config=dict(TINY_KHAR, pretrained=str(tiny_bert)),
                 custom_feature=str(tiny_features("mosi")), is_tune=tune, tune_times=1, **mmsa_run_kwargs)
    assert not (mmsa_run_kwargs["res_save_dir"] / "tune" / "mosi-khar-by-valid.csv").exists()


# ---- our adapter cache: one decision at every size -----------------------------------------------------
@pytest.mark.parametrize("size", [1, 100, 1000, None])
def test_our_adapter_cache_cut_to_any_size_is_set_aside_and_pretrained_again(size, tiny_features, tiny_bert,
                                                                             mmsa_run_kwargs, fast_mmsa, caplog) -> None:
    import torch
    models = mmsa_run_kwargs["model_save_dir"]
    models.mkdir(parents=True)
    cache = models / "khar-mosi-adapters.pt"
    whole = io.BytesIO()
    torch.save({"written_by": "khar-mmsa adapter cache", "fingerprint": "x", "states": {"t": [1.0] * 300}}, whole)
    cut = whole.getvalue()[:size] if size is not None else b"\x00" * 5000  # None: bytes that are no cache at all
    cache.write_bytes(cut)
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), pretrain_adapters=True, pretrain_epochs=1)
    call = dict(config=config, custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    with caplog.at_level("INFO", logger="MMSA"):
        MMSA_run("khar", "mosi", **call)
    assert (models / "khar-mosi-adapters.pt.damaged-1").read_bytes() == cut  # kept, never deleted
    assert "Pretraining adapters" in caplog.text and "set aside as" in caplog.text and cache.is_file()


def test_a_file_of_yours_at_a_given_adapters_path_stops_the_run_naming_the_command(tmp_path: Path, tiny_features,
                                                                                 tiny_bert, mmsa_run_kwargs,
                                                                                 fast_mmsa, monkeypatch) -> None:
    from khar_mmsa.io.state_files import ForeignFileError
    from khar_mmsa.training import trainer
    monkeypatch.setattr(trainer.KHaRTrainer, "do_train", lambda *a, **k: pytest.fail("trained"))  # before work
    mine = tmp_path / "my-adapters.pt"
    mine.write_bytes(b"PK\x03\x04" + b"\x00" * 96)  # 100 bytes we cannot identify, at a path you gave
    config = dict(TINY_KHAR, pretrained=str(tiny_bert), pretrain_adapters=True, pretrained_adapters_path=str(mine))
    with pytest.raises(ForeignFileError, match=r"mv '.*my-adapters\.pt' '.*my-adapters\.pt\.mine'"):
        MMSA_run("khar", "mosi", config=config, custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    assert mine.read_bytes() == b"PK\x03\x04" + b"\x00" * 96
