"""Pickle bombs at the user's door: each shape a small crafted feature pickle, refused by
``MMSA_run('khar')``, ``khar_mmsa.run('tfn')`` (our runner for MMSA's model) and
``MMSA_test('khar')`` / ``khar_mmsa.test`` with a clear error, and without the allocation it asks
for (tracemalloc's peak, numpy's arrays included, stays far below it); MMSA's own ``MMSA_run`` for
its own models reads as MMSA does.  Also: a checkpoint's ``.pth.json`` cannot lift the memory
guard.  (``importlib.reload`` of MMSA's modules is no promise: it gets MMSA's code, see
docs/mmsa-changes.md.)"""
from __future__ import annotations

import json
import pickle
import pickletools
import re
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct  # numpy 2; pickled by name

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.io.pickles import PickleSizeError, UnsafePickleError
from MMSA import MMSA_run, MMSA_test
from conftest import TINY_KHAR_SIZE, TINY_SEQ_LENS, run_module_in_fork

REPO = Path(__file__).resolve().parents[1]

MiB = 2 ** 20
#: What each bomb asks numpy or Python to allocate (at load, or when validation / MMSA stack it).
ASKED = 512 * MiB
#: The most a refused call may allocate (config, logging, the refused load itself); far below ASKED.
PEAK_LIMIT = 64 * MiB
#: An array referenced again and again: 256 KiB, so that ASKED takes 2,048 references.
BLOCK = np.ones((64, 1024), dtype=np.float32)
REFS = ASKED // BLOCK.nbytes


class Reduces:
    """Pickles as whatever ``__reduce__`` tuple it is given (a crafted payload)."""

    def __init__(self, *reduce_value: Any) -> None:
        self.reduce_value = reduce_value

    def __reduce__(self):
        return self.reduce_value


# --- crafting ---------------------------------------------------------------------------------
def _text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw  # BINUNICODE


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _audio_only(value_ops: bytes) -> bytes:
    """Protocol-2 opcodes of ``{'train': {'audio': <value_ops>}}``."""
    return (b"\x80\x02}" + _text("train") + b"}" + _text("audio") + value_ops + b"ss.")


def _ndarray_args() -> bytes:
    """``((n,), 'f4')``: numpy.ndarray's arguments for ASKED bytes."""
    return b"(" + b"(" + _int(ASKED // 4) + b"t" + _text("f4") + b"t"


def newobj_bomb(features: dict) -> bytes:
    """NEWOBJ: ``numpy.ndarray.__new__(numpy.ndarray, (n,), 'f4')``."""
    return _audio_only(b"cnumpy\nndarray\n" + _ndarray_args() + b"\x81")


def newobj_ex_bomb(features: dict) -> bytes:
    """NEWOBJ_EX (protocol 4): the same with keyword arguments ``{}``."""
    return _audio_only(b"cnumpy\nndarray\n" + _ndarray_args() + b"}" + b"\x92")


def reduce_bomb(features: dict) -> bytes:
    """REDUCE: ``numpy.ndarray((n,), 'f4')`` called directly."""
    return pickle.dumps({"train": {"audio": Reduces(np.ndarray, ((ASKED // 4,), "f4"))}}, protocol=4)


def reconstruct_bomb(features: dict) -> bytes:
    """numpy's ``_reconstruct(ndarray, (n,), 'b')``: allocates the shape at once."""
    return pickle.dumps({"train": {"audio": Reduces(_reconstruct, (np.ndarray, (ASKED,), b"b"))}}, protocol=4)


def void_dtype_bomb(features: dict) -> bytes:
    """A void dtype of 1 MiB per element: ``_reconstruct`` of 512 elements."""
    return pickle.dumps({"train": {"audio": Reduces(_reconstruct, (np.ndarray, (ASKED // MiB,), np.dtype(("V", MiB))))}},
                        protocol=4)


def build_bomb(features: dict) -> bytes:
    """BUILD: ``ndarray.__setstate__`` of an object array allocates its pointers before reading."""
    state = (1, (ASKED // 8,), np.dtype("O"), False, [1])
    return pickle.dumps({"train": {"audio": Reduces(_reconstruct, (np.ndarray, (0,), b"b"), state)}}, protocol=4)


def _with_labels(features: dict, labels: Any, protocol: int = 4) -> bytes:
    """The real tiny feature file with train's ``regression_labels`` replaced: validation's
    ``np.asarray`` and MMSA's ``np.array`` stack whatever that list references."""
    data = {split: dict(features[split]) for split in ("train", "valid", "test")}
    data["train"]["regression_labels"] = labels
    return pickle.dumps(data, protocol=protocol)


def get_array_bomb(features: dict) -> bytes:
    """BINGET of one array, REFS times (what the old check already counted)."""
    return _with_labels(features, [BLOCK] * REFS)


def frombuffer_bomb(features: dict) -> bytes:
    """An array made by numpy's ``_frombuffer`` (protocol 5), referenced REFS times."""
    return _with_labels(features, [BLOCK] * REFS, protocol=5)


def dup_bomb(features: dict) -> bytes:
    """A list holding one array and REFS - 1 DUPs (the BINGETs of a protocol-2 pickle rewritten)."""
    raw = _with_labels(features, [BLOCK] * REFS, protocol=2)
    ops = list(pickletools.genops(raw))
    gets = [arg for op, arg, _ in ops if op.name in ("BINGET", "LONG_BINGET")]
    block_memo = max(set(gets), key=gets.count)
    out, last = bytearray(), 0
    for i, (op, arg, pos) in enumerate(ops):
        end = ops[i + 1][2] if i + 1 < len(ops) else len(raw)
        if op.name in ("BINGET", "LONG_BINGET") and arg == block_memo:
            out += raw[last:pos] + b"2"  # DUP
            last = end
    out += raw[last:]
    assert bytes(out).count(b"2") >= REFS - 1
    return bytes(out)


def get_container_bomb(features: dict) -> bytes:
    """BINGET of a list that holds the array: ``[[block]] * REFS``."""
    return _with_labels(features, [[BLOCK]] * REFS)


def row_bomb(features: dict) -> bytes:
    """``[row] * 2000``, ``row`` a list of lists of floats (the issue's 9.6 MiB -> 14.9 GiB)."""
    row = [[0.5] * 128 for _ in range(ASKED // 2000 // 8 // 128)]
    return _with_labels(features, [row] * 2000)


def nesting_bomb(features: dict) -> bytes:
    """Lists nested 150 deep: whatever walks them meets Python's recursion limit."""
    deep: list = [0.0]
    for _ in range(150):
        deep = [deep]
    return _with_labels(features, deep)


# --- round 5 (issue 31) -------------------------------------------------------------------------
from numpy._core.multiarray import scalar as _scalar  # noqa: E402  (numpy 2; pickled by name)

VOID = 1610612736  # 1.5 GiB per element


def scalar_void_bomb(features: dict) -> bytes:
    """numpy's ``scalar`` with a 1.5 GiB void dtype and no data (~70 bytes of opcodes)."""
    return pickle.dumps({"train": {"audio": Reduces(_scalar, (np.dtype(f"V{VOID}"), b""))}}, protocol=2)


def bytes_of_numpy_int_bomb(features: dict) -> bytes:
    """``bytes(np.int64(n))``: the round-4 size check looked only at Python ints."""
    return pickle.dumps({"train": {"audio": Reduces(bytes, (np.int64(VOID),))}}, protocol=4)


def bytearray_of_numpy_int_bomb(features: dict) -> bytes:
    return pickle.dumps({"train": {"audio": Reduces(bytearray, (np.int64(VOID),))}}, protocol=4)


def object_state_bomb(features: dict) -> bytes:
    """An object array's state of shape (10,) with an empty list: numpy read past it (SIGSEGV)."""
    state = (1, (10,), np.dtype("O"), False, [])
    return pickle.dumps({"train": {"audio": Reduces(_reconstruct, (np.ndarray, (0,), b"b"), state)}}, protocol=4)


def deep_arguments_bomb(features: dict) -> bytes:
    """200,000 TUPLE1s inside a call's arguments (round 4: a bare RecursionError)."""
    return _audio_only(b"cnumpy._core.multiarray\n_reconstruct\n" + b"N" + b"\x85" * 200000 + b"\x85R")


def long_string_refs_bomb(features: dict) -> bytes:
    """200,000 references to one 64-character string: np.asarray makes 256 bytes of each (round 4:
    charged a byte each, 118x the file)."""
    return _with_labels(features, ["x" * 64] * 200000)


def float_list_refs_bomb(features: dict) -> bytes:
    """References to one list of 63 floats (round 4: 241x the file once stacked)."""
    return _with_labels(features, [[0.5] * 63] * 20000)


BOMBS: Dict[str, Callable[[dict], bytes]] = {
    "scalar void": scalar_void_bomb, "bytes(np.int64)": bytes_of_numpy_int_bomb,
    "bytearray(np.int64)": bytearray_of_numpy_int_bomb, "object state": object_state_bomb,
    "deep arguments": deep_arguments_bomb, "string references": long_string_refs_bomb,
    "float-list references": float_list_refs_bomb,
    "REDUCE ndarray": reduce_bomb, "NEWOBJ": newobj_bomb, "NEWOBJ_EX": newobj_ex_bomb,
    "BUILD": build_bomb, "_reconstruct": reconstruct_bomb, "void dtype": void_dtype_bomb,
    "frombuffer": frombuffer_bomb, "GET of an array": get_array_bomb, "DUP list": dup_bomb,
    "GET of a container": get_container_bomb, "[row]*2000": row_bomb, "deep nesting": nesting_bomb,
}
#: The phrase each refusal's message carries (besides the file's name).
EXPECTED = {"scalar void": f"asks for dtype 'V{VOID}'", "bytes(np.int64)": "calls bytes(np.int64(1610612736),)",
            "bytearray(np.int64)": "calls bytearray(np.int64(1610612736),)",
            "object state": "gives an object array of shape (10,) a list of length 0",
            "deep arguments": "nest more than 100 deep", "string references": "a list that stacks (np.asarray) to",
            "float-list references": "a second reference to a list of 63 item(s)","REDUCE ndarray": "REDUCE at byte", "NEWOBJ": "NEWOBJ at byte", "NEWOBJ_EX": "NEWOBJ_EX at byte",
            "BUILD": "BUILD at byte", "_reconstruct": "numpy's _reconstruct", "void dtype": "asks for dtype 'V1048576'",
            "frombuffer": "a list that stacks (np.asarray) to 250.0 MiB",
            "GET of an array": "a list that stacks (np.asarray) to 250.0 MiB",
            "DUP list": "a list that stacks (np.asarray) to 250.0 MiB", "GET of a container": "a second reference to a list",
            "[row]*2000": "a second reference to a list", "deep nesting": "nest more than 100 deep"}


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def features(tiny_features) -> dict:
    with open(tiny_features("mosi"), "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory, features) -> Dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    for name, make in BOMBS.items():
        path = folder / (re.sub(r"[^\w-]", "", name.replace(" ", "-").replace("*", "x")) + ".pkl")
        path.write_bytes(make(features))
        assert path.stat().st_size < ASKED / 50, (name, path.stat().st_size)  # small file, big ask
        files[name] = path
    return files


@pytest.fixture(scope="module")
def untrained_khar(tmp_path_factory, tiny_bert) -> Path:
    """A KHaR checkpoint (random weights) and its ``.pth.json``, as the trainer writes them."""
    import torch

    from khar_mmsa.config import KHaRConfig
    from khar_mmsa.model.khar import KHaR
    folder = tmp_path_factory.mktemp("untrained")
    cfg = KHaRConfig(**dict(TINY_KHAR_SIZE, pretrained=str(tiny_bert), seq_lens=list(TINY_SEQ_LENS),
                            feature_dims=[768, 5, 20]))
    weights = folder / "khar-mosi.pth"
    torch.save({f"Model.{k}": v for k, v in KHaR(cfg).state_dict().items()}, weights)
    Path(f"{weights}.json").write_text(json.dumps({"model_name": "khar", "dataset_name": "mosi",
                                                   "config": cfg.architecture()}))
    return weights


def _peak(call: Callable[[], Any]) -> tuple:
    """(the exception ``call`` raised, the peak traced allocation during it, in bytes)."""
    tracemalloc.start()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned for the test to check
        raised = exc
    else:  # pragma: no cover - the test fails on it
        raised = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return raised, peak


def _doors(name: str, path: Path, tmp: Path, tiny_bert: Path, weights: Path) -> Dict[str, Callable[[], Any]]:
    """Our doors: ``MMSA_run`` / ``MMSA_test`` for 'khar' (routed to us), and our runner and test
    for MMSA's own models (``khar_mmsa.run`` / ``khar_mmsa.test``).  MMSA's own ``MMSA_run('tfn')``
    reads its file as MMSA does (test below)."""
    dirs = {k: tmp / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    run = dict(seeds=[1], gpu_ids=[0], num_workers=0, verbose_level=0, **dirs)
    return {
        "MMSA_run('khar')": lambda: MMSA_run("khar", "mosi", custom_feature=str(path),
                                             config=dict(TINY_KHAR_SIZE, pretrained=str(tiny_bert)), **run),
        "khar_mmsa.run('tfn')": lambda: khar_mmsa.run("tfn", "mosi", custom_feature=str(path), **run),
        "MMSA_test('khar')": lambda: MMSA_test("khar", str(weights), str(path), gpu_id=-1),
        "khar_mmsa.test(tfn config)": lambda: khar_mmsa.test({"model_name": "tfn", "dataset_name": "mosi"},
                                                             str(weights), str(path), gpu_id=-1),
    }


DOORS = ["MMSA_run('khar')", "khar_mmsa.run('tfn')", "MMSA_test('khar')", "khar_mmsa.test(tfn config)"]


@pytest.mark.parametrize("door", DOORS)
@pytest.mark.parametrize("bomb", list(BOMBS))
def test_bomb_is_refused_at_the_door_without_allocating(bomb, door, bomb_files, tmp_path, tiny_bert,
                                                        untrained_khar, fast_mmsa):
    path = bomb_files[bomb]
    raised, peak = _peak(_doors(bomb, path, tmp_path, tiny_bert, untrained_khar)[door])
    assert isinstance(raised, (PickleSizeError, UnsafePickleError)), repr(raised)
    msg = str(raised)
    assert msg.startswith(f"{path}: ") and EXPECTED[bomb] in msg, msg
    assert "\n" not in msg
    assert peak < PEAK_LIMIT, f"{door} allocated {peak / MiB:.0f} MiB for {bomb}"


def test_the_same_data_without_the_bomb_loads(features, tmp_path, tiny_bert, fast_mmsa):
    """The references are what is refused: one array per sample is a feature file."""
    from khar_mmsa.io.pickles import load_pickle
    path = tmp_path / "fine.pkl"
    path.write_bytes(_with_labels(features, [np.float32(0.5)] * len(features["train"]["regression_labels"])))
    assert load_pickle(path)["train"]["regression_labels"][0] == np.float32(0.5)


def test_trust_pickle_lets_our_runner_read_a_trusted_file(bomb_files, tmp_path, fast_mmsa, caplog):
    """khar_mmsa.run('tfn', config={'trust_pickle': True}): the file is read with plain pickle (the
    nesting the budget refuses is read, as the user asked), with a warning."""
    import logging

    dirs = {k: tmp_path / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    caplog.set_level(logging.WARNING, logger="MMSA")
    with pytest.raises(Exception) as ei:
        khar_mmsa.run("tfn", "mosi", custom_feature=str(bomb_files["deep nesting"]), config={"trust_pickle": True},
                      seeds=[1], gpu_ids=[0], num_workers=0, verbose_level=0, **dirs)
    assert not isinstance(ei.value, (PickleSizeError, UnsafePickleError))  # read, then the check fails on it
    assert any("plain pickle (trust_pickle=True)" in r.getMessage() for r in caplog.records)


def test_mmsa_own_mmsa_run_reads_its_file_as_mmsa_does(bomb_files, tmp_path, fast_mmsa):
    """A plug-in adds; it does not alter: MMSA's own MMSA_run('tfn') after ``import khar_mmsa`` reads
    the feature file with MMSA's plain ``pickle.load`` (the budget's refusal is ours, at our doors)."""
    dirs = {k: tmp_path / k for k in ("model_save_dir", "res_save_dir", "log_dir")}
    with pytest.raises(Exception) as ei:
        MMSA_run("tfn", "mosi", custom_feature=str(bomb_files["deep nesting"]), seeds=[1], gpu_ids=[0],
                 num_workers=0, verbose_level=0, **dirs)
    assert not isinstance(ei.value, (PickleSizeError, UnsafePickleError)), repr(ei.value)


# --- the checkpoint's .pth.json cannot raise a guard ---------------------------------------------
def _json_with(weights: Path, tmp_path: Path, **extra: Any) -> Path:
    import shutil
    copy = tmp_path / "copy.pth"
    shutil.copy(weights, copy)
    saved = json.loads(Path(f"{weights}.json").read_text())
    saved["config"].update(extra)  # an old-format file carries every field
    Path(f"{copy}.json").write_text(json.dumps(saved))
    return copy


def _one_sample(features: dict, tmp_path: Path) -> Path:
    d = features["test"]
    path = tmp_path / "one.pkl"
    path.write_bytes(pickle.dumps({k: d[k][0] for k in ("text_bert", "audio", "vision")}))
    return path


def test_pth_json_cannot_lift_the_users_memory_guard(untrained_khar, features, tmp_path):
    weights = _json_with(untrained_khar, tmp_path, max_model_memory_gib=1e9)
    sample = _one_sample(features, tmp_path)
    with pytest.raises(ValueError, match=r"max_model_memory_gib=1e-06") as ei:
        MMSA_test({"model_name": "khar", "max_model_memory_gib": 1e-6}, str(weights), str(sample), gpu_id=-1)
    assert str(ei.value).startswith(f"{weights}.json: ")


def test_pth_json_guard_is_ignored_for_the_default(untrained_khar, features, tmp_path):
    from khar_mmsa.config import KHaRConfig
    from khar_mmsa.prediction.predict import load_model
    weights = _json_with(untrained_khar, tmp_path, max_model_memory_gib=1e9)
    assert isinstance(MMSA_test("khar", str(weights), str(_one_sample(features, tmp_path)), gpu_id=-1), float)
    assert load_model(weights, {}, "cpu").cfg.max_model_memory_gib == KHaRConfig().max_model_memory_gib
    assert load_model(weights, {"max_model_memory_gib": 7.0}, "cpu").cfg.max_model_memory_gib == 7.0
# --- the budget counts bytes read, not the file's size (issue 31) ---------------------------------
@pytest.fixture(scope="module")
def sparse_bomb(tmp_path_factory, features) -> Path:
    """The DUP list bomb at the start of a 1 TiB sparse file (a few hundred KB on disk): round 4's
    budget was st_size, so everything fit."""
    path = tmp_path_factory.mktemp("sparse") / "sparse.pkl"
    with open(path, "wb") as f:
        f.write(dup_bomb(features))
        f.truncate(2 ** 40)
    if path.stat().st_blocks * 512 > 64 * MiB:  # pragma: no cover - a file system without holes
        pytest.skip("this file system does not make sparse files")
    return path


@pytest.mark.parametrize("door", ["MMSA_run('khar')", "MMSA_test('khar')"])
def test_a_sparse_terabyte_does_not_widen_the_budget(door, sparse_bomb, tmp_path, tiny_bert, untrained_khar,
                                                     fast_mmsa):
    raised, peak = _peak(_doors("sparse", sparse_bomb, tmp_path, tiny_bert, untrained_khar)[door])
    assert isinstance(raised, PickleSizeError), repr(raised)
    assert str(raised).startswith(f"{sparse_bomb}: APPENDS at byte ") and "read so far" in str(raised), str(raised)
    assert peak < PEAK_LIMIT, f"{door} allocated {peak / MiB:.0f} MiB"


# --- the command line (issue 31's crash and allocation cases) -------------------------------------
def test_the_command_line_refuses_a_short_object_state_in_one_line(bomb_files, tmp_path, tiny_bert):
    """``python -m khar_mmsa --custom-feature`` with the short object-array state (a SIGSEGV in round
    4; the void-dtype scalar and the rest reach the same loader, tested at the API doors above):
    exit status 1, one line naming the file, no traceback."""
    path = str(bomb_files["object state"])
    errors = tmp_path / "stderr.txt"
    argv = ["-m", "khar", "-d", "mosi", "-s", "1", "-n", "0", "--threads", "1", "--custom-feature", path,
            "--set", f"pretrained={tiny_bert}", "--model-save-dir", path + ".m", "--res-save-dir", path + ".r",
            "--log-dir", path + ".l"]
    # ``python -m khar_mmsa <argv>`` in a forked child (MMSA imported already): a crash there (round 4's
    # SIGSEGV) is the child's exit code, not pytest's
    exitcode, err = run_module_in_fork("khar_mmsa", argv, errors)
    err = err.strip()
    last = err.splitlines()[-1] if err else ""  # the log's lines come before it
    assert exitcode == 1 and "Traceback" not in err, (exitcode, err)
    assert last.startswith(f"python -m khar_mmsa: error: {path}: ") and EXPECTED["object state"] in last, last


