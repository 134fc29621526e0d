"""benchmarks/gpu_check.py: the GPU check's dry mode runs its whole code path on the CPU, and its
verdicts, encoders and device command are what the README promises."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _section(results_md: Path, key: str) -> str:
    text = results_md.read_text()
    m = re.search(rf"<!-- benchmark:{re.escape(key)}:start -->(.*?)<!-- benchmark:{re.escape(key)}:end -->", text, re.S)
    assert m, f"no section {key} in {results_md}"
    return m.group(1)


class _CountingCompile:
    """Stands in for ``torch.compile`` (dynamo tracing KHaR takes tens of seconds here): records the
    backend asked for and runs the model itself."""

    def __init__(self) -> None:
        self.backends: list = []
        self.calls = 0

    def __call__(self, model, backend="inductor", **kwargs):
        self.backends.append(backend)

        def compiled(*args, **kw):
            self.calls += 1
            return model(*args, **kw)
        return compiled


def test_gpu_check_dry_runs_every_part_and_writes_its_section(tmp_path: Path, fast_mmsa, monkeypatch) -> None:
    import torch

    from benchmarks import gpu_check
    fake = _CountingCompile()
    monkeypatch.setattr(torch, "compile", fake)
    committed = (REPO / "benchmarks" / "RESULTS.md").read_bytes()
    res = gpu_check.main(["--dry", "--out", str(tmp_path / "g")])
    assert (REPO / "benchmarks" / "RESULTS.md").read_bytes() == committed  # a dry run writes only into --out
    s = gpu_check.SETTINGS["dry"]
    assert list(res["mosi"]) == ["khar", "khar+compile", "self_mm", "self_mm+compile"]
    assert list(res["paper"]) == ["khar", "self_mm"]
    assert fake.backends == ["eager", "eager"]  # KHaR and Self-MM, each compiled once, dynamo without codegen
    assert fake.calls == 2 * (1 + s["warmup"] + s["steps"])  # compiling step, warm-up, timed steps; none counted
    for rows in (res["mosi"], res["paper"]):
        for key, r in rows.items():
            assert r["step_s"] > 0 and r["gflop_per_step"] > 0 and r["peak_mem_mib"] >= 0
            assert r["share_of_matmul"] == pytest.approx(r["gflop_per_step"] / r["step_s"] / r["matmul_gflops"])
            assert ("compile_s" in r) == key.endswith("+compile")
    for model in ("khar", "self_mm"):  # compiled rows count FLOPs on an uncompiled step: the same work
        assert res["mosi"][model + "+compile"]["gflop_per_step"] == pytest.approx(res["mosi"][model]["gflop_per_step"],
                                                                                  rel=0.01)
    run = res["run"]["result"]
    assert 0 < run.stats["MAE"].mean and run.wall_s > 0 and run.config["epochs"] == 2
    assert run.config["pretrain_epochs"] == 2 and "pretrain_adapters" not in run.config  # pretraining stays on
    body = _section(res["results_md"], "gpu-check-dry")
    assert res["results_md"] == tmp_path / "g" / "RESULTS.md"
    for text in ("| KHaR (compile) |", "| Self-MM (compile) |", "The paper's size", "Two-epoch run",
                 "randomly initialised BertConfig", "Dry run on the CPU", "Targets:"):
        assert text in body
    assert [n for n, _, _ in res["targets"]][:2] == [
        "KHaR's step no slower than Self-MM's (MOSI shapes, eager)",
        "KHaR at >= 10% of the fp32 matmul rate (MOSI shapes, eager)"]


def test_gpu_check_verdicts_compare_khar_with_self_mm() -> None:
    from benchmarks.gpu_check import target_lines

    def row(step, share):
        return {"step_s": step, "share_of_matmul": share, "achieved_gflops": 1.0, "matmul_gflops": 10.0}
    verdicts = target_lines({"khar": row(0.10, 0.10), "self_mm": row(0.10, 0.5),
                             "khar+compile": row(0.2, 0.09), "self_mm+compile": row(0.1, 0.5),
                             }, {"khar": row(1.0, 0.2), "self_mm": {"compile_error": "x"}})
    assert [(n, ok) for n, ok, _ in verdicts] == [
        ("KHaR's step no slower than Self-MM's (MOSI shapes, eager)", True),      # equal steps: no slower
        ("KHaR at >= 10% of the fp32 matmul rate (MOSI shapes, eager)", True),    # exactly 10 %
        ("KHaR's step no slower than Self-MM's (MOSI shapes, compiled)", False),
        ("KHaR at >= 10% of the fp32 matmul rate (MOSI shapes, compiled)", False)]  # a failed row gives no verdict


def test_gpu_check_encoders_have_the_named_sizes(tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from benchmarks.gpu_check import BERT_BASE_SIZE, random_bert
    folder = random_bert(tmp_path / "b", {**BERT_BASE_SIZE, "num_hidden_layers": 1}, vocab=30522)
    cfg = AutoConfig.from_pretrained(folder)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.vocab_size) == (768, 12, 3072, 30522)
    assert AutoTokenizer.from_pretrained(folder)("a b")["input_ids"][0] == 2  # [CLS] of the small vocabulary


def test_gpu_check_refuses_to_run_without_a_gpu_unless_dry(tmp_path: Path, monkeypatch) -> None:
    import torch

    from benchmarks import gpu_check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device here; on a CPU run it with --dry"):
        gpu_check.main(["--out", str(tmp_path)])


def test_gpu_check_device_command_is_one_line_in_the_benchmarks_readme() -> None:
    lines = [ln for ln in (REPO / "benchmarks" / "README.md").read_text().splitlines()
             if ln.strip().startswith("python -m benchmarks.gpu_check")]
    assert [ln.split("#")[0].strip() for ln in lines] == ["python -m benchmarks.gpu_check",
                                                          "python -m benchmarks.gpu_check --dry"]
