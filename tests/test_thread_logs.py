"""One run per thread (issue 23): two threads each calling ``MMSA_run`` with their own folders get
two logs, each holding only its own run's lines."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import List, Optional

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE
from khar_mmsa.training.loop import Callback

TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_adapters=False, save_curves=False)
#: Seconds a run waits for the other at the meeting point before the test fails.
MEET_TIMEOUT_S = 120


class MeetAfterFirstEpoch(Callback):
    """Both runs wait here after their first epoch's line is logged (the trainer's own callbacks,
    the epoch log among them, come before a runner's): each logs while the other run is open.
    With ``after``, the run also waits after its last epoch until the other run has ended, so it
    logs its results after the other run closed its log."""

    def __init__(self, barrier: threading.Barrier, after: Optional[threading.Event] = None) -> None:
        self.barrier, self.after = barrier, after

    def on_epoch_end(self, state, loop) -> None:
        if state.epoch == 1:
            self.barrier.wait(MEET_TIMEOUT_S)
        if state.epoch == state.max_epochs and self.after is not None:
            assert self.after.wait(MEET_TIMEOUT_S), "the other run did not end"


def test_two_threads_running_mmsa_run_each_log_only_their_own_run(tmp_path: Path, tiny_features, tiny_bert,
                                                                  fast_mmsa) -> None:
    barrier, first_ended = threading.Barrier(2), threading.Event()
    errors: List[BaseException] = []
    seeds = (11, 22)  # seed 22's run ends after seed 11's
    mmsa_logger = logging.getLogger("MMSA")
    handlers, level = list(mmsa_logger.handlers), mmsa_logger.level
    mmsa_logger.setLevel(logging.WARNING)  # the user's setting, restored when the last run ends

    def one_run(seed: int) -> None:
        folder = tmp_path / f"run{seed}"
        meet = MeetAfterFirstEpoch(barrier, after=first_ended if seed == seeds[1] else None)
        config = dict(TINY_KHAR, pretrained=str(tiny_bert), featurePath=str(tiny_features("mosi")), callbacks=[meet])
        try:
            MMSA_run("khar", "mosi", config=config, seeds=[seed], gpu_ids=[0], num_workers=0, verbose_level=0,
                     model_save_dir=folder / "models", res_save_dir=folder / "results", log_dir=folder / "logs")
        except BaseException as exc:  # pragma: no cover - reported below
            barrier.abort()
            errors.append(exc)
        finally:
            if seed == seeds[0]:
                first_ended.set()

    threads = [threading.Thread(target=one_run, args=(seed,)) for seed in seeds]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(3 * MEET_TIMEOUT_S)
        assert not errors, errors
        assert mmsa_logger.level == logging.WARNING  # restored once, when the last run ended
    finally:
        mmsa_logger.setLevel(level)
    for seed, other in (seeds, seeds[::-1]):
        text = (tmp_path / f"run{seed}" / "logs" / "khar-mosi.log").read_text()
        assert f"EPOCH-(khar) seed {seed} epoch 1/2" in text and f"EPOCH-(khar) seed {seed} epoch 2/2" in text
        assert f"seed {other}" not in text, f"the log of seed {seed}'s run holds lines of seed {other}'s run"
        assert text.count(" khar on mosi ") == 1 and "Results saved to" in text  # logged to the end
    assert mmsa_logger.handlers == handlers  # every run's handlers removed
