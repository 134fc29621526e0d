"""One ``MMSA_run('khar', ...)`` in a subprocess that can SIGKILL itself at a chosen point.

Test-only (used by tests/test_resume.py).  argv[1] is a JSON spec::

    {"dataset": "mosi", "config": {...}, "kwargs": {...MMSA_run keyword arguments...},
     "events": "<file>", "kill": null | {"seed": 1, "at": "epoch", "epoch": 2, "step": 2}
                                      | {"seed": 2, "at": "pretrain", "modality": "a"} | {"seed": 1, "at": "test"}}

Every training epoch and pretraining epoch of every seed is appended to ``events`` (JSON lines),
so a test can tell what was trained again after a kill.  The returned row is printed as JSON.
The kill point is a training callback, given to the trainer in ``args['callbacks']`` by wrapping
the registered ``'khar'`` trainer factory; nothing in khar_mmsa knows.
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
from khar_mmsa.integration import EXTRA_TRAINERS  # noqa: E402
from khar_mmsa.training.loop import Callback  # noqa: E402
from khar_mmsa.training.pretrain import HarvestTask  # noqa: E402
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


class KillPoint(Callback):
    """Records every training and pretraining epoch; SIGKILLs the process at the chosen point."""

    def on_epoch_begin(self, state, loop):
        if isinstance(loop.task, HarvestTask):
            event(event="pretrain_epoch", modality=loop.task.modality, epoch=state.epoch)
        else:
            event(event="train_epoch", epoch=state.epoch)

    def on_step_begin(self, state, loop):
        if not isinstance(loop.task, HarvestTask):
            die_if("epoch", epoch=state.epoch, step=state.step)

    def on_validation_begin(self, state, loop):
        if isinstance(loop.task, HarvestTask):  # in the validation pass of that modality's first epoch
            die_if("pretrain", modality=loop.task.modality)


class WithKillPoint:
    """The registered 'khar' trainer factory, with :class:`KillPoint` in ``args['callbacks']`` and a
    kill point before the test pass."""

    def __init__(self, factory):
        self.factory = factory

    def resolve(self):
        return self.factory.resolve()

    def __call__(self, args):
        args = type(args)(dict(args))
        args["callbacks"] = [KillPoint()]
        trainer = self.factory(args)
        do_test = trainer.do_test

        def killable_do_test(model, dataloader, mode="VAL", return_sample_results=False):
            if mode == "TEST":
                die_if("test")
            return do_test(model, dataloader, mode, return_sample_results)
        trainer.do_test = killable_do_test
        return trainer


EXTRA_TRAINERS["khar"] = WithKillPoint(EXTRA_TRAINERS["khar"])

row = MMSA_run("khar", spec["dataset"], config=spec["config"], **spec["kwargs"])
print("ROW " + json.dumps(row))
