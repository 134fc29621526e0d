"""The benchmark scripts' quick path on a tiny setting (``--smoke``): tables, CSVs, the PNG and the
RESULTS.md section are produced and well formed, into ``tmp_path`` only.

Each script runs in-process with one seed, a handful of samples, one epoch and the tiny random
BERT of ``conftest.tiny_bert``; the repository's ``benchmarks/RESULTS.md``, ``benchmarks/results/``
and ``benchmarks/figure4_tsne.png`` must not be touched.
"""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402

PROTECTED = [REPO / "benchmarks" / "RESULTS.md", REPO / "benchmarks" / "figure4_tsne.png"]
TABLES = REPO / "benchmarks" / "results"


def _snapshot() -> Dict[str, Optional[str]]:
    files = list(PROTECTED) + (sorted(TABLES.rglob("*")) if TABLES.is_dir() else [])
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in files}


@pytest.fixture
def repo_untouched() -> Iterator[None]:
    """Fail if a smoke run writes into the repository's benchmark outputs."""
    before = _snapshot()
    yield
    assert _snapshot() == before, "a --smoke run touched benchmarks/RESULTS.md, results/ or the figure"


def _section(results_md: Path, key: str) -> str:
    text = results_md.read_text()
    start, end = f"<!-- benchmark:{key}:start -->", f"<!-- benchmark:{key}:end -->"
    assert text.count(start) == 1 and text.count(end) == 1, f"section {key} missing or duplicated"
    body = text.split(start)[1].split(end)[0]
    for field in ("- Command: `python -m benchmarks.", "- Machine: ", "- Date: ", "- Seeds: ", "- Data: ",
                  "- Wall time: "):
        assert field in body, f"section {key} lacks {field!r}"
    return body


def _md_table_rows(md: str) -> list:
    return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("|---")]


# ---- common -------------------------------------------------------------------------------------
def test_update_results_md_replaces_its_own_section(tmp_path: Path) -> None:
    md = tmp_path / "RESULTS.md"
    common.update_results_md(md, "a", "## A\nfirst")
    common.update_results_md(md, "b", "## B\nother")
    common.update_results_md(md, "a", "## A\nsecond")
    text = md.read_text()
    assert text.count("<!-- benchmark:a:start -->") == 1 and "second" in text and "first" not in text
    assert "## B\nother" in text and text.index("## A") < text.index("## B")


def test_results_csv_reading_and_table_format(tmp_path: Path) -> None:
    csv = tmp_path / "mosi.csv"
    pd.DataFrame({"Model": ["khar"], "seeds": ["1 2"], "MAE": [71.5], "MAE_std": [1.25],
                  "Mult_acc_7": [40.0], "Mult_acc_7_std": [0.5]}).to_csv(csv, index=False)
    stats = common.read_results_csv(csv, "khar")
    assert stats["MAE"].n == 2 and common.fmt_stat("MAE", stats["MAE"]) == "0.715 ± 0.013"
    assert common.fmt_stat("Mult_acc_7", stats["Mult_acc_7"]) == "40.00 ± 0.50"
    table = common.results_table([("KHaR", stats)], [("MAE", "MAE"), ("Mult_acc_7", "Acc-7")],
                                 paper=[("paper", {"MAE": 0.698, "Mult_acc_7": 49.13})])
    assert _md_table_rows(table)[1:] == ["| KHaR | 0.715 ± 0.013 | 40.00 ± 0.50 |", "| *paper* | 0.698 | 49.13 |"]
    per_seed = common.stats_from_runs([{"MAE": 0.7}, {"MAE": 0.8}])
    assert per_seed["MAE"].mean == 75.0 and per_seed["MAE"].std == 5.0


# ---- the scripts --------------------------------------------------------------------------------
def _check_compare(res: dict, n_rows: int, columns: list) -> None:
    md = res["table_md"].read_text()
    rows = _md_table_rows(md)
    assert len(rows) >= 1 + n_rows
    table = pd.read_csv(res["table_csv"])
    ours = table[table["source"] == "ours"]
    assert len(ours) == n_rows
    for key in columns:
        assert ours[f"{key}_mean"].map(math.isfinite).all(), key
    assert "Targets:" in md and ("**MET**" in md or "**MISSED**" in md)


def test_compare_planted_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    from benchmarks import compare
    res = compare.main(["--data", "planted", "--dataset", "mosi", "--smoke", "--out", str(tmp_path / "c"),
                        "--encoder", str(tiny_bert)])
    _check_compare(res, 4, ["MAE", "Corr", "Mult_acc_7", "Has0_F1_score", "Non0_acc_2"])
    assert res["results_md"] == tmp_path / "c" / "RESULTS.md"
    body = _section(res["results_md"], "compare-planted-mosi-smoke")
    assert "Noise floor MAE" in body and "paper Table 2" in body and "not comparable" in body
    assert res["floor_mae"] == pytest.approx(0.3 * math.sqrt(2 / math.pi), rel=1e-6)
    assert len(res["targets"]) == 3
    # KHaR's selection number: its validation MAE at the selected epoch, recorded by its trainer
    selection = res["results"]["khar"].stats["valid_MAE"]
    assert math.isfinite(selection.mean) and selection.mean != res["results"]["khar"].stats["MAE"].mean


def test_compare_planted_khar_at_other_lengths_and_size(tmp_path: Path, tiny_bert: Path, fast_mmsa,
                                                       repo_untouched) -> None:
    """The options of the Table-5-size run: sequence lengths, long-tailed lengths, KHaR overrides, a tag."""
    from benchmarks import compare
    argv = ["--data", "planted", "--dataset", "mosi", "--smoke", "--models", "khar", "--out",
            str(tmp_path / "c"), "--encoder", str(tiny_bert), "--seq-lens", "8", "30", "40",
            "--lengths", "long_tailed", "--khar-config", '{"length_bucketing": true, "modal_dim": 8}',
            "--tag", "sized"]
    res = compare.main(argv)
    body = _section(res["results_md"], "compare-planted-mosi-smoke-sized")
    assert "(8, 30, 40), long-tailed audio/vision lengths" in body and "[sized]" in body
    assert res["results"]["khar"].config["modal_dim"] == 8 and res["results"]["khar"].config["length_bucketing"]
    assert "reused from its sweep manifest" not in body
    # the same command again reuses the finished runs, and its section says the wall time is its own alone
    n = len(res["results"]["khar"].seeds)
    again = compare.main(argv)
    body = _section(again["results_md"], "compare-planted-mosi-smoke-sized")
    assert f"{n} of its {n} runs {'was' if n == 1 else 'were'} finished by earlier commands" in body
    assert again["results"]["khar"].stats["MAE"].mean == res["results"]["khar"].stats["MAE"].mean


def test_compare_transcripts_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    if not common.MOSI_LABEL_CSV.is_file():
        pytest.skip(f"{common.MOSI_LABEL_CSV} not available")
    from benchmarks import compare
    res = compare.main(["--data", "transcripts", "--smoke", "--out", str(tmp_path / "t"),
                        "--encoder", str(tiny_bert), "--models", "khar", "tfn"])
    _check_compare(res, 3, ["MAE", "Corr", "Mult_acc_7"])
    md = res["table_md"].read_text()
    assert "Text-only floor" in md and "real CMU-MOSI transcripts" in md
    assert not list(REPO.rglob("transcripts-*.pkl")), "a pickle landed in the repository"


def test_ablations_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    from benchmarks import ablations
    chosen = ["V+A", "V+A+T (KHaR)", "MLP_m", "w/o CL", "MUL"]
    res = ablations.main(["--smoke", "--out", str(tmp_path / "a"), "--encoder", str(tiny_bert),
                          "--variants", *chosen])
    rows = _md_table_rows(res["table_md"].read_text())
    assert rows[0].startswith("| Group | Variant | switch | MAE | Corr | Acc-7 |") and "paper MAE" in rows[0]
    assert [r.split(" | ")[1] for r in rows[1:]] == chosen
    table = pd.read_csv(res["table_csv"])
    assert (table["source"] == "ours").sum() == len(chosen)
    assert table.loc[table["source"] == "ours", "MAE_mean"].map(math.isfinite).all()
    _section(res["results_md"], "ablations-planted-mosi-smoke")


def test_tsne_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    from benchmarks import tsne
    res = tsne.main(["--smoke", "--out", str(tmp_path / "f"), "--encoder", str(tiny_bert)])
    png = res["figure"]
    assert png == tmp_path / "f" / "figure4_tsne.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [t for t, _ in res["panels"]] == [t for t, _ in tsne.PANELS]
    for _, panel in res["panels"]:
        assert panel["xy"].shape == (panel["features"].shape[0], 2)
        assert panel["features"].shape[0] == len(panel["labels"]) == tsne.SIZES["smoke"][2]
    assert "figure4_tsne.png" in _section(res["results_md"], "tsne-planted-mosi-smoke")


def test_speed_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    from benchmarks import speed
    res = speed.main(["--smoke", "--scaling", "--out", str(tmp_path / "s"), "--encoder", str(tiny_bert)])
    assert set(res["results"]) == set(speed.MODELS)
    for r in res["results"].values():
        assert r["step_s"] > 0 and r["samples_per_s"] > 0 and r["params"] > 0
        assert r["gflop_per_step"] > 0 and r["matmul_gflops"] > 0
        assert r["share_of_matmul"] == pytest.approx(r["gflop_per_step"] / r["step_s"] / r["matmul_gflops"])
    k = res["results"]["khar"]
    assert k["share_full_s"] > 0 and k["criterion_fwd_s"] > 0 and math.isfinite(k["own_loss_share"])
    assert [n for n, _, _ in res["targets"]][:1] == ["KHaR training step at >= 70% of the measured fp32 matmul rate "
                                                     "(1 thread(s))"]  # fast_mmsa: one thread
    assert [speed.share_target(n) for n in (1, 2, 16)] == [0.70, 0.55, 0.55]
    s = speed.SETTINGS["smoke"]
    assert [(r["batch"], r["frames"]) for r in res["scaling"]] == \
        [(b, f) for b in s["scaling_batches"] for f in s["scaling_frames"]]
    table = pd.read_csv(res["table_csv"])
    assert table[table["table"] == "models"]["model"].tolist() == list(speed.MODELS)
    assert (table["table"] == "scaling").sum() == len(res["scaling"])
    assert "KHaR scaling" in _section(res["results_md"], "speed-smoke")
    only = speed.main(["--smoke", "--scaling-only", "--out", str(tmp_path / "s"), "--encoder", str(tiny_bert)])
    assert only["results"] == {} and len(only["scaling"]) == len(res["scaling"])
    assert "KHaR scaling" in _section(only["results_md"], "speed-scaling-smoke")


def test_attention_smoke(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched) -> None:
    """benchmarks/attention.py: the kernel's rates beside the matmul rate, and its share of a step."""
    from benchmarks import attention
    res = attention.main(["--smoke", "--out", str(tmp_path / "a"), "--encoder", str(tiny_bert)])
    assert [r["shape"] for r in res["rows"]] == [tuple(s) for s in attention.SETTINGS["smoke"]["shapes"]]
    for r in res["rows"]:
        assert r["forward_gflops"] > 0 and r["backward_gflops"] > 0 and r["matmul_gflops"] > 0
        b, h, n, d = r["shape"]
        assert r["forward_gflops"] == pytest.approx(4 * b * h * n * n * d / 1e9 / r["forward_s"])
    step = res["step"]
    assert 0 < step["attention_s"] < step["profiled_s"] and 0 < step["attention_share"] < 1
    body = _section(res["results_md"], "attention-smoke")
    assert "share of matmul rate" in body and f"{step['attention_share']:.0%}" in body


class _FakeCompile:
    """Stands in for ``torch.compile`` (compiling the real model takes minutes on this CPU): each
    wrapper runs the model, sleeps ``delay`` s on its first call (the "compilation"), counts the
    calls of all wrappers, and with ``error`` raises it on the first call as inductor does."""

    def __init__(self, delay: float = 0.0, error: Optional[Exception] = None) -> None:
        self.delay, self.error, self.calls = delay, error, 0

    def __call__(self, model, **kwargs):
        import time
        first = [True]

        def compiled(*args, **kwargs):
            self.calls += 1
            if first.pop() if first else False:
                time.sleep(self.delay)
                if self.error is not None:
                    raise self.error
            return model(*args, **kwargs)
        return compiled


def test_speed_compile_and_amp_rows(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched, monkeypatch) -> None:
    """--compile --amp: KHaR's four rows; the compilation is timed apart from the steps, FLOPs come
    from an uncompiled step (the compiled model runs exactly compile + warm-up + timed steps)."""
    import torch

    from benchmarks import speed
    fake = _FakeCompile(delay=0.5)
    monkeypatch.setattr(torch, "compile", fake)
    res = speed.main(["--smoke", "--models", "khar", "tfn", "--compile", "--amp", "--out", str(tmp_path / "s"),
                      "--encoder", str(tiny_bert)])
    keys = ["khar", "khar+compile", "khar+amp", "khar+compile+amp", "tfn"]
    assert list(res["results"]) == keys
    s = speed.SETTINGS["smoke"]
    assert fake.calls == 2 * (1 + s["warmup"] + s["steps"])  # two compiled rows, none counted through it
    r = res["results"]
    for key in ("khar+compile", "khar+compile+amp"):
        assert r[key]["compile_s"] >= 0.5 > max(r[key]["step_times"])
        assert r[key]["gflop_per_step"] == pytest.approx(r["khar"]["gflop_per_step"], rel=0.01)
    assert all("compile_s" not in r[k] for k in ("khar", "khar+amp", "tfn"))
    assert "own_loss_share" in r["khar"] and "own_loss_share" not in r["khar+compile"]
    table = pd.read_csv(res["table_csv"])
    assert table[table["table"] == "models"]["model"].tolist() == keys
    md = res["table_md"].read_text()
    for title in ("| KHaR |", "| KHaR (compile) |", "| KHaR (amp) |", "| KHaR (compile, amp) |", "| TFN |"):
        assert title in md
    assert "compile + first compiled step (s)" in md and res["table_md"].name == "speed-smoke-compile-amp.md"


def test_speed_reports_a_failing_compile_in_its_row(tmp_path: Path, tiny_bert: Path, fast_mmsa, repo_untouched,
                                                    monkeypatch) -> None:
    """torch.compile failing (as inductor without a C++ compiler) gives a row naming the error, no crash."""
    import torch

    from benchmarks import speed
    error = RuntimeError("backend='inductor' raised:\nInvalidCxxCompiler: No working C++ compiler found\nmore detail")
    monkeypatch.setattr(torch, "compile", _FakeCompile(error=error))
    res = speed.main(["--smoke", "--models", "khar", "--compile", "--out", str(tmp_path / "s"),
                      "--encoder", str(tiny_bert), "--tag", "2-threads"])
    assert res["table_md"].name == "speed-smoke-compile-2-threads.md"  # --tag: its own section and files
    assert "<!-- benchmark:speed-smoke-compile-2-threads:start -->" in res["results_md"].read_text()
    failed = res["results"]["khar+compile"]
    assert failed["compile_error"] == ("RuntimeError: backend='inductor' raised: "
                                       "InvalidCxxCompiler: No working C++ compiler found")
    assert "step_s" not in failed and res["results"]["khar"]["step_s"] > 0
    assert ("| KHaR (compile) | 0.1 | torch.compile failed: RuntimeError: backend='inductor' raised: "
            "InvalidCxxCompiler: No working C++ compiler found |") in res["table_md"].read_text()
    assert [n for n, _, _ in res["targets"]] == ["KHaR training step at >= 70% of the measured fp32 matmul rate "
                                                 "(1 thread(s))", "KHaR's own losses take < 10% of its step"]


def test_flop_count_of_cpu_attention_is_the_unfused_count() -> None:
    """The formulas added for the CPU flash kernels count what the unfused (math) path counts."""
    import torch
    from torch.nn import functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import rates
    rates.register_cpu_attention_flops()
    q, k, v = (torch.randn(2, 3, 7, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)

    def count(fn):
        with FlopCounterMode(display=False) as c:
            fn(q, k, v).sum().backward()
        return c.get_total_flops()

    def unfused(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
    fused = count(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert fused == count(unfused) == 3 * 4 * 2 * 3 * 7 * 7 * 4


def test_loading_smoke(tmp_path: Path, repo_untouched) -> None:
    from benchmarks import loading
    res = loading.main(["--smoke", "--out", str(tmp_path / "l")])
    assert set(res["results"]) == {"pickle.load (MMSA, no checks)", "pickles.load_pickle (restricted, size-checked)",
                                   "validate_features", "file_digest (SHA-256)"}
    assert all(s > 0 for s in res["results"].values())
    body = _section(tmp_path / "l" / "RESULTS.md", "loading-smoke")
    assert "file_digest (SHA-256)" in body and "MB/s" in body
    assert not (tmp_path / "l" / "features.pkl").exists()


def test_results_md_command_lines_carry_no_absolute_paths(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    line = common.command_line("benchmarks.compare", ["--quick", "--out", str(work), f"--labels={tmp_path}/l.csv",
                                                      "--khar-config", '{"epochs": 2}', "--seeds", "1"])
    assert " /" not in line and "=/" not in line  # every path relative
    relative = Path(line.split("--out ")[1].split()[0])
    assert (REPO / relative).resolve() == work.resolve()  # runnable from the checkout's root
    assert "--khar-config '{\"epochs\": 2}'" in line and "--labels=" in line


def test_transcripts_pickle_is_keyed_by_its_inputs_content(tmp_path: Path, monkeypatch) -> None:
    """A label CSV rewritten with other contents (same name, same size) builds a new pickle."""
    built = []
    monkeypatch.setattr("khar_mmsa.data.transcripts.build_transcript_dataset",
                        lambda labels, out, tok, **kw: built.append(out) or Path(out).write_bytes(b"x"))
    monkeypatch.setattr("khar_mmsa.io.pickles.load_pickle",
                        lambda path, **kw: {"train": {"regression_labels": [0]}, "meta": {}})
    labels, tok = tmp_path / "label.csv", tmp_path / "tok"
    tok.mkdir()
    (tok / "vocab.txt").write_text("a\nb\n")
    labels.write_text("id,label\n1,0.5\n")
    first, _ = common.make_transcripts(tmp_path, tok, labels)
    assert common.make_transcripts(tmp_path, tok, labels)[0] == first and len(built) == 1  # reused
    labels.write_text("id,label\n1,0.7\n")  # same size, other labels
    second, _ = common.make_transcripts(tmp_path, tok, labels)
    assert second != first and len(built) == 2
    (tok / "vocab.txt").write_text("a\nc\n")  # another tokenizer, same size
    assert common.make_transcripts(tmp_path, tok, labels)[0] not in (first, second) and len(built) == 3
