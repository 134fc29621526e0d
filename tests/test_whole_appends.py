"""Appends are whole or absent, checked before work, and never go through a link (issue 23).

Through the user's calls: ``MMSA_run`` (the dummy 'khar' of test_mmsa_package, so a run takes a
second) for the results tables and the log, ``run_sweep`` for the manifest.  A full disk is
simulated twice: ``os.write`` writing half a row and then raising ``ENOSPC``, and a real 64 KiB
tmpfs (skipped where it cannot be mounted).
"""
from __future__ import annotations

import errno
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pandas as pd
import pytest

import khar_mmsa  # noqa: F401 - registers 'khar'
from khar_mmsa.experiments.sweep import Manifest, RunSpec, run_sweep
from khar_mmsa.runs import results_files
from khar_mmsa.io import appends as io_appends
from khar_mmsa.io import files as io_files
from MMSA import MMSA_run
from test_mmsa_package import DummyTrainer, dummy_khar  # noqa: F401 - the fixture

ROW_1 = 'khar,"(50.0, 0.0)","(70.0, 0.0)","(10.0, 0.0)"\n'
MMSA_HEADER = "Model,Has0_acc_2,MAE,Corr\n"
TIDY_HEADER = "Model,seeds,Has0_acc_2,Has0_acc_2_std,MAE,MAE_std,Corr,Corr_std\n"
TIDY_ROW_1 = "khar,1,50.0,0.0,70.0,0.0,10.0,0.0\n"


def _tables(kwargs: Dict[str, Any]) -> List[Path]:
    res = kwargs["res_save_dir"]
    return [results_files.results_csv_path(res, "mosi"), results_files.tidy_csv_path(res, "mosi")]


def _run(config_file: Path, kwargs: Dict[str, Any]) -> Any:
    return MMSA_run("khar", "mosi", config_file=str(config_file), **kwargs)


# ---- disk full -------------------------------------------------------------------------------
def _failing_write(target_suffix: str, real=os.write):
    """``os.write`` that writes half of what it is given to a file whose name ends with
    ``target_suffix`` and then raises ENOSPC, as a full disk does; other files are written."""
    def write(fd: int, data: Any) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        if not name.endswith(target_suffix):
            return real(fd, data)
        if getattr(write, "half_done", False):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write.half_done = True
        return real(fd, bytes(data)[: max(len(data) // 2, 1)])
    return write


def test_a_full_disk_leaves_no_half_row_and_no_row_in_one_table_only(dummy_khar, mmsa_run_kwargs, fast_mmsa,
                                                                     monkeypatch) -> None:
    _run(dummy_khar, mmsa_run_kwargs)
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs)
    before = [mmsa_csv.read_bytes(), tidy_csv.read_bytes()]
    with monkeypatch.context() as full, pytest.raises(OSError) as failed:  # undoes only the full disk
        full.setattr(os, "write", _failing_write(".tidy.csv"))
        _run(dummy_khar, mmsa_run_kwargs)
    assert failed.value.errno == errno.ENOSPC
    # the tidy row was cut back to nothing, and MMSA's row written before it was removed again
    assert [mmsa_csv.read_bytes(), tidy_csv.read_bytes()] == before
    _run(dummy_khar, mmsa_run_kwargs)  # the disk has room again: the next run is not refused
    assert len(pd.read_csv(tidy_csv)) == 2 and mmsa_csv.read_text() == MMSA_HEADER + ROW_1 * 2


def test_short_writes_are_continued(dummy_khar, mmsa_run_kwargs, fast_mmsa, monkeypatch) -> None:
    real = os.write

    def short(fd: int, data: Any) -> int:  # at most 7 bytes per call, as a slow pipe or NFS may
        return real(fd, bytes(data)[:7])
    monkeypatch.setattr(os, "write", short)
    _run(dummy_khar, mmsa_run_kwargs)
    monkeypatch.undo()
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs)
    assert mmsa_csv.read_text() == MMSA_HEADER + ROW_1 and tidy_csv.read_text() == TIDY_HEADER + TIDY_ROW_1


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 64 KiB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            try:
                if os.write(fd, b"x" * 512) == 0:
                    break
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)
    return filler


#: tmpfs gives room by the page: the tidy table is made to end this many bytes before a page
#: boundary, fewer than a row, so that the row's append on a full disk is cut in the middle.
PAGE_BYTES, SLACK_BYTES = 4096, 8


def test_a_really_full_disk_keeps_the_tables_whole(dummy_khar, mmsa_run_kwargs, fast_mmsa, tiny_disk) -> None:
    kwargs = dict(mmsa_run_kwargs, res_save_dir=tiny_disk / "results")
    _run(dummy_khar, kwargs)
    mmsa_csv, tidy_csv = _tables(kwargs)
    text = tidy_csv.read_text()
    while len(text) < PAGE_BYTES - SLACK_BYTES - 2 * len(TIDY_ROW_1):  # earlier runs' rows
        text += TIDY_ROW_1
    pad = PAGE_BYTES - SLACK_BYTES - len(text) - len(TIDY_ROW_1)
    text += "k" * (pad + len("khar")) + TIDY_ROW_1[len("khar"):]  # a longer model name fills the page
    tidy_csv.write_text(text)
    assert len(text) == PAGE_BYTES - SLACK_BYTES and len(pd.read_csv(tidy_csv)) > 1
    before = [mmsa_csv.read_bytes(), tidy_csv.read_bytes()]
    filler = _fill(tiny_disk)
    with pytest.raises(OSError) as failed:
        _run(dummy_khar, kwargs)
    assert failed.value.errno == errno.ENOSPC
    assert [mmsa_csv.read_bytes(), tidy_csv.read_bytes()] == before  # whole rows only, in both
    filler.unlink()
    _run(dummy_khar, kwargs)
    assert len(pd.read_csv(tidy_csv)) == len(pd.read_csv(io.BytesIO(before[1]))) + 1
    assert len(pd.read_csv(mmsa_csv)) == 2


# ---- a torn last line of ours ----------------------------------------------------------------
def test_a_row_cut_by_a_kill_is_repaired_with_a_warning(dummy_khar, mmsa_run_kwargs, fast_mmsa, caplog) -> None:
    _run(dummy_khar, mmsa_run_kwargs)
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs)
    with open(mmsa_csv, "a") as f:  # what a kill during the append of a second row leaves
        f.write('khar,"(50.0, 0.0)","(7')
    with caplog.at_level("WARNING", logger="MMSA"):
        _run(dummy_khar, mmsa_run_kwargs)
    assert mmsa_csv.read_text() == MMSA_HEADER + ROW_1 * 2
    assert f"{mmsa_csv}: its last line was cut off" in caplog.text and '(7' in caplog.text
    assert len(pd.read_csv(tidy_csv)) == 2


def test_a_partial_line_in_a_file_that_is_not_ours_is_not_cut(dummy_khar, mmsa_run_kwargs, fast_mmsa) -> None:
    mmsa_csv, _ = _tables(mmsa_run_kwargs)
    mmsa_csv.parent.mkdir(parents=True)
    mmsa_csv.write_text("name;score\nmine;1")
    with pytest.raises(results_files.ResultsFileError, match="is not a results table"):
        _run(dummy_khar, mmsa_run_kwargs)
    assert mmsa_csv.read_text() == "name;score\nmine;1" and DummyTrainer.events == []


# ---- headers checked before training ------------------------------------------------------------
@pytest.mark.parametrize("table, content, fragment", [
    (0, "\ufeff" + MMSA_HEADER + ROW_1, "byte-order mark"),
    (0, "name,score\nx,1\n", "is not a results table"),
    (1, "\ufeff" + TIDY_HEADER + TIDY_ROW_1, "byte-order mark"),
    (1, "Model,MAE,Corr\nx,1,2\n", "is not a results table"),
    (1, "Model,seeds,MAE,Corr_std\nx,1,2,3\n", "is not a results table"),
])
def test_a_foreign_header_or_a_bom_is_refused_before_training(table, content, fragment, dummy_khar,
                                                             mmsa_run_kwargs, fast_mmsa) -> None:
    paths = _tables(mmsa_run_kwargs)
    paths[0].parent.mkdir(parents=True)
    paths[table].write_text(content, encoding="utf-8")
    with pytest.raises(results_files.ResultsFileError) as refused:
        _run(dummy_khar, mmsa_run_kwargs)
    message = str(refused.value)
    assert "\n" not in message and str(paths[table]) in message and fragment in message
    assert DummyTrainer.events == []  # nothing trained
    assert not (Path(mmsa_run_kwargs["model_save_dir"]) / "khar-mosi.pth").exists()
    assert paths[table].read_text(encoding="utf-8") == content and not paths[1 - table].exists()


def test_tables_naming_other_metrics_than_each_other_are_refused_before_training(dummy_khar, mmsa_run_kwargs,
                                                                                fast_mmsa) -> None:
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs)
    mmsa_csv.parent.mkdir(parents=True)
    mmsa_csv.write_text(MMSA_HEADER + ROW_1)
    tidy_csv.write_text("Model,seeds,Acc,Acc_std\nx,1,2.0,0.0\n")
    with pytest.raises(results_files.ResultsFileError, match="but .* has"):
        _run(dummy_khar, mmsa_run_kwargs)
    assert DummyTrainer.events == []


def test_a_refused_tidy_table_leaves_mmsas_table_without_the_row(dummy_khar, mmsa_run_kwargs, fast_mmsa) -> None:
    """The tidy table's metrics are another run's (found when the row is known): the row goes to
    neither table, on every rerun (no duplicate rows in MMSA's table)."""
    mmsa_csv, tidy_csv = _tables(mmsa_run_kwargs)
    tidy_csv.parent.mkdir(parents=True)
    other = "Model,seeds,Acc,Acc_std\nx,1,2.0,0.0\n"
    tidy_csv.write_text(other)
    for _ in range(2):
        with pytest.raises(results_files.ResultsFileError, match="differ from this run's"):
            _run(dummy_khar, mmsa_run_kwargs)
    assert tidy_csv.read_text() == other and not mmsa_csv.exists()


# ---- links ----------------------------------------------------------------------------------------
def test_a_lock_file_link_is_refused_before_training(dummy_khar, mmsa_run_kwargs, fast_mmsa, tmp_path) -> None:
    mmsa_csv, _ = _tables(mmsa_run_kwargs)
    mmsa_csv.parent.mkdir(parents=True)
    target = tmp_path / "journal.txt"
    (mmsa_csv.parent / "mosi.csv.lock").symlink_to(target)
    with pytest.raises(results_files.ResultsFileError, match="mosi.csv.lock"):
        _run(dummy_khar, mmsa_run_kwargs)
    assert DummyTrainer.events == [] and not target.exists()


def test_the_run_log_is_never_appended_through_a_link(dummy_khar, mmsa_run_kwargs, fast_mmsa, tmp_path) -> None:
    journal = tmp_path / "journal.txt"
    journal.write_text("my notes\n")
    log_dir = Path(mmsa_run_kwargs["log_dir"])
    log_dir.mkdir(parents=True)
    (log_dir / "khar-mosi.log").symlink_to(journal)
    with pytest.raises(io_files.UnsafePathError, match="khar-mosi.log is a symbolic link"):
        _run(dummy_khar, mmsa_run_kwargs)
    assert journal.read_text() == "my notes\n" and DummyTrainer.events == []


def test_append_whole_refuses_a_link_and_a_read_only_file(tmp_path: Path) -> None:
    journal = tmp_path / "journal.txt"
    journal.write_text("mine\n")
    link = tmp_path / "appended.txt"
    link.symlink_to(journal)
    with pytest.raises(io_files.UnsafePathError):
        io_appends.append_whole(link, b"ours\n")
    read_only = tmp_path / "read-only.txt"
    read_only.write_text("kept\n")
    read_only.chmod(0o444)
    with pytest.raises(PermissionError):
        io_appends.append_whole(read_only, b"ours\n")
    assert journal.read_text() == "mine\n" and read_only.read_text() == "kept\n"


# ---- the sweep manifest ------------------------------------------------------------------------------
def foreign_line_runner(spec: RunSpec, feature_path: str) -> Dict[str, Any]:
    """A run during which someone else appends half a line (no newline) to the manifest."""
    with open(Path(spec.out_dir).parent / "manifest.jsonl", "a") as f:
        f.write('{"note": "someone else\'s half li')
    return {"metrics": {"MAE": spec.seed / 10}}


def _spec(tmp_path: Path, seed: int = 1, runner: str = "test_whole_appends:foreign_line_runner") -> RunSpec:
    data = tmp_path / "features.pkl"
    if not data.exists():
        data.write_bytes(b"0" * 10)
    return RunSpec(model="m", dataset="mosi", seed=seed, feature_path=str(data), out_dir=str(tmp_path / f"r{seed}"),
                   runner=runner)


def test_a_foreign_half_line_in_the_manifest_does_not_swallow_a_finished_run(tmp_path: Path, caplog) -> None:
    manifest = tmp_path / "manifest.jsonl"
    spec = _spec(tmp_path)
    run_sweep([spec], manifest_path=manifest, stream=io.StringIO())
    with caplog.at_level("WARNING", logger="MMSA"):
        again = run_sweep([spec], manifest_path=manifest, stream=io.StringIO())
    assert again.skipped == [spec.run_id]  # its 'done' record is whole: the run is not trained again
    assert Manifest(manifest).starts(spec.run_id) == 1
    assert "someone else's half li" in manifest.read_text()  # the foreign line is left, and ignored
    assert f"{manifest}:2: manifest record" in caplog.text


def test_a_record_of_ours_cut_by_a_kill_is_removed_with_a_warning(tmp_path: Path, caplog) -> None:
    manifest = tmp_path / "manifest.jsonl"
    first, second = _spec(tmp_path, 1, "test_sweep:flaky_runner"), _spec(tmp_path, 2, "test_sweep:flaky_runner")
    run_sweep([first], manifest_path=manifest, stream=io.StringIO())
    whole = manifest.read_bytes()
    manifest.write_bytes(whole + b'{"event": "start", "run_id": "ab')  # a driver killed mid-append
    with caplog.at_level("WARNING", logger="MMSA"):
        run_sweep([first, second], manifest_path=manifest, stream=io.StringIO())
    assert manifest.read_bytes().startswith(whole) and b'"run_id": "ab' not in manifest.read_bytes()
    assert all(json.loads(line) for line in manifest.read_text().splitlines())
    assert f"{manifest}: its last line was cut off" in caplog.text


def test_the_manifest_is_never_appended_through_a_link(tmp_path: Path) -> None:
    journal = tmp_path / "journal.txt"
    journal.write_text("my notes\n")
    manifest = tmp_path / "manifest.jsonl"
    manifest.symlink_to(journal)
    spec = _spec(tmp_path, runner="test_sweep:flaky_runner")
    with pytest.raises(io_files.UnsafePathError, match="symbolic link"):
        run_sweep([spec], manifest_path=manifest, stream=io.StringIO())
    assert journal.read_text() == "my notes\n" and manifest.is_symlink()
