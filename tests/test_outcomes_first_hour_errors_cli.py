"""The first hour at the command line: a missing file is one error line, early; ``--help`` is true."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _env(home: Path) -> dict:
    return dict(os.environ, HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))


@pytest.mark.parametrize("argv", [["-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl"],
                                  ["-m", "tfn", "-d", "mosi", "-Fa", "missing.pkl"],
                                  ["tune", "-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl"],
                                  ["sweep", "-m", "khar", "-d", "mosi", "--custom-feature", "missing.pkl",
                                   "--out", "o"]])
def test_cli_missing_feature_file_is_one_line_before_heavy_imports_and_folders(argv, tmp_path) -> None:
    code = ("import json, sys\nfrom khar_mmsa import cli\nrc = cli.main(sys.argv[1:])\n"
            "print(json.dumps([rc, sorted(m for m in ('torch', 'MMSA', 'transformers', 'ray') if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    rc, heavy = json.loads(done.stdout.strip().splitlines()[-1])
    flag = argv[argv.index("missing.pkl") - 1]
    assert rc == 1 and heavy == [], (done.stdout, done.stderr)
    assert done.stderr.splitlines() == [f"python -m khar_mmsa: error: {flag} missing.pkl: no such feature file "
                                        f"(nothing was trained, no folder made)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "a folder was made (~/MMSA, --out)"


def test_transcripts_builder_missing_label_csv_is_one_line(tmp_path, tiny_bert) -> None:
    done = subprocess.run([sys.executable, "-m", "khar_mmsa.data.transcripts", "--labels", "MOSI/label.csv",
                           "--encoder", str(tiny_bert), "--out", "t.pkl"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["python -m khar_mmsa.data.transcripts: error: nothing written: label csv "
                                        "MOSI/label.csv: no such file"]
    assert not (tmp_path / "t.pkl").exists()


def test_top_level_help_says_which_subcommand_needs_ray(capsys) -> None:
    from khar_mmsa import cli
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Ray Tune search on the validation KeyEval (ASHA; needs pip install -e \".[ray]\")" in text
    assert "a local loop, or Ray tasks with --executor ray (needs .[ray])" in text
