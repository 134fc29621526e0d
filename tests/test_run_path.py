"""One KHaR run through ``MMSA_run``, watched from outside: the test split is read only by the final
evaluation of each seed, and the typed config is built once per run and passed down."""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Tuple

import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.config import KHaRConfig
from khar_mmsa.training.loop import Callback
from khar_mmsa.training.trainer import KHaRTrainer
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

SEEDS = [1, 2]
# two epochs, so that validation selects and early stopping has something to watch; adapter
# pretraining on SIMS (it has T/A/V labels) so that its loaders are watched too
CONFIG = dict(TINY_KHAR_SIZE, epochs=2, early_stop=2, pretrain_epochs=1, pretrain_adapters=True,
              save_curves=False, save_resume_state=False)


class FitBegins(Callback):
    """Marks where each training (pretraining of a modality, the main run) of a seed starts."""

    def __init__(self, events: List[Tuple[str, str]]) -> None:
        self.events = events

    def on_fit_begin(self, state: Any, loop: Any) -> None:
        self.events.append(("fit", type(loop.task).__name__))


@pytest.fixture(scope="module")
def watched_run(tiny_features, tiny_bert, tmp_path_factory) -> Dict[str, Any]:
    """One two-seed run with every item MMSA's datasets hand out, every evaluation the trainer runs,
    every training start and every KHaRConfig made recorded in order."""
    events: List[Tuple[str, str]] = []
    made = {"configs": 0, "from_mmsa_args": 0}
    dataset_class = importlib.import_module("MMSA.data_loader").MMDataset
    get_item, do_test = dataset_class.__getitem__, KHaRTrainer.do_test
    post_init, from_mmsa_args = KHaRConfig.__post_init__, KHaRConfig.from_mmsa_args.__func__

    def watched_get_item(self, index):
        events.append(("read", self.mode))
        return get_item(self, index)

    def watched_do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
        events.append(("evaluate", mode))
        return do_test(self, model, dataloader, mode, return_sample_results)

    def counted_post_init(self):
        made["configs"] += 1
        post_init(self)

    def counted_from_mmsa_args(cls, args, strict=True):
        made["from_mmsa_args"] += 1
        return from_mmsa_args(cls, args, strict)

    folder = tmp_path_factory.mktemp("watched")
    dirs = {k: folder / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    with pytest.MonkeyPatch.context() as mp:
        import torch
        mp.setattr(dataset_class, "__getitem__", watched_get_item)
        mp.setattr(KHaRTrainer, "do_test", watched_do_test)
        mp.setattr(KHaRConfig, "__post_init__", counted_post_init)
        mp.setattr(KHaRConfig, "from_mmsa_args", classmethod(counted_from_mmsa_args))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            row = MMSA_run("khar", "sims", config=dict(CONFIG, pretrained=str(tiny_bert),
                                                       featurePath=str(tiny_features("sims")),
                                                       callbacks=[FitBegins(events)]),
                           seeds=SEEDS, gpu_ids=[], num_workers=0, verbose_level=0, **dirs)
        finally:
            torch.set_num_threads(threads)
    return {"events": events, "made": made, "row": row}


def test_the_test_split_is_read_only_by_each_seeds_final_evaluation(watched_run):
    events = watched_run["events"]
    assert watched_run["row"]["seeds"] == "1 2"
    finals = [i for i, e in enumerate(events) if e == ("evaluate", "TEST")]
    assert len(finals) == len(SEEDS), "one final evaluation per seed"
    # what was going on when each test item was read: the last training start or evaluation before it
    for i, event in enumerate(events):
        if event == ("read", "test"):
            last = next(e for e in reversed(events[:i]) if e[0] in ("fit", "evaluate"))
            assert last == ("evaluate", "TEST"), f"a test item read during {last} (event {i})"
    # and the watching works: training and validation read their splits, each final evaluation the test split
    assert ("read", "train") in events and ("read", "valid") in events
    assert ("fit", "HarvestTask") in events and ("fit", "KHaRTrainer") in events
    for start, end in zip(finals, finals[1:] + [len(events)]):
        assert events[start + 1] == ("read", "test")


def test_the_typed_config_is_built_once_per_run_and_passed_down(watched_run):
    """MMSA's args become a KHaRConfig once (the check before any data is read); the shapes the
    loader reads from the data make one more (checked again: they change the memory estimate); every
    seed's model, trainer, pretraining and criterion share it."""
    assert watched_run["made"] == {"configs": 2, "from_mmsa_args": 1}
