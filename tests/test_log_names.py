"""Each khar_mmsa module logs to a child of MMSA's 'MMSA' logger named after it: MMSA's handlers
(the run's log file and console) still get every line, the file names the module, and a user
quiets one part by its logger name, through ``MMSA_run``."""
from __future__ import annotations

import importlib.util
import logging
import re

import khar_mmsa  # noqa: F401  (registers 'khar')
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

LINE = re.compile(r" - (MMSA[\w.]*) \[(\w+)\] - (.*)$")


def test_a_user_quiets_one_module_and_keeps_the_others(tiny_features, tiny_bert, fast_mmsa, mmsa_run_kwargs,
                                                       caplog):
    quiet = logging.getLogger("MMSA.khar_mmsa.training.callbacks")  # the per-epoch lines
    try:
        quiet.setLevel(logging.WARNING)
        with caplog.at_level(logging.INFO, logger="MMSA"):
            MMSA_run("khar", "mosi", config=dict(TINY_KHAR_SIZE, epochs=1, pretrain_epochs=1,
                                                  pretrained=str(tiny_bert), save_curves=False),
                     custom_feature=str(tiny_features("mosi")), **mmsa_run_kwargs)
    finally:
        quiet.setLevel(logging.NOTSET)
    log = (mmsa_run_kwargs["log_dir"] / "khar-mosi.log").read_text()
    lines = [m.groups() for m in map(LINE.search, log.splitlines()) if m]
    names = {name for name, _, _ in lines}
    # the file names each line's module, a real one under MMSA's logger
    assert {"MMSA.khar_mmsa.runs.runner", "MMSA.khar_mmsa.training.trainer"} <= names
    assert all(n == "MMSA" or importlib.util.find_spec(n[len("MMSA."):]) is not None for n in names), names
    assert "MMSA.khar_mmsa.training.callbacks" not in names  # quieted ...
    assert not any("EPOCH-(khar)" in message for _, _, message in lines)
    assert any(message.startswith("TRAIN-(khar) epoch 1") for _, _, message in lines)  # ... its sibling not
    assert any(message.startswith("Results saved to") for _, _, message in lines)
    # a handler on 'MMSA' (caplog's capture, as MMSA's own) gets the children's records
    assert any(r.name == "MMSA.khar_mmsa.runs.runner" and r.getMessage().startswith("Results saved to")
               for r in caplog.records)


def test_the_sweep_commands_progress_lines_reach_stderr(tmp_path, monkeypatch, capsys):
    """``python -m khar_mmsa sweep`` gives the 'MMSA' logger its stderr handler: the driver's line
    (logged by MMSA.khar_mmsa.experiments.sweep.driver) is shown."""
    from khar_mmsa import cli
    from khar_mmsa.experiments import sweep
    monkeypatch.setattr(logging.getLogger("MMSA"), "handlers", [])  # as in a fresh process
    monkeypatch.setattr(sweep, "mmsa_run_one", lambda spec, feature_path: {"metrics": {"MAE": 0.7}})
    data = tmp_path / "features.pkl"
    data.write_bytes(b"0" * 10)
    assert cli.main(["sweep", "-m", "tfn", "-d", "mosi", "-s", "1111", "--custom-feature", str(data),
                     "--out", str(tmp_path / "sweep")]) == 0
    assert "1 runs, 0 already done" in capsys.readouterr().err
