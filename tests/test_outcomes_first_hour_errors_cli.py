"""The first hour at the command line: a missing file is one error line, early; ``--help`` is true."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_module_in_fork

REPO = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict:
    return dict(os.environ, HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


ARGVS = [["-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl"],
         ["-m", "tfn", "-d", "mosi", "-Fa", "missing.pkl"],
         ["tune", "-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl"],
         ["sweep", "-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl", "--out", "o"]]


def test_cli_missing_feature_file_is_one_line_before_heavy_imports_and_folders(tmp_path) -> None:
    """Every command of ARGVS in one fresh interpreter (one start instead of four), each from an empty
    working folder of its own, its standard error captured on its own: the heavy modules are
    checked after each command, so one that imports them is named."""
    code = ("import contextlib, io, json, os, sys\nfrom khar_mmsa import cli\n"
            "for i, argv in enumerate(json.loads(sys.argv[1])):\n"
            "    os.chdir(str(i))\n    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n        rc = cli.main(argv)\n"
            "    os.chdir('..')\n"
            "    print(json.dumps([rc, sorted(m for m in ('torch', 'MMSA', 'transformers', 'ray') if m in sys.modules),"
            " err.getvalue()]))")
    for i in range(len(ARGVS)):
        (tmp_path / str(i)).mkdir()
    done = subprocess.run([sys.executable, "-c", code, json.dumps(ARGVS)], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == len(ARGVS), (done.stdout, done.stderr)
    assert done.stderr == "", done.stderr  # nothing outside the commands' own error lines
    for i, (argv, line) in enumerate(zip(ARGVS, lines)):
        rc, heavy, stderr = json.loads(line)
        flag = argv[argv.index("missing.pkl") - 1]
        assert rc == 1 and heavy == [], (argv, line, done.stderr)
        assert stderr.splitlines() == [f"python -m khar_mmsa: error: {flag} missing.pkl: no such feature file "
                                       f"(nothing was trained, no folder made)"], (argv, stderr)
        assert sorted(p.name for p in (tmp_path / str(i)).iterdir()) == [], f"{argv}: a folder was made (~/MMSA, --out)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [str(i) for i in range(len(ARGVS))], "a folder was made in HOME"


def test_transcripts_builder_missing_label_csv_is_one_line(tmp_path, tiny_bert) -> None:
    work, errors = tmp_path / "work", tmp_path / "stderr.txt"
    work.mkdir()
    # ``python -m khar_mmsa.data.transcripts`` in a forked child (its heavy imports done once, here), in
    # its own HOME and working folder, the 'MMSA' logger without handlers as in a fresh interpreter
    exitcode, stderr = run_module_in_fork(
        "khar_mmsa.data.transcripts", ["--labels", "MOSI/label.csv", "--encoder", str(tiny_bert), "--out", "t.pkl"],
        errors, cwd=work, env=_env(work), fresh_mmsa_logger=True, timeout=120)
    assert exitcode == 2, (exitcode, stderr)
    assert stderr.splitlines() == ["python -m khar_mmsa.data.transcripts: error: nothing written: label csv "
                                   "MOSI/label.csv: no such file"]
    assert not (work / "t.pkl").exists()


def test_top_level_help_says_which_subcommand_needs_ray(capsys) -> None:
    from khar_mmsa import cli
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Ray Tune search on the validation KeyEval (ASHA; needs pip install -e \".[ray]\")" in text
    assert "a local loop, or Ray tasks with --executor ray (needs .[ray])" in text
