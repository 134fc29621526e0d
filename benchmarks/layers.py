"""Our Transformer encoder layer and CPU dropout against PyTorch's, measured where they run: in a
KHaR training step (issue 30: keep a re-implementation only where a measurement justifies it).

    python -m benchmarks.layers --quick --threads 1    # MOSI shapes, batch 16, all-MiniLM-L6-v2
    python -m benchmarks.layers --smoke                # seconds (tests)

Three KHaR models are built alike (same seed, the speed benchmark's batch and training step,
:class:`benchmarks.steppers.Stepper`):

* **ours**: as shipped (``khar_mmsa.model.attention.FusedEncoderLayer``, ``khar_mmsa.model.dropout.Dropout``);
* **nn.TransformerEncoderLayer**: every ``FusedEncoderLayer`` (audio/vision encoders and adapters)
  swapped for ``nn.TransformerEncoderLayer(d, h, ff, p, activation='gelu', batch_first=True)``
  holding the same parameters, its attention-probability dropout set to 0 (the maths of ours; see
  model/attention.py) and the key-padding mask passed as ``src_key_padding_mask``;
* **nn.Dropout**: every ``khar_mmsa`` ``Dropout`` swapped for ``nn.Dropout`` of the same rate.

Before timing, each swapped model's evaluation-mode output is checked equal to ours (the same
maths). Then one warm-up step each and ``rounds`` rounds of one step per model, interleaved so the
load of a shared machine hits all three alike; the table shows medians and each variant's step
over ours.  Dropout is a few per cent of a step, below what step times resolve on a shared
machine, so a second table times it alone: forward and backward of ours and ``nn.Dropout`` at the
shapes a step uses (encoder width and feed-forward, adapter width, expert hidden width),
interleaved, medians.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence

from . import common
from .common import Timer

logger = logging.getLogger("MMSA")

SETTINGS = {
    # dropout: (shape, p) of the dropout calls of a step (b 16, vision cut to 494 frames; Table 5 widths)
    "smoke": {"batch": 4, "seq_lens": (8, 10, 12), "rounds": 2, "dropout": [((4, 12, 16), 0.2)], "dropout_reps": 3},
    "quick": {"batch": 16, "seq_lens": (50, 375, 500), "rounds": 5, "dropout_reps": 25,
              "dropout": [((16, 494, 128), 0.2), ((16, 494, 64), 0.2), ((16, 494, 64), 0.1), ((16, 494, 32), 0.1),
                          ((16, 494, 256), 0.1)]},
}
SETTINGS["full"] = dict(SETTINGS["quick"], rounds=11, dropout_reps=51)
VARIANTS = ("ours", "nn.TransformerEncoderLayer", "nn.Dropout")


def torch_encoder_layer(ours: Any) -> Any:
    """``nn.TransformerEncoderLayer`` with the parameters of one ``FusedEncoderLayer`` and its maths
    (no attention-probability dropout); called as ours, ``layer(x, attn_mask)``."""
    from torch import nn

    class TorchEncoderLayer(nn.TransformerEncoderLayer):
        def forward(self, x, attn_mask):  # attn_mask: (b, 1, 1, n) bool, True = attend
            return super().forward(x, src_key_padding_mask=~attn_mask[:, 0, 0, :])

    layer = TorchEncoderLayer(ours.linear1.in_features, ours.self_attn.heads, ours.linear1.out_features,
                              ours.dropout.p, activation="gelu", batch_first=True, layer_norm_eps=ours.norm1.eps)
    layer.self_attn.dropout = 0.0
    layer.load_state_dict(ours.state_dict())
    return layer


def swap_modules(model: Any, kind: type, make: Any) -> int:
    """Replace every submodule of type ``kind`` by ``make(module)``; returns how many."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


def swap_for(variant: str) -> Optional[Any]:
    """The ``Stepper(swap=...)`` callable of a variant (None for ours)."""
    from torch import nn

    from khar_mmsa.model.attention import FusedEncoderLayer
    from khar_mmsa.model.dropout import Dropout
    if variant == "nn.TransformerEncoderLayer":
        return lambda model: swap_modules(model, FusedEncoderLayer, torch_encoder_layer)
    if variant == "nn.Dropout":
        return lambda model: swap_modules(model, Dropout, lambda d: nn.Dropout(d.p))
    return None


def same_outputs(a: Any, b: Any) -> float:
    """Largest |difference| of the predictions of two steppers' models in evaluation mode."""
    import torch
    outs = []
    for s in (a, b):
        s.model.eval()
        with torch.no_grad():
            outs.append(s.net(*s.khar_inputs[:3], audio_lengths=s.khar_inputs[3], vision_lengths=s.khar_inputs[4])["M"])
        s.model.train()
    return float((outs[0] - outs[1]).abs().max())


def dropout_rates(shape: Sequence[int], p: float, reps: int) -> Dict[str, float]:
    """Median seconds of forward + backward of ours and ``nn.Dropout`` at ``shape``, interleaved."""
    import torch
    from torch import nn

    from khar_mmsa.model.dropout import Dropout
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.ones(*shape)
    layers = {"ours": Dropout(p).train(), "nn.Dropout": nn.Dropout(p).train()}
    times: Dict[str, List[float]] = {k: [] for k in layers}
    for _ in range(reps + 1):
        for k, layer in layers.items():
            t0 = time.perf_counter()
            layer(x).backward(grad)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def build_steppers(encoder: Any, mode: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """One KHaR :class:`~benchmarks.steppers.Stepper` per variant, on the speed benchmark's batch."""
    import torch

    from .steppers import Stepper, make_batch
    batch = make_batch(encoder, settings["batch"], settings["seq_lens"])
    return {v: Stepper("khar", encoder, batch, torch.device("cpu"), mode, swap=swap_for(v)) for v in VARIANTS}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args, _ = common.parse_cli(argparse.ArgumentParser(description=__doc__.split("\n")[0]), argv, lambda a: "layers")
    settings = SETTINGS[args.mode]
    machine, encoder = common.machine_description(), common.text_encoder(args)
    with Timer() as total:
        steppers = build_steppers(encoder, args.mode, settings)
        diffs = {v: same_outputs(steppers["ours"], s) for v, s in steppers.items() if v != "ours"}
        for v, d in diffs.items():
            if d > 1e-4:
                raise RuntimeError(f"{v}: evaluation output differs from ours by {d:.2e}: not the same maths")
        for s in steppers.values():
            s.step()
        times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
        for _ in range(settings["rounds"]):
            for v, s in steppers.items():
                times[v].append(s.step())
        drops = [(shape, p, dropout_rates(shape, p, settings["dropout_reps"])) for shape, p in settings["dropout"]]
    med = {v: statistics.median(t) for v, t in times.items()}
    drop_table = common.markdown_table(
        ["dropout shape, p", "ours (ms, median)", "nn.Dropout (ms, median)", "nn.Dropout / ours"],
        [[f"{tuple(shape)}, {p}", f"{d['ours'] * 1e3:.2f}", f"{d['nn.Dropout'] * 1e3:.2f}",
          f"{d['nn.Dropout'] / d['ours']:.2f}"] for shape, p, d in drops])
    rows = [[v, f"{med[v] * 1000:.0f}", f"{min(times[v]) * 1000:.0f}", f"{med[v] / med['ours']:.3f}",
             "-" if v == "ours" else f"{diffs[v]:.1e}"] for v in VARIANTS]
    table = common.markdown_table(["KHaR step with", "step (ms, median)", "fastest (ms)", "step / ours",
                                   "max |eval output - ours|"], rows)
    body = (table + "\n\n"
            f"Batch {settings['batch']}, text/audio/vision {'/'.join(map(str, settings['seq_lens']))}, "
            f"{'a tiny BERT and the smoke config' if args.mode == 'smoke' else 'the paper Table 5 config, all-MiniLM-L6-v2'}; "
            f"{settings['rounds']} interleaved rounds after one warm-up step each. nn.TransformerEncoderLayer: "
            "the same parameters, attention-probability dropout 0 (the maths of ours). "
            f"1-min load average at start {machine['load_average_1min']}: compare the ratios, not the times.\n\n"
            f"Dropout alone, forward + backward, {settings['dropout_reps']} interleaved repetitions:\n\n" + drop_table)
    text = common.section("Our encoder layer and CPU dropout against PyTorch's, in a KHaR training step",
                          common.command_line("benchmarks.layers", argv), common.machine_line(machine), [],
                          "the speed benchmark's planted MOSI-shaped batch (timing only)", total.seconds, body)
    common.update_results_md(args.results_md, f"layers-{args.mode}", text)
    logger.info("\n" + table)
    return {"median_s": med, "times": times, "diffs": diffs, "dropout": drops, "results_md": args.results_md}


if __name__ == "__main__":
    main()
