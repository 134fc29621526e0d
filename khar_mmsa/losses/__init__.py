"""KHaR losses: MoE balance (eq. 6), MIB pieces (eq. 12, App. C), intensity contrastive (eq. 13-21).

They are weighted and added in one place, :class:`khar_mmsa.losses.criterion.KHaRCriterion`.
"""
from khar_mmsa.losses.balance import balance_loss, cv_squared
from khar_mmsa.losses.contrastive import intensity_contrastive_loss, make_positive_mask
from khar_mmsa.losses.information_bottleneck import gaussian_kl_to_standard_normal, reparameterize

__all__ = [
    "balance_loss",
    "cv_squared",
    "intensity_contrastive_loss",
    "make_positive_mask",
    "gaussian_kl_to_standard_normal",
    "reparameterize",
]
