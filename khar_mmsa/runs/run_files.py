"""Every file a run will write, checked before any data is read or anything trains.

A run replaces or appends to: the checkpoint (``<model>-<dataset>.pth``) and, for a model whose
trainer owns its files (KHaR), its resume state and saved config (``.pth.resume``, ``.pth.json``),
the finished-seeds record (``.pth.seeds.json``), the pretrained adapters' file and the curves
picture; and the two results tables with their ``.lock`` files
(:func:`.results_files.check_results_files`).  :func:`check_run_files` refuses, naming the file,
one that is a symbolic link or not a regular file, an existing one without its owner's write bit
(a read-only checkpoint is found now, not after training), a folder that cannot be written, and a
``pretrained_adapters_path`` that holds a file khar-mmsa did not write and cannot read as
adapters (it would be replaced: it is left untouched and the run stops).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

from khar_mmsa.runs.results_files import check_results_files, results_csv_path, tidy_csv_path


class RunFileError(OSError):
    """A file the run would write cannot be written (or is not ours to replace)."""


def files_to_write(args: Mapping[str, Any], settings: Any, log_dir: Path) -> List[Path]:
    """The files a run of ``args`` writes outside the results tables (see the module docstring)."""
    from khar_mmsa.registration.extra_models import is_extra_model
    from khar_mmsa.training.checkpoints import SeedCheckpoint
    checkpoint = SeedCheckpoint(args["model_save_path"])
    paths = list(checkpoint.files) if is_extra_model(args["model_name"]) else [checkpoint.path]
    paths.append(checkpoint.path.with_name(checkpoint.path.name + ".seeds.json"))
    adapters = adapter_path(args, settings)
    if adapters is not None:
        paths.append(adapters)
    if getattr(settings, "save_curves", False):
        paths.append(Path(log_dir) / f"{args['model_name']}-{args['dataset_name']}-curves.png")
    return paths


def adapter_path(args: Mapping[str, Any], settings: Any) -> Any:
    """The pretrained adapters' file a KHaR run reads and writes (None when it pretrains none)."""
    if not getattr(settings, "pretrain_adapters", False):
        return None
    from khar_mmsa.training.pretrain import default_adapter_path
    given = getattr(settings, "pretrained_adapters_path", None)
    return Path(given) if given else default_adapter_path(args["model_save_path"])


def check_adapter_file(path: Path, own_name: bool = False) -> None:
    """An existing adapters' file is readable as ours, or at least marked as ours, or at our own
    default name (``own_name``): a damaged one is set aside when the run reaches it, at every
    size.  A file at a ``pretrained_adapters_path`` the user gave that is none of these stops the
    run untouched, naming the command that unblocks it."""
    from khar_mmsa.io.state_files import ForeignFileError, StateFileError, load_adapter_cache, written_by_us
    if own_name or not path.exists():
        return
    try:
        load_adapter_cache(path)
    except StateFileError as exc:
        if not written_by_us(path):
            raise ForeignFileError(path, f"{exc.problem}; it is not a pretrained adapters' file khar-mmsa "
                                         f"wrote, so it is neither renamed nor replaced: point "
                                         f"pretrained_adapters_path at another file (or move this one away: "
                                         f"mv '{path}' '{path}.mine'); nothing was trained") from exc


def check_run_files(args: Mapping[str, Any], settings: Any, res_dir: Path, dataset_name: str,
                    log_dir: Path) -> None:
    """Check every file the run will write, before any work (see the module docstring)."""
    from khar_mmsa.io.files import check_writable_file
    for path in files_to_write(args, settings, log_dir):
        try:
            check_writable_file(path)
        except OSError as exc:
            raise RunFileError(f"{path}: this run would write this file but cannot ({exc}); fix it or "
                               f"write elsewhere; nothing was trained.") from exc
    adapters = adapter_path(args, settings)
    if adapters is not None:
        check_adapter_file(adapters, own_name=not getattr(settings, "pretrained_adapters_path", None))
    from khar_mmsa.runs.run_metrics import result_columns
    check_results_files([results_csv_path(res_dir, dataset_name), tidy_csv_path(res_dir, dataset_name)],
                        result_columns(args["model_name"], dataset_name))
