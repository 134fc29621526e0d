"""KHaR's one criterion on the shipped loss defaults: the contrastive term is there for the smallest
batch that has a pair of samples (two), equal to the literal pair-set reference of eq. 21.  (Two
samples within kappa of each other have no negative, so eq. 21 is 0 for them: the pair here is a
negative one.)"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from khar_mmsa.losses.criterion import KHaRCriterion
from khar_mmsa.model.khar import KHaR
from test_contrastive import reference_loss
from test_criterion import bert4  # noqa: F401  (fixture)
from test_model import batch, small_cfg


def test_criterion_with_the_shipped_loss_defaults_keeps_the_contrastive_term_for_a_batch_of_two(bert4) -> None:
    cfg = small_cfg(bert4)  # contrastive_weight, kappa, tau, label scale: the defaults
    torch.manual_seed(0)
    model = KHaR(cfg).train()
    text, audio, vision, al, vl, _ = batch()
    two = [x[:2] for x in (text, audio, vision, al, vl)]
    labels = torch.tensor([[0.4], [2.0]])  # farther apart than kappa: each the other's negative
    out = model(*two)
    _, raw, weighted = KHaRCriterion(cfg)(out, labels)
    feats = torch.stack([v.detach().double() / v.detach().double().norm(dim=-1, keepdim=True)
                         for v in out["unimodal"].values()], dim=1)
    unit = 3 if cfg.contrastive_label_scale == "unit" else 1
    expected = reference_loss(feats, torch.tensor([0.4, 2.0], dtype=torch.float64) / unit,
                              Fraction(str(cfg.contrastive_kappa)), cfg.contrastive_temperature)
    assert cfg.contrastive_weight > 0 and expected > 0
    assert math.isclose(raw["contrastive"].item(), expected, rel_tol=1e-5), (raw["contrastive"].item(), expected)
    assert math.isclose(weighted["contrastive"].item(), cfg.contrastive_weight * expected, rel_tol=1e-5)
