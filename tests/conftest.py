"""Shared pytest fixtures for khar-mmsa.

Everything here is a *test fixture*: tiny planted datasets, a tiny random BERT and scratch folders,
sized so that real ``MMSA_run`` calls finish in seconds on two CPU cores.  Add new shared fixtures
below, one section per topic.
"""
from __future__ import annotations

import importlib
import os
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest

# No network on CI or here: transformers must fail fast instead of retrying a hub download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# No progress bars in test output (KHaR's and tqdm's own switch; a test that wants bars unsets it).
os.environ.setdefault("TQDM_DISABLE", "1")
# Under pytest-xdist each worker gets its share of the cores for torch's threads (read when torch
# starts): two workers with a thread per core each would run twice as many threads as cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                     // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


# ---- parallel runs ---------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """pyproject.toml's addopts ask pytest-xdist for two workers; without pytest-xdist (not
    installed, or ``-p no:xdist``) the suite runs in one process and those options are ignored."""
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist-absent", "pytest-xdist is not installed: its options are ignored")
    group.addoption("--numprocesses", dest="numprocesses", default=None,
                    help="ignored without pytest-xdist (pip install -e '.[test]' installs it)")
    group.addoption("--dist", dest="dist", default="no", help="ignored without pytest-xdist")


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test module is imported by now (torch, transformers and MMSA with them): what they
    allocated is moved out of the garbage collector's reach (``gc.freeze``), so the ``gc.collect()``
    the runner and MMSA's ``MMSA_run`` make after each seed walks only what the tests create (about
    0.26 s of CPU a call otherwise).  Objects made later are collected as usual."""
    import gc
    gc.collect()
    gc.freeze()


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): tests that share a worker under pytest-xdist")

# ---- tiny data -------------------------------------------------------------------------------
TINY_SIZES = (24, 8, 8)          # train / valid / test samples
TINY_SEQ_LENS = (8, 10, 12)      # text tokens, audio frames, vision frames
TINY_BERT_HIDDEN = 32
#: KHaR at a size that trains on the tiny data in well under a second per epoch; each test module
#: adds its own epochs, early stopping and pretraining settings.
TINY_KHAR_SIZE = dict(modal_dim=16, encoder_layers=1, encoder_heads=2, encoder_ff_dim=16, text_adapters=1,
                      av_adapters=1, adapter_heads=2, adapter_inner_layers=1, expert_hidden_dim=16,
                      fine_grained_dim=8, fusion_hidden_dim=16, latent_dim=8, batch_size=8)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local 4-layer, 32-wide random BERT folder (model + WordPiece vocab)."""
    from khar_mmsa.model.text_encoders import make_tiny_bert
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), hidden_size=TINY_BERT_HIDDEN)


@pytest.fixture(scope="session")
def tiny_features(tmp_path_factory: pytest.TempPathFactory,
                  tiny_bert: Path) -> Callable[[str], Path]:
    """``tiny_features('mosi')`` -> path of a tiny planted MMSA pickle (real feature widths,
    ``TINY_SIZES`` samples, ``TINY_SEQ_LENS`` lengths, token ids of :func:`tiny_bert`)."""
    from khar_mmsa.data.planted import make_planted_dataset
    folder = tmp_path_factory.mktemp("features")
    made: Dict[str, Path] = {}

    def make(dataset: str) -> Path:
        if dataset not in made:
            path = folder / f"{dataset}-tiny.pkl"
            make_planted_dataset(path, dataset=dataset, sizes=TINY_SIZES, seed=0,
                                 seq_lens=TINY_SEQ_LENS, tokenizer=tiny_bert)
            made[dataset] = path
        return made[dataset]
    return make


# ---- MMSA runs -------------------------------------------------------------------------------
@pytest.fixture
def mmsa_dirs(tmp_path: Path) -> Dict[str, Path]:
    """``model_save_dir`` / ``res_save_dir`` / ``log_dir`` for ``MMSA_run``, under ``tmp_path``."""
    return {name: tmp_path / name for name in ("model_save_dir", "res_save_dir", "log_dir")}


@pytest.fixture
def mmsa_run_kwargs(mmsa_dirs: Dict[str, Path]) -> Dict[str, Any]:
    """Keyword arguments for a quick, quiet, single-seed CPU ``MMSA_run``."""
    return dict(gpu_ids=[0], seeds=[1], num_workers=0, verbose_level=0, **mmsa_dirs)


@pytest.fixture
def fast_mmsa(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Test speed only: skip the ``time.sleep(1)`` MMSA's ``_run`` does after every seed, and use
    one torch thread (tiny models on a busy 2-core machine run ~8x faster than with two)."""
    import torch
    run = importlib.import_module("MMSA.run")
    monkeypatch.setattr(run, "time", types.SimpleNamespace(sleep=lambda s: None, time=time.time))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def unregistered() -> Iterator[None]:
    """Run a test with khar_mmsa's MMSA patches removed; restore the previous state after.  MMSA
    is imported first (khar_mmsa registers as it is imported), so the state restored is the one a
    test that ran alone would leave too."""
    import logging
    importlib.import_module("MMSA.run")
    from khar_mmsa import registration as mmsa_patches
    mmsa_logger = logging.getLogger("MMSA")
    handlers = list(mmsa_logger.handlers)
    was = mmsa_patches.is_registered()
    mmsa_patches.unregister()
    try:
        yield
    finally:
        for handler in [h for h in mmsa_logger.handlers if h not in handlers]:
            mmsa_logger.removeHandler(handler)  # unpatched MMSA_run leaves its two behind
            handler.close()
        if was:
            mmsa_patches.register()


@pytest.fixture(scope="session")
def labels(tmp_path_factory) -> Path:
    """A small MMSA-style label.csv (benchmarks' --labels): 16/8/8 clips with words of the tiny BERT's
    vocabulary."""
    import random
    rng = random.Random(0)
    words = "good bad fine movie really not great plot acting boring".split()
    lines = ["id,text,label,mode"]
    for split, n in (("train", 16), ("valid", 8), ("test", 8)):
        for i in range(n):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            lines.append(f"clip{split}{i},{text},{rng.uniform(-3, 3):.2f},{split}")
    path = tmp_path_factory.mktemp("labels") / "label.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _module_child(module: str, argv: list, errors: str, cwd: Any, env: Any, fresh_mmsa_logger: bool) -> None:
    """The child of :func:`run_module_in_fork`: working folder and environment, standard error (fd 2 and
    ``sys.stderr``) to ``errors``, then ``module`` run as ``python -m`` runs it (its ``SystemExit`` code
    is the child's exit code; an uncaught exception's traceback goes to ``errors``, exit code 1)."""
    import logging
    import runpy
    import sys
    if cwd is not None:
        os.chdir(cwd)
    os.environ.update(env or {})
    fd = os.open(errors, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = open(2, "w", closefd=False)
    sys.stdout = open(os.devnull, "w")
    if fresh_mmsa_logger:  # as in a fresh interpreter
        logging.getLogger("MMSA").handlers.clear()
    if not hasattr(sys.modules.get(module), "__path__"):  # a module, not a package: run as __main__,
        sys.modules.pop(module, None)                     # not found imported already
    sys.argv = [module.rpartition(".")[2], *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def run_module_in_fork(module: str, argv: list, errors: Path, *, cwd: Any = None, env: Any = None,
                       fresh_mmsa_logger: bool = False, timeout: float = 600) -> tuple:
    """``python -m <module> <argv>`` in a forked child of the test process (its heavy imports done once,
    here, as in test_sweep's killed driver): a crash there is the child's exit code, not pytest's.
    Returns ``(exit code, standard error as text)``."""
    import multiprocessing
    child = multiprocessing.get_context("fork").Process(target=_module_child, args=(
        module, list(argv), str(errors), None if cwd is None else str(cwd), env, fresh_mmsa_logger))
    child.start()
    child.join(timeout=timeout)
    if child.is_alive():  # pragma: no cover - the caller's assertions fail on the exit code
        child.kill()
        child.join(timeout=30)
    return child.exitcode, Path(errors).read_text() if Path(errors).is_file() else ""
