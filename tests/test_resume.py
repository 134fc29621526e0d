"""A killed ``MMSA_run('khar', ...)`` rerun identically finishes with the row of an uninterrupted run.

Each run is a process of its own (forked by the one server tests/scripts/mmsa_run_killable.py,
which imports MMSA once) that SIGKILLs itself at a chosen point: mid-epoch, during adapter
pretraining, in the test pass, or in the second seed after the first finished.  HOME, the working
directory and TMPDIR are private folders, so the tests also see what a killed run leaves behind
and what the rerun cleans up.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pandas as pd
import pytest

import khar_mmsa
from conftest import TINY_KHAR_SIZE

SCRIPT = Path(__file__).parent / "scripts" / "mmsa_run_killable.py"
REPO = Path(khar_mmsa.__file__).resolve().parent.parent
SEEDS = [1, 2]
TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=1, pretrain_epochs=1, pretrain_adapters=True)


class RunServer:
    """tests/scripts/mmsa_run_killable.py, started once with HOME, TMPDIR and the working folder
    under ``root``: it imports MMSA once and forks one child per run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for name in ("home", "cwd", "tmp", "mplconfig"):
            (root / name).mkdir(parents=True, exist_ok=True)
        # matplotlib (the run's curves PNG) keeps its font cache in $HOME/.cache and, on a GPU, the
        # CUDA driver its kernel cache in $HOME/.nv, unless told otherwise: neither is a run's leftover
        env = dict(os.environ, HOME=str(root / "home"), TMPDIR=str(root / "tmp"), HF_HUB_OFFLINE="1",
                   MPLCONFIGDIR=str(root / "mplconfig"), CUDA_CACHE_PATH=str(root / "cuda-cache"),
                   TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join(
                       [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self.errors = root / "server-stderr.txt"
        with self.errors.open("w") as errors:
            self.proc = subprocess.Popen([sys.executable, str(SCRIPT)], cwd=root / "cwd", env=env, text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        self.runs = 0
        assert json.loads(self.proc.stdout.readline() or "{}") == {"ready": True}, self.errors.read_text()[-3000:]

    def run(self, out: Path, config: Dict[str, Any], kill: Optional[dict] = None,
            expect_kill: bool = False) -> Optional[Dict[str, Any]]:
        """One run in a forked child, its outputs and events under ``out``; the row it returned, or None."""
        self.runs += 1
        files = {k: str(out / f"{k}-{self.runs}.{ext}") for k, ext in (("row", "json"), ("stderr", "txt"))}
        spec = {"dataset": "mosi", "config": config, "kill": kill, "events": str(out / "events.jsonl"), **files,
                "kwargs": dict(seeds=SEEDS, gpu_ids=[0], num_workers=0, verbose_level=0,
                               **{k: str(out / "out" / k) for k in ("model_save_dir", "res_save_dir",
                                                                     "log_dir")})}
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline() or "{}")
        stderr = Path(files["stderr"]).read_text()[-3000:] if Path(files["stderr"]).is_file() else ""
        assert reply and not reply["timed_out"], f"no answer or timed out: {reply} {stderr}"
        if expect_kill:
            assert reply["returncode"] == -signal.SIGKILL, stderr
            return None
        assert reply["returncode"] == 0, stderr
        return json.loads(Path(files["row"]).read_text())

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunServer]:
    runs = RunServer(tmp_path_factory.mktemp("killable"))
    try:
        yield runs
    finally:
        runs.close()


def events(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(ln) for ln in (out / "events.jsonl").read_text().splitlines()]


def csv_rows(out: Path) -> List[Dict[str, Any]]:
    return pd.read_csv(out / "out" / "res_save_dir" / "normal" / "mosi.tidy.csv").to_dict("records")


def leftovers(server: RunServer, out: Path) -> List[str]:
    """Anything a finished run should not leave: temp files and folders, lock, resume state."""
    root = server.root
    found = [p.name for p in (root / "tmp").iterdir()]  # mmsa-results-*, khar-mmsa-* folders
    found += [f"cwd/{p.name}" for p in (root / "cwd").iterdir()]
    found += [f"home/{p.name}" for p in (root / "home").iterdir()]
    found += [str(p.relative_to(out / "out")) for p in (out / "out").rglob("*")
              if p.name.endswith((".tmp", ".lock", ".resume", ".seeds.json"))]
    return found


@pytest.fixture(scope="module")
def khar_config(tiny_features, tiny_bert) -> Dict[str, Any]:
    return dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, server, khar_config) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("uninterrupted")
    row = server.run(out, khar_config)
    assert csv_rows(out) == [row]
    assert leftovers(server, out) == []
    return row


#: Kill points in the order a run reaches them; each rerun is killed a little further on.
CHAIN = [
    ("pretraining", {"seed": 1, "at": "pretrain", "modality": "a"}),
    ("mid-epoch", {"seed": 1, "at": "epoch", "epoch": 2, "step": 2}),
    ("second seed", {"seed": 2, "at": "epoch", "epoch": 1, "step": 2}),
    ("test pass", {"seed": 2, "at": "test"}),
]


def test_run_killed_at_every_stage_finishes_with_the_uninterrupted_row(tmp_path, server, khar_config,
                                                                        uninterrupted):
    trained_per_run = []
    for where, kill in CHAIN + [("end", None)]:
        before = len(events(tmp_path)) if (tmp_path / "events.jsonl").exists() else 0
        row = server.run(tmp_path, khar_config, kill=kill, expect_kill=kill is not None)
        new = events(tmp_path)[before:]
        if kill is not None:
            assert [(e["seed"], e["at"]) for e in new if e["event"] == "killed"] == \
                [(kill["seed"], kill["at"])], f"the run did not get as far as the {where} kill"
            assert list((tmp_path / "out" / "res_save_dir" / "normal").glob("*.csv")) == []
        trained_per_run.append({(e["seed"], e["event"], e.get("epoch")) for e in new
                                if e["event"] in ("train_epoch", "pretrain_epoch")})

    assert row == uninterrupted
    assert csv_rows(tmp_path) == [uninterrupted]
    assert leftovers(server, tmp_path) == []  # temp folders of the killed processes are swept too
    after_pretrain_kill, after_mid_epoch_kill, after_seed2_kill, after_test_kill = trained_per_run[1:]
    assert (1, "train_epoch", 1) in after_pretrain_kill  # killed before a resume state existed
    assert {e for e in after_mid_epoch_kill if e[0] == 1} == {(1, "train_epoch", 2)}, \
        "resumes seed 1 after its last finished epoch, adapters reused"
    for run in (after_seed2_kill, after_test_kill):
        assert all(seed == 2 for seed, _, _ in run), f"seed 1 finished but trained again: {run}"
    log = (tmp_path / "out" / "log_dir" / "khar-mosi.log").read_text()
    assert "Seed 1 finished in an earlier run of this config" in log


# ============================================================================================
# In-process: resume state of another config, output folders
# ============================================================================================
class Interrupted(Exception):
    pass


def test_resume_state_of_another_config_is_ignored_with_one_line(tmp_path, khar_config,
                                                                 mmsa_run_kwargs, fast_mmsa,
                                                                 monkeypatch, caplog):
    import torch
    from MMSA import MMSA_run
    from khar_mmsa.training.loop import Callback
    trained, interrupt = [], [True]

    class InterruptedInSeed2(Callback):
        def on_epoch_begin(self, state, loop):
            trained.append((torch.initial_seed(), state.epoch))
            if interrupt[0] and (torch.initial_seed(), state.epoch) == (2, 2):
                raise Interrupted

    # the trainer runs the callbacks of config['callbacks'] (a run setting: no part of the config's identity)
    config = dict(khar_config, pretrain_adapters=False, save_curves=False, callbacks=[InterruptedInSeed2()])
    kwargs = dict(mmsa_run_kwargs, seeds=SEEDS)
    with pytest.raises(Interrupted):
        MMSA_run("khar", "mosi", config=config, **kwargs)
    saved = Path(kwargs["model_save_dir"])
    assert (saved / "khar-mosi.pth.seeds.json").is_file() and (saved / "khar-mosi.pth.resume").is_file()

    trained.clear()
    interrupt[0] = False
    caplog.set_level(logging.INFO, logger="MMSA")
    row = MMSA_run("khar", "mosi", config=dict(config, learning_rate=1e-4), **kwargs)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("khar-mosi.pth.seeds.json: it belongs to a run with another config" in m
               for m in messages) == 1
    assert sum("resume state khar-mosi.pth.resume ignored because it was written by a run with "
               "another config" in m for m in messages) == 1
    assert {seed for seed, _ in trained} == {1, 2}, "every seed of the new config trains"
    assert row["seeds"] == "1 2"
    assert sorted(p.name for p in saved.iterdir()) == ["khar-mosi.pth", "khar-mosi.pth.json"]


@pytest.mark.parametrize("key", ["model_save_dir", "res_save_dir", "log_dir"])
def test_unusable_output_folder_fails_before_training(key, tmp_path, khar_config, mmsa_run_kwargs,
                                                      monkeypatch):
    from MMSA import MMSA_run
    from khar_mmsa.runs.output_folders import OutputFolderError
    from khar_mmsa.training.trainer import KHaRTrainer
    monkeypatch.setattr(KHaRTrainer, "do_train", lambda *a, **k: pytest.fail("trained"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    kwargs = dict(mmsa_run_kwargs, **{key: blocker / "out"})
    with pytest.raises(OutputFolderError, match=rf"MMSA_run {key}='.*a-file/out': the folder "
                                                rf"cannot be created or written to"):
        MMSA_run("khar", "mosi", config=khar_config, **kwargs)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_fails_before_training(tmp_path, khar_config, mmsa_run_kwargs):
    from MMSA import MMSA_run
    from khar_mmsa.runs.output_folders import OutputFolderError
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputFolderError, match="res_save_dir"):
            MMSA_run("khar", "mosi", config=khar_config,
                     **dict(mmsa_run_kwargs, res_save_dir=folder))
    finally:
        folder.chmod(0o700)
