"""Tests for khar_mmsa.io.state_files: one loader per state file, each corruption a StateFileError
naming the file, and set_aside keeping damaged files."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from khar_mmsa.config import KHaRConfig
from khar_mmsa.experiments.sweep.manifest import load_manifest, parse_manifest_line
from khar_mmsa.io.state_files import (StateFileError, load_adapter_cache, load_checkpoint,
                                      load_checkpoint_config, load_seeds_file, set_aside)
from khar_mmsa.tuning.table import load_tune_marker, load_tune_table


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def expect(path: Path, fragment: str, loader, *args: Any) -> StateFileError:
    with pytest.raises(StateFileError) as ei:
        loader(path, *args)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: ") and fragment in msg, msg
    assert ei.value.path == path
    return ei.value


# --- checkpoints -----------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "khar-mosi.pth"
    torch.save({"Model.w": torch.ones(3, 4), "Model.b": torch.zeros(3)}, path)
    return path


def test_checkpoint_loads(checkpoint: Path) -> None:
    state = load_checkpoint(checkpoint)
    assert torch.equal(state["Model.w"], torch.ones(3, 4))


@pytest.mark.parametrize("keep", [0, 10, 0.5])
def test_truncated_checkpoint_names_the_file(checkpoint: Path, keep: float) -> None:
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    fragment = "is empty" if keep == 0 else "truncated or not a PyTorch file"
    expect(checkpoint, fragment, load_checkpoint)


def test_checkpoint_of_another_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.ones(2)], path)
    expect(path, "is a list, expected a state_dict", load_checkpoint)
    torch.save({"w": 3}, path)
    expect(path, "entry 'w' is a int, expected a tensor", load_checkpoint)


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"w": _RunsCode(str(marker))}, path)
    expect(path, "objects other than tensors", load_checkpoint)
    assert not marker.exists()


def test_missing_checkpoint_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_checkpoint(tmp_path / "absent.pth")


# --- the checkpoint's .pth.json ----------------------------------------------------------------
def write_config(path: Path, obj: Any) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def good_config() -> dict:
    return {"model_name": "khar", "dataset_name": "mosi", "config": dataclasses.asdict(KHaRConfig())}


def test_checkpoint_config_loads(tmp_path: Path) -> None:
    obj = load_checkpoint_config(write_config(tmp_path / "c.pth.json", good_config()))
    assert obj["config"]["modal_dim"] == 128


def test_checkpoint_config_never_sets_a_guard(tmp_path: Path) -> None:
    """A whole old-format config saying max_model_memory_gib=1e9: the guard is dropped (every
    other saved field kept), and the guard checked is the caller's (here: far too small for the
    default network)."""
    from khar_mmsa.config import ARCHITECTURE_SECTIONS, section_fields
    from khar_mmsa.io.state_files import GUARD_FIELDS
    assert not set(GUARD_FIELDS) & set(section_fields(*ARCHITECTURE_SECTIONS))
    obj = good_config()
    obj["config"]["max_model_memory_gib"] = 1e9
    path = write_config(tmp_path / "c.pth.json", obj)
    loaded = load_checkpoint_config(path)
    assert set(loaded["config"]) == set(obj["config"]) - set(GUARD_FIELDS)
    with pytest.raises(StateFileError, match=r"max_model_memory_gib=0\.001"):
        load_checkpoint_config(path, settings={"max_model_memory_gib": 0.001})


def test_checkpoint_config_missing_fields_take_defaults(tmp_path: Path) -> None:
    obj = good_config()
    del obj["config"]["amp"]  # a field added after the file was written
    load_checkpoint_config(write_config(tmp_path / "c.pth.json", obj))


@pytest.mark.parametrize("content,fragment", [
    ("", "is empty"),
    ('{"model_name": "khar", "config": {', "is not valid JSON (Expecting"),
    ("[1, 2]", "is a JSON list, expected a JSON object"),
    (json.dumps({"model_name": "khar", "dataset_name": "mosi"}), "lacks key(s) ['config']"),
    (json.dumps({**good_config(), "extra": 1}), "unknown key(s) ['extra']"),
    (json.dumps({**good_config(), "config": []}), "'config' is a JSON list, expected a JSON object"),
    (json.dumps({**good_config(), "model_name": 3}), "'model_name' is an integer, expected a string"),
    (json.dumps({**good_config(), "config": {"modal_dimm": 3}}), "unknown key(s) ['modal_dimm']"),
    (json.dumps({**good_config(), "config": {"batch_size": "64"}}), "batch_size='64'"),
    (json.dumps({**good_config(), "config": {"seq_lens": [50, 10 ** 9, 500]}}), "seq_lens=[50, 1000000000, 500]"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
])
def test_checkpoint_config_corruptions(tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "c.pth.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    expect(path, fragment, load_checkpoint_config)


# --- the per-run seeds file ----------------------------------------------------------------------
@pytest.mark.parametrize("content,fragment", [
    ('{"key": "abc", "results": {"1": {"Acc_2": 0.5}', "not valid JSON"),
    ('"just a string"', "is a string, expected a JSON object"),
    ('{"results": {}}', "lacks key(s) ['key']"),
    ('{"key": "k", "results": {"1": {}}}', "seed 1 has no metrics"),
    ('{"key": "k", "results": {"1": [0.5]}}', "seed 1 has a JSON list"),
    ('{"key": "k", "results": {"one": {"Acc_2": 0.5}}}', "seed 'one' is not an integer"),
    ('{"key": "k", "results": {"1": {"Acc_2": "0.5"}}}', "seed 1's 'Acc_2' is '0.5', expected a finite number"),
    ('{"key": "k", "results": {"1": {"Acc_2": NaN}}}', "expected a finite number"),
    ('{"key": 5, "results": {}}', "'key' is an integer, expected a string"),
])
def test_seeds_file_corruptions(tmp_path: Path, content: str, fragment: str) -> None:
    path = write_config(tmp_path / "khar-mosi.pth.seeds.json", content)
    expect(path, fragment, load_seeds_file)


def test_seeds_file_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path / "s.json", {"key": "k", "results": {"1111": {"Acc_2": 0.5, "MAE": 1.2}}})
    assert load_seeds_file(path)["results"]["1111"]["MAE"] == 1.2


# --- the adapter cache ---------------------------------------------------------------------------
def adapter_cache(path: Path, **over: Any) -> Path:
    obj = {"fingerprint": "f" * 16, "states": {"a": {"adapters.0.w": torch.ones(2)}},
           "labels": {"a": "regression_labels"}, "config": {}}
    obj.update(over)
    torch.save(obj, path)
    return path


def test_adapter_cache_loads(tmp_path: Path) -> None:
    assert load_adapter_cache(adapter_cache(tmp_path / "k-adapters.pt"))["fingerprint"] == "f" * 16


@pytest.mark.parametrize("over,fragment", [
    ({"states": {"x": {}}}, "modality 'x'"),
    ({"states": {"a": [torch.ones(1)]}}, "states['a'] is a list"),
    ({"states": {"a": {"w": 1.0}}}, "entry 'w' is a float"),
    ({"fingerprint": 7}, "'fingerprint' is a int"),
    ({"extra": 1}, "unknown key(s) ['extra']"),
])
def test_adapter_cache_corruptions(tmp_path: Path, over: dict, fragment: str) -> None:
    expect(adapter_cache(tmp_path / "k-adapters.pt", **over), fragment, load_adapter_cache)


def test_adapter_cache_truncated_or_crafted(tmp_path: Path) -> None:
    path = adapter_cache(tmp_path / "k-adapters.pt")
    path.write_bytes(path.read_bytes()[:100])
    expect(path, "truncated or not a PyTorch file", load_adapter_cache)
    marker = tmp_path / "ran"
    torch.save({"fingerprint": _RunsCode(str(marker))}, path)
    expect(path, "objects other than tensors", load_adapter_cache)
    assert not marker.exists()
    torch.save(["not", "a", "dict"], path)
    expect(path, "is a list", load_adapter_cache)


# --- the sweep manifest ---------------------------------------------------------------------------
DONE = {"event": "done", "run_id": "khar-1", "title": "khar seed 1", "time": "t", "identity": {},
        "outcome": {"result": {"metrics": {"MAE": 1.0}}, "wall_s": 1.0, "host": "h"}}


@pytest.mark.parametrize("line,fragment", [
    ('["done", "khar-1"]', "is a JSON list, expected a JSON object"),
    (json.dumps({"event": "done", "outcome": DONE["outcome"]}), "lacks key(s) ['run_id']"),
    (json.dumps({k: v for k, v in DONE.items() if k != "outcome"}), "a 'done' record lacks 'outcome'"),
    (json.dumps({**DONE, "outcome": {"wall_s": 1}}), "outcome lacks its 'result' object"),
    (json.dumps({**DONE, "event": "finished"}), "event 'finished'"),
    (json.dumps({**DONE, "run_id": 3}), "'run_id' is an integer"),
    ('{"event": "done", "run_id": "kh', "not valid JSON"),
])
def test_manifest_line_corruptions(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "sweep-manifest.jsonl"
    with pytest.raises(StateFileError) as ei:
        parse_manifest_line(line, path, 7)
    assert str(ei.value).startswith(f"{path}:7: ") and fragment in str(ei.value), str(ei.value)


def test_load_manifest_skips_damaged_lines_so_their_runs_run_again(tmp_path: Path, caplog) -> None:
    path = tmp_path / "sweep-manifest.jsonl"
    start = {"event": "start", "run_id": "khar-2"}
    path.write_text("\n".join([json.dumps(DONE), '["x"]', json.dumps(start), '{"event": "do']) + "\n")
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        records, damaged = load_manifest(path)
    assert [r["run_id"] for r in records] == ["khar-1", "khar-2"]
    assert [e.path.name for e in damaged] == ["sweep-manifest.jsonl:2", "sweep-manifest.jsonl:4"]
    assert "sweep-manifest.jsonl:2" in caplog.text and "runs again" in caplog.text
    assert load_manifest(tmp_path / "absent.jsonl") == ([], [])


# --- tune files ------------------------------------------------------------------------------------
def test_tune_marker(tmp_path: Path) -> None:
    path = write_config(tmp_path / "best.json", {"candidate": json.dumps({"lr": 1e-4})})
    assert load_tune_marker(path)["candidate"] == '{"lr": 0.0001}'
    for content, fragment in [("{", "not valid JSON"), ("[]", "is a JSON list"),
                              ('{"candidate": 1}', "'candidate' is an integer"),
                              ('{"candidate": "[1]"}', "the candidate is a JSON list"),
                              ('{"candidate": "{"}', "candidate is not valid JSON"),
                              ('{"candidate": "{}", "x": 1}', "unknown key(s) ['x']")]:
        expect(write_config(path, content), fragment, load_tune_marker)


def test_tune_table(tmp_path: Path) -> None:
    path = tmp_path / "mosi-khar.csv"
    path.write_text('candidate,Valid_Loss\n"{""lr"": 1}",0.5\n')
    assert load_tune_table(path)["Valid_Loss"].tolist() == [0.5]
    for content, fragment in [('a,b\n1,2\n', "lacks the 'candidate' column"),
                              ('candidate,Valid_Loss\nnot-json,0.5\n', "row 1: candidate 'not-json'"),
                              ('candidate,Valid_Loss\n"{}",abc\n', "column 'Valid_Loss' holds non-numbers"),
                              ('', "not a readable CSV"),
                              ('candidate,Valid_Loss\n"{}",1\n"{}",1,2,3\n', "not a readable CSV")]:
        expect(write_config(path, content), fragment, load_tune_table)


# --- set_aside -------------------------------------------------------------------------------------
def test_set_aside_keeps_the_file_and_logs(tmp_path: Path, caplog) -> None:
    path = tmp_path / "khar-mosi.pth.seeds.json"
    broken = '{"written_by": "khar-mmsa seeds file", "key": "x", "resu'  # ours, cut off
    path.write_text(broken)
    (tmp_path / "khar-mosi.pth.seeds.json.damaged-1").write_text("an earlier one")
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        try:
            load_seeds_file(path)
        except StateFileError as exc:
            new = set_aside(path, exc)
    assert new.name == "khar-mosi.pth.seeds.json.damaged-2" and new.read_text() == broken
    assert not path.exists()
    assert (tmp_path / "khar-mosi.pth.seeds.json.damaged-1").read_text() == "an earlier one"
    assert str(path) in caplog.text and str(new) in caplog.text and "not valid JSON" in caplog.text
    assert "done again" in caplog.text
