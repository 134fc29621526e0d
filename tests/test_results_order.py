"""RESULTS.md opens on current results and keeps its order when any script reruns: a section is
replaced where it stands (in RESULTS.md or in RESULTS-archive.md beside it), a new one goes where
``benchmarks.common.RESULTS_ORDER`` / ``RESULTS_ARCHIVED`` put it.  And the campaign's tables,
rendered from the committed records through ``python -m benchmarks.campaign render``, print the
paired verdicts the issue recomputed (full KHaR vs its text path p 0.14, vs the floor p 0.06; KHaR
vs Self-MM on test 5/5 seeds, p 0.05)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402


def _keys(path: Path):
    return re.findall(r"<!-- benchmark:(\S+?):start -->", path.read_text())


def _section(title: str) -> str:
    return f"## {title}\n\n- Command: `python -m benchmarks.x`\n- Machine: m\n\nbody {title}"


def test_a_rerun_keeps_each_section_where_it_stands_and_a_new_one_goes_by_the_declared_order(tmp_path):
    md, archive = tmp_path / "RESULTS.md", tmp_path / common.RESULTS_ARCHIVE
    for key in ("campaign-lr", "walk-early", "campaign-final", "speed-quick", "loading-quick"):
        common.update_results_md(md, key, _section(key))       # no archive yet: all in RESULTS.md
    archive.write_text("# archive\n\n<!-- benchmark:speed-moved:start -->\nmoved by hand\n"
                       "<!-- benchmark:speed-moved:end -->\n")
    common.update_results_md(md, "compare-transcripts-mosi-quick", _section("old compare"))   # archived pattern
    assert _keys(archive) == ["speed-moved", "compare-transcripts-mosi-quick"] and "old compare" not in md.read_text()
    common.update_results_md(md, "campaign-protocol", _section("protocol"))     # first in the order
    common.update_results_md(md, "campaign-walk", _section("walk"))             # between lr and final
    common.update_results_md(md, "gpu-check", _section("gpu"))                  # before speed
    common.update_results_md(md, "something-new", _section("new"))              # no pattern: last
    order = ["campaign-protocol", "campaign-lr", "campaign-walk", "campaign-final", "gpu-check", "speed-quick",
             "loading-quick", "walk-early", "something-new"]
    assert _keys(md) == order
    # reruns: in place, in whichever file holds the section
    assert common.update_results_md(md, "loading-quick", _section("loading again")) == md
    assert common.update_results_md(md, "compare-transcripts-mosi-quick", _section("compare again")) == archive
    assert common.update_results_md(md, "walk-early", _section("walk again")) == md          # archived pattern
    assert common.update_results_md(md, "speed-moved", _section("moved again")) == archive   # current pattern
    assert _keys(md) == order and _keys(archive) == ["speed-moved", "compare-transcripts-mosi-quick"]
    assert "body loading again" in md.read_text() and "body compare again" in archive.read_text()
    assert "body old compare" not in archive.read_text() and md.read_text().count("benchmark:loading-quick:start") == 1
    # each section names the code that wrote it
    from khar_mmsa.io.identity import code_version
    assert md.read_text().count(f"- Code version: {code_version()}") == len(order)


def test_without_an_archive_beside_it_every_section_lands_in_results_md(tmp_path):
    md = tmp_path / "RESULTS.md"        # e.g. a --smoke run's own RESULTS.md
    common.update_results_md(md, "walk-transcripts-mosi-quick", _section("walk"))
    assert _keys(md) == ["walk-transcripts-mosi-quick"] and not (tmp_path / common.RESULTS_ARCHIVE).exists()


def test_render_from_the_committed_records_keeps_the_order_and_prints_the_paired_verdicts(tmp_path):
    for name in ("RESULTS.md", common.RESULTS_ARCHIVE):
        shutil.copy(REPO / "benchmarks" / name, tmp_path / name)
    before, archive = _keys(tmp_path / "RESULTS.md"), (tmp_path / common.RESULTS_ARCHIVE).read_text()
    assert before[:6] == ["campaign-protocol", "campaign-lr", "campaign-walk", "campaign-choices", "campaign-table3",
                          "campaign-final"]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "benchmarks.campaign", "render", "--work", str(tmp_path / "w"),
                           "--results-md", str(tmp_path / "RESULTS.md"), "--tables-dir", str(tmp_path / "tables")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _keys(tmp_path / "RESULTS.md") == before and (tmp_path / common.RESULTS_ARCHIVE).read_text() == archive
    walk = (tmp_path / "tables" / "campaign-walk.md").read_text()
    assert ("Full KHaR against KHaR's text path, linear head, validation MAE, paired: -0.011 [-0.027, +0.005], "
            "p 0.138, 4/5 seeds better: undecided") in walk
    assert "Full KHaR against Text-only floor (encoder + linear head), validation MAE, paired: -0.019 " in walk
    assert "p 0.061, 4/5 seeds better: undecided" in walk
    final = (tmp_path / "tables" / "campaign-final.md").read_text()
    assert "| Self-MM (MMSA) | MAE | -0.011 [-0.022, +0.000] | 0.050 | 5/5 | undecided |" in final
    assert "no paired bootstrap over test clips" in final and "update_epochs=1 (MMSA's: early_stop=8, " \
        "update_epochs=4)" in final
