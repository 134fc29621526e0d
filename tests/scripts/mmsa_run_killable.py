"""A server that runs ``MMSA_run('khar', ...)`` in forked children that can SIGKILL themselves.

Test-only (used by tests/test_resume.py).  The server imports khar_mmsa and MMSA once (the slow
part of a start), then reads one JSON spec per line on stdin and, for each, forks a child that
runs one ``MMSA_run`` and answers one JSON line on stdout: ``{"returncode": 0, ...}`` when the run
finished, ``{"returncode": -9, ...}`` when it was killed (as :mod:`subprocess` reports a signal),
with ``"timed_out": true`` when the server killed it after ``RUN_TIMEOUT_S``.
The children start from the freshly imported server, never from one another, so each is a new
process as a separate ``python`` run would be.  A spec::

    {"dataset": "mosi", "config": {...}, "kwargs": {...MMSA_run keyword arguments...},
     "events": "<file>", "row": "<file>", "stderr": "<file>",
     "kill": null | {"seed": 1, "at": "epoch", "epoch": 2, "step": 2}
                  | {"seed": 2, "at": "pretrain", "modality": "a"} | {"seed": 1, "at": "test"}}

Every training epoch and pretraining epoch of every seed is appended to ``events`` (JSON lines),
so a test can tell what was trained again after a kill; the returned row is written as JSON to
``row``, the child's standard error to ``stderr``.  The kill point is a training callback, given to
the trainer in ``config['callbacks']`` (which the runner hands to KHaRTrainer), and a kill point
before the test pass wraps ``KHaRTrainer.do_test`` in the child; nothing in khar_mmsa knows.  HOME, TMPDIR and the working folder are the server's (the test sets them).
"""
import json
import os
import signal
import sys
import time
import traceback
import types

import torch

torch.set_num_threads(1)  # same arithmetic in every process of a test

import khar_mmsa  # noqa: E402,F401  (registers 'khar')
import MMSA.run  # noqa: E402
from khar_mmsa.training.loop import Callback  # noqa: E402
from khar_mmsa.training.pretrain import HarvestTask  # noqa: E402
from khar_mmsa.training.trainer import KHaRTrainer  # noqa: E402
from MMSA import MMSA_run  # noqa: E402

MMSA.run.time = types.SimpleNamespace(sleep=lambda s: None, time=time.time)  # skip MMSA's 1 s nap
try:  # what the runs' curves PNG needs, imported once here (MPLCONFIGDIR is the test's folder)
    import matplotlib.backends.backend_agg  # noqa: E402,F401
    import matplotlib.figure  # noqa: E402,F401
except ImportError:  # matplotlib is optional: the runs then warn and draw nothing
    pass
RUN_TIMEOUT_S = 600


def run_one(spec):
    """The child: one MMSA_run with the spec's kill point; its row written to ``spec['row']``."""
    kill = spec.get("kill") or {}

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

    do_test = KHaRTrainer.do_test

    def killable_do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        if mode == "TEST":
            die_if("test")
        return do_test(self, model, dataloader, mode, return_sample_results)
    KHaRTrainer.do_test = killable_do_test  # this child only: it runs one MMSA_run and exits

    row = MMSA_run("khar", spec["dataset"], config=dict(spec["config"], callbacks=[KillPoint()]), **spec["kwargs"])
    with open(spec["row"], "w", encoding="utf-8") as f:
        json.dump(row, f)


def serve():
    for line in sys.stdin:
        spec = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the loop
            code = 1
            try:
                err = os.open(spec["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(err, 2)
                sys.stdin.close()
                run_one(spec)
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        deadline, timed_out = time.monotonic() + RUN_TIMEOUT_S, False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.02)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code, "timed_out": timed_out}), flush=True)


if __name__ == "__main__":
    print(json.dumps({"ready": True}), flush=True)
    serve()
    # stdin closed, every child waited for: exit without the interpreter's seconds-long teardown of
    # torch, transformers and MMSA (nothing is left to flush but stdout)
    sys.stdout.flush()
    os._exit(0)
