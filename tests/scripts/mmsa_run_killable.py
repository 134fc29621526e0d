"""One ``MMSA_run('khar', ...)`` in a subprocess that can SIGKILL itself at a chosen point.

Test-only (used by tests/test_resume.py).  argv[1] is a JSON spec::

    {"dataset": "mosi", "config": {...}, "kwargs": {...MMSA_run keyword arguments...},
     "events": "<file>", "kill": null | {"seed": 1, "at": "epoch", "epoch": 2, "step": 2}
                                      | {"seed": 2, "at": "pretrain", "modality": "a"} | {"seed": 1, "at": "test"}}

Every training epoch and pretraining epoch of every seed is appended to ``events`` (JSON lines),
so a test can tell what was trained again after a kill.  The returned row is printed as JSON.
The kill hooks are installed here by replacing trainer methods; nothing in khar_mmsa knows.
"""
import json
import os
import signal
import sys
import time
import types

import torch

torch.set_num_threads(1)  # same arithmetic in every process of a test

import khar_mmsa  # noqa: E402,F401  (registers 'khar')
import MMSA.run  # noqa: E402
from khar_mmsa.training import pretrain  # noqa: E402
from khar_mmsa.training.trainer import KHaRTrainer  # noqa: E402
from MMSA import MMSA_run  # noqa: E402

spec = json.loads(sys.argv[1])
kill = spec.get("kill") or {}
MMSA.run.time = types.SimpleNamespace(sleep=lambda s: None, time=time.time)  # skip MMSA's 1 s nap


def event(**fields):
    with open(spec["events"], "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(fields, seed=torch.initial_seed(), pid=os.getpid())) + "\n")


def die_if(at, **where):
    if kill.get("at") == at and kill.get("seed") == torch.initial_seed() and \
            all(kill.get(k) == v for k, v in where.items()):
        event(event="killed", at=at, **where)
        os.kill(os.getpid(), signal.SIGKILL)


train_epoch = KHaRTrainer._train_epoch


def killable_train_epoch(self, model, loader, optimizer, scheduler, epoch):
    event(event="train_epoch", epoch=epoch)

    def batches():
        for step, batch in enumerate(loader, start=1):
            die_if("epoch", epoch=epoch, step=step)
            yield batch
    return train_epoch(self, model, batches(), optimizer, scheduler, epoch)


run_epoch = pretrain._run_epoch


def killable_run_epoch(harvester, head, loader, modality, key, device, optimizer, *rest):
    event(event="pretrain_epoch", modality=modality, train=optimizer is not None)
    if optimizer is None:  # in the validation pass of that modality's first epoch
        die_if("pretrain", modality=modality)
    return run_epoch(harvester, head, loader, modality, key, device, optimizer, *rest)


do_test = KHaRTrainer.do_test


def killable_do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
    if mode == "TEST":
        die_if("test")
    return do_test(self, model, dataloader, mode, return_sample_results)


KHaRTrainer._train_epoch = killable_train_epoch
KHaRTrainer.do_test = killable_do_test
pretrain._run_epoch = killable_run_epoch

row = MMSA_run("khar", spec["dataset"], config=spec["config"], **spec["kwargs"])
print("ROW " + json.dumps(row))
