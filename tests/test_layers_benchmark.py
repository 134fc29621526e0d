"""benchmarks/layers.py: the swapped-in PyTorch layers compute what ours do, every layer is swapped,
and its smoke run writes both tables."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_torch_encoder_layer_is_ours_in_training_without_dropout() -> None:
    from benchmarks.layers import torch_encoder_layer
    from khar_mmsa.model.attention import FusedEncoderLayer, key_padding_mask
    from khar_mmsa.model.encoders import lengths_to_mask
    torch.manual_seed(0)
    ours = FusedEncoderLayer(16, 4, 24, 0.0).train()
    ref = torch_encoder_layer(ours).train()
    assert isinstance(ref, torch.nn.TransformerEncoderLayer) and ref.self_attn.dropout == 0.0
    x = torch.randn(3, 9, 16)
    mask = lengths_to_mask(torch.tensor([9, 4, 6]), 9)
    torch.testing.assert_close(ref(x, key_padding_mask(mask))[mask], ours(x, key_padding_mask(mask))[mask],
                               rtol=0, atol=1e-5)


def test_smoke_swaps_every_layer_and_writes_both_tables(tmp_path: Path, tiny_bert: Path, fast_mmsa) -> None:
    from benchmarks import layers
    from khar_mmsa.model.attention import FusedEncoderLayer
    from khar_mmsa.model.dropout import Dropout
    from khar_mmsa.config import KHaRConfig
    from khar_mmsa.model.khar import KHaR
    committed = (REPO / "benchmarks" / "RESULTS.md").read_bytes()
    res = layers.main(["--smoke", "--out", str(tmp_path / "l"), "--encoder", str(tiny_bert)])
    assert (REPO / "benchmarks" / "RESULTS.md").read_bytes() == committed
    assert set(res["median_s"]) == set(layers.VARIANTS) and all(v > 0 for v in res["median_s"].values())
    assert all(d <= 1e-4 for d in res["diffs"].values())
    assert [(tuple(s), p) for s, p, _ in res["dropout"]] == [(tuple(s), p) for s, p in layers.SETTINGS["smoke"]["dropout"]]
    body = res["results_md"].read_text()
    assert "| nn.TransformerEncoderLayer |" in body and "nn.Dropout / ours" in body
    # every layer of the kind is swapped, none left behind
    from benchmarks.steppers import build_args, make_batch
    batch = make_batch(tiny_bert, 2, (8, 10, 12))
    for variant, kind in (("nn.TransformerEncoderLayer", FusedEncoderLayer), ("nn.Dropout", Dropout)):
        model = KHaR(KHaRConfig.from_mmsa_args(build_args("khar", tiny_bert, batch, torch.device("cpu"), "smoke")))
        before = sum(type(m) is kind for m in model.modules())
        layers.swap_for(variant)(model)
        assert before > 0 and sum(type(m) is kind for m in model.modules()) == 0

