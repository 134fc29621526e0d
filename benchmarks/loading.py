"""What checking a feature pickle costs: restricted unpickling, validation and the content hash.

    python -m benchmarks.loading --quick    # ~1.1 GB pickle (MOSEI's sample counts, MOSI's widths)
    python -m benchmarks.loading --full     # MOSEI's real shapes (~6 GB on disk; needs ~20 GB RAM)

An MMSA-style pickle (``text_bert``, float32 ``audio``/``vision``, lengths, labels, ids, raw text
for train/valid/test) is written to the work folder, then each step is timed ``--repeats`` times
(the best is reported; the file is in the page cache after the first read, so these are CPU
costs, not disk costs):

* ``pickle.load`` -- what MMSA itself does (C unpickler, no checks);
* ``khar_mmsa.io.pickles.load_pickle`` -- the restricted unpickler, every allocation budgeted
  (Python's pure-Python unpickler, needed to check ``ndarray.__setstate__`` before it allocates);
* ``khar_mmsa.data.validation.validate_features`` on the loaded dict;
* ``khar_mmsa.io.files.file_digest`` -- SHA-256 of the file (the key of saved adapters and resume
  files), its per-process cache cleared before each timing; once per run.

A second table measures the memory multiple the loader promises (docs/reliability.md): for each
adversarial file of :func:`adversarial_files` (what Python allocates most for per byte of pickle),
tracemalloc's peak while ``load_pickle_stream`` reads or refuses it, against the bytes it read.
"""
from __future__ import annotations

import argparse
import io
import logging
import pickle
import struct
import tracemalloc
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from khar_mmsa.mmsa_conventions import SPLITS

from . import common
from .common import Timer

logger = logging.getLogger("MMSA")

# samples (train, valid, test) and shapes (text tokens, audio frames x width, vision frames x width)
SETTINGS = {
    "smoke": dict(sizes=(40, 10, 10), text=8, audio=(10, 5), vision=(12, 20), repeats=1, adversarial=2 ** 12),
    "quick": dict(sizes=(16326, 1871, 4659), text=50, audio=(375, 5), vision=(500, 20), repeats=2,
                  adversarial=2 ** 22),
    "full": dict(sizes=(16326, 1871, 4659), text=50, audio=(500, 74), vision=(500, 35), repeats=2,
                 adversarial=2 ** 24),
}


def make_pickle(path: Path, sizes: Sequence[int], text: int, audio: Sequence[int],
                vision: Sequence[int], seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    data: Dict[str, Any] = {}
    for split, n in zip(SPLITS, sizes):
        tb = np.zeros((n, 3, text))
        tb[:, 0] = rng.integers(100, 30000, size=(n, text))
        tb[:, 1] = 1
        data[split] = {
            "text_bert": tb,
            "audio": rng.standard_normal((n, *audio), dtype=np.float32),
            "vision": rng.standard_normal((n, *vision), dtype=np.float32),
            "audio_lengths": [int(x) for x in rng.integers(1, audio[0] + 1, size=n)],
            "vision_lengths": rng.integers(1, vision[0] + 1, size=n),
            "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
            "id": np.array([f"{split}_{i}$_${i % 9}" for i in range(n)]),
            "raw_text": [f"sentence number {i} of {split}" for i in range(n)],
        }
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path.stat().st_size


def _flood(unit: bytes, size: int, head: bytes = b"\x80\x04](", tail: bytes = b"e.") -> bytes:
    """``head``, ``unit`` repeated to about ``size`` bytes, ``tail``: one list of the same element."""
    return head + unit * max(size // len(unit), 1) + tail


def adversarial_files(size: int) -> Dict[str, bytes]:
    """Pickles of about ``size`` bytes, each the element Python (or a later np.asarray) allocates
    most for per byte read, in one list."""
    array = pickle.dumps(np.ones(2 ** 16, np.float32), protocol=4)[2:-1]
    return {
        "empty lists": _flood(b"]", size),
        "empty dicts": _flood(b"}", size),
        "1-tuples of None": _flood(b"N\x85", size),
        "None, memoized": _flood(b"N\x94", size),
        "2-character strings, memoized": _flood(b"\x8c\x02ab\x94", size),
        "16-bit ints": _flood(b"M\xff\xff", size),
        "floats": _flood(b"G?\xe0\x00\x00\x00\x00\x00\x00", size),
        "dict entries (int keys)": b"\x80\x04}(" + b"".join(b"J" + struct.pack("<i", i) + b"N"
                                                        for i in range(max(size // 6, 1))) + b"u.",
        "references to a 64-character string": _flood(b"h\x00", size, b"\x80\x04](\x8c@" + b"x" * 64 + b"\x94"),
        "references to a 256 KiB array": _flood(b"2", size, b"\x80\x04](" + array),
    }


def memory_multiples(size: int) -> List[List[str]]:
    """One row per adversarial file: bytes read, tracemalloc's peak, their ratio, the outcome."""
    from khar_mmsa.io.pickles import FLOOR_BYTES, MEMORY_MULTIPLE, load_pickle_stream
    rows = []
    for name, raw in adversarial_files(size).items():
        stream = io.BytesIO(raw)
        tracemalloc.start()
        try:
            load_pickle_stream(stream, source=name)
            outcome = "loaded"
        except Exception as exc:  # noqa: BLE001 - the refusal is the measurement's outcome
            outcome = f"refused ({type(exc).__name__})"
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        read = stream.tell()
        bound = MEMORY_MULTIPLE * read + FLOOR_BYTES
        rows.append([name, f"{read / 2 ** 20:.2f}", f"{peak / 2 ** 20:.1f}", f"{peak / read:.1f}",
                     f"{peak / bound:.2f}", outcome])
    return rows


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        with Timer() as t:
            fn()
        times.append(t.seconds)
    return min(times)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=None)
    common.add_common_args(parser)
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    common.resolve_paths(args, "loading")
    from khar_mmsa.io import files as io_files, pickles
    from khar_mmsa.data.validation import validate_features

    settings = dict(SETTINGS[args.mode])
    repeats = args.repeats or settings["repeats"]
    machine = common.machine_description()
    with Timer() as total:
        path = args.out / "features.pkl"
        size = make_pickle(path, settings["sizes"], settings["text"], settings["audio"], settings["vision"])
        mb = size / 1e6
        logger.info(f"[loading] {path}: {mb:.0f} MB")
        results = {"pickle.load (MMSA, no checks)": best_of(repeats, lambda: pickle.load(open(path, "rb")))}
        results["pickles.load_pickle (restricted, size-checked)"] = best_of(repeats, lambda: pickles.load_pickle(path))
        data = pickles.load_pickle(path)
        mmsa_args = {"model_name": "khar", "dataset_name": "mosei", "use_bert": True, "need_data_aligned": False}
        results["validate_features"] = best_of(repeats, lambda: validate_features(data, mmsa_args, str(path)))
        data = None  # free it before the next file

        def digest() -> None:
            io_files._DIGESTS.clear()
            io_files.file_digest(path)
        results["file_digest (SHA-256)"] = best_of(repeats, digest)
    multiples = memory_multiples(settings["adversarial"])
    plain = results["pickle.load (MMSA, no checks)"]
    rows = [[name, f"{s:.2f}", f"{mb / s:.0f}" if s > 0 else "-", f"{s / plain:.2f}x"]
            for name, s in results.items()]
    table = common.markdown_table(["step", "seconds (best of %d)" % repeats, "MB/s", "vs pickle.load"], rows)
    data_line = (f"synthetic MMSA-style pickle, {mb:.0f} MB (protocol 4): train/valid/test "
                 f"{'/'.join(map(str, settings['sizes']))} samples, text_bert (N,3,{settings['text']}) float64, "
                 f"audio (N,{settings['audio'][0]},{settings['audio'][1]}) and vision "
                 f"(N,{settings['vision'][0]},{settings['vision'][1]}) float32, ids and raw text")
    from khar_mmsa.io.pickles import FLOOR_BYTES, MEMORY_MULTIPLE
    memory = common.markdown_table(["adversarial file", "MiB read", "peak MiB (tracemalloc)", "peak / read",
                                    f"peak / ({MEMORY_MULTIPLE} x read + {FLOOR_BYTES // 2 ** 20} MiB)", "outcome"],
                                   multiples)
    body = section_body(table) + (
        f"\n\nMemory per byte read, adversarial files of about {settings['adversarial'] / 2 ** 20:.2f} MiB "
        f"(the loader holds memory and expansion to {MEMORY_MULTIPLE}x the bytes read + "
        f"{FLOOR_BYTES // 2 ** 20} MiB, refusing beyond):\n\n" + memory)
    text = common.section("Loading: restricted unpickling, validation, content hash",
                          common.command_line("benchmarks.loading", argv), common.machine_line(machine),
                          [0], data_line, total.seconds, body)
    common.update_results_md(args.results_md, f"loading-{args.mode}", text)
    (args.tables_dir / "loading.md").write_text(table + "\n\n" + memory + "\n")
    print(table + "\n\n" + memory)
    path.unlink(missing_ok=True)
    return {"results": results, "size_mb": mb, "memory": multiples}


def section_body(table: str) -> str:
    return (table + "\n\nThe file was in the page cache (read once before timing): CPU cost, not disk. "
            "`file_digest` runs once per file version per process (cached by inode, size and mtime).")


if __name__ == "__main__":
    main()
