"""Intensity contrastive loss (eq. 13-21) against a loop that literally enumerates the pair sets."""
import itertools
import math
from fractions import Fraction

import pytest
import torch

from khar_mmsa.losses.contrastive import intensity_contrastive_loss, make_positive_mask

NAMES = "VTA"  # modality order is irrelevant to the loss; names only make the pair sets readable


def on_grid(value):
    """The exact label a float stands for: the nearest fraction with a small denominator (labels are
    means of a few annotators' marks on a grid: 2.2, 1/3, -0.75 ...)."""
    return Fraction(value).limit_denominator(1000)


def reference_loss(features, labels, kappa, tau):
    """Eq. 13-21 written out: build P^i and N^i as lists of (anchor, partner) = ((sample, modality), ...).
    Eq. 14 is decided in exact rational arithmetic on the label grid."""
    b, m, _ = features.shape
    mods = NAMES[:m]
    f = {(i, M): features[i, mods.index(M)].tolist() for i in range(b) for M in mods}
    y = [on_grid(v) for v in labels.tolist()]
    kappa = on_grid(kappa)

    def delta(a, p):
        return math.exp(sum(u * v for u, v in zip(f[a], f[p])) / tau)

    total = 0.0
    for i in range(b):
        pos = [j for j in range(b) if j != i and abs(y[i] - y[j]) <= kappa]   # eq. 13-14
        neg = [k for k in range(b) if k != i and abs(y[i] - y[k]) > kappa]
        # eq. 15: same-sample inter-modal pairs, each unordered pair once ...
        p_inter = [((i, M), (i, N)) for M, N in itertools.combinations(mods, 2)]
        # ... plus all ordered inter-modal pairs with every positive j
        p_inter += [((i, M), (j, N)) for j in pos for M in mods for N in mods if M != N]
        n_inter = [((i, M), (k, N)) for k in neg for M in mods for N in mods if M != N]   # eq. 16
        p_intra = [((i, M), (j, M)) for j in pos for M in mods]                          # eq. 17
        n_intra = [((i, M), (k, M)) for k in neg for M in mods]                          # eq. 18
        P = p_inter + p_intra                                                             # eq. 19
        N = n_inter + n_intra                                                             # eq. 20
        assert len(set(P)) == len(P) and len(set(N)) == len(N) and not set(P) & set(N)
        num = sum(delta(a, p) for a, p in P)
        den = sum(delta(a, q) for a, q in P + N)
        total += -math.log(num / den)                                                     # eq. 21
    return total / b


def normalised(b, m, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, m, d, generator=g, dtype=dtype)
    return torch.nn.functional.normalize(x, dim=-1)


def labels_for(b, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed + 100)
    # Rounded to 0.1 so many pairs are within kappa = 0.4, some are not; exact ties occur too.
    return (torch.rand(b, generator=g, dtype=torch.float64) * 2 * scale - scale).mul(10).round().div(10)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_literal_pair_sets(m, tau):
    b, d = 7, 5
    f, y = normalised(b, m, d, seed=m), labels_for(b, seed=m)
    got = intensity_contrastive_loss(f, y, 0.4, tau)
    assert math.isclose(got.item(), reference_loss(f, y, 0.4, tau), rel_tol=1e-9, abs_tol=1e-9)


def test_sample_without_cross_sample_positive_is_exact():
    f = normalised(5, 3, 4, seed=9)
    y = torch.tensor([-3.0, 0.0, 0.1, 0.3, 2.5], dtype=torch.float64)  # samples 0 and 4: no positive
    assert not make_positive_mask(y, 0.4)[[0, 4]].any()
    got = intensity_contrastive_loss(f, y, 0.4, 0.2)
    assert math.isclose(got.item(), reference_loss(f, y, 0.4, 0.2), rel_tol=1e-9)
    y_far = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0], dtype=torch.float64)  # nobody has a positive
    got = intensity_contrastive_loss(f, y_far, 0.4, 0.2)
    assert torch.isfinite(got) and math.isclose(got.item(), reference_loss(f, y_far, 0.4, 0.2), rel_tol=1e-9)


def test_positive_mask():
    y = torch.tensor([1.0, 1.3, 2.0])  # the paper's example: 1.0 ~ 1.3, 2.0 apart (kappa 0.4)
    expected = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert torch.equal(make_positive_mask(y, 0.4), expected)
    assert torch.equal(make_positive_mask(y[:, None], 0.4), expected)


def test_batch_permutation_invariance():
    f, y = normalised(9, 3, 6, seed=1), labels_for(9, seed=1)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    a = intensity_contrastive_loss(f, y, 0.4, 0.1)
    b = intensity_contrastive_loss(f[perm], y[perm], 0.4, 0.1)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-12)


def test_aligned_positives_give_lower_loss_than_anti_aligned():
    y = torch.tensor([0.0, 0.1, 2.0, 2.1], dtype=torch.float64)  # pos pairs (0, 1) and (2, 3)
    e1, e2 = torch.eye(2, dtype=torch.float64)
    aligned = torch.stack([e1, e1, -e1, -e1])[:, None, :].expand(4, 3, 2)
    anti = torch.stack([e1, -e1, e2, -e2])[:, None, :].expand(4, 3, 2)
    assert intensity_contrastive_loss(aligned, y, 0.4, 0.1) < intensity_contrastive_loss(anti, y, 0.4, 0.1)


def test_small_temperature_float32_is_finite():
    f = normalised(64, 3, 32, seed=5, dtype=torch.float32).requires_grad_(True)
    y = labels_for(64, seed=5).float()
    loss = intensity_contrastive_loss(f, y, 0.4, 0.03)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()
    same = torch.nn.functional.normalize(torch.ones(64, 3, 32), dim=-1)  # sim = 1 everywhere
    loss = intensity_contrastive_loss(same, y, 0.4, 0.03)
    assert torch.isfinite(loss)


def test_masked_pairs_are_excluded_not_zeroed():
    # Two samples, far apart labels: P = the 3 same-sample pairs, N = 9 cross pairs.  If masked
    # pairs were zeroed before exp, each would add exp(0) = 1 and change the value.
    f = normalised(2, 3, 4, seed=2)
    y = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    assert math.isclose(intensity_contrastive_loss(f, y, 0.4, 0.1).item(),
                        reference_loss(f, y, 0.4, 0.1), rel_tol=1e-9)


def test_errors():
    with pytest.raises(ValueError):
        intensity_contrastive_loss(normalised(4, 1, 3, 0), torch.zeros(4), 0.4, 0.1)
    with pytest.raises(ValueError):
        intensity_contrastive_loss(normalised(4, 3, 3, 0), torch.zeros(5), 0.4, 0.1)
    with pytest.raises(ValueError):
        intensity_contrastive_loss(normalised(4, 3, 3, 0), torch.zeros(4), 0.4, 0.0)


# ---- eq. 14 on the label grid: exact-kappa pairs are positive whatever float rounding did ----------
def grid(low, high, step):
    """Every label of a grid, as exact fractions: MOSI [-3, 3] step 0.2, SIMS [-1, 1] step 0.1 / 0.2."""
    low, high, step = Fraction(low), Fraction(high), Fraction(step)
    n = int((high - low) / step)
    return [low + k * step for k in range(n + 1)]


def exact_mask(values, kappa):
    kappa = Fraction(kappa)
    return torch.tensor([[i != j and abs(a - b) <= kappa for j, b in enumerate(values)]
                         for i, a in enumerate(values)])


@pytest.mark.parametrize("low,high,step,scale", [
    ("-3", "3", "0.2", 1),    # MOSI / MOSEI raw scale
    ("-3", "3", "0.2", 3),    # the same labels on CLGSI's unit scale (contrastive_label_scale='unit')
    ("-1", "1", "0.1", 1),    # SIMS / SIMSv2 (means of five marks in steps of 0.5 -> 0.1 grid)
    ("-1", "1", "0.2", 1),
    ("-3", "3", "1/3", 1),    # MOSI clips with three annotators
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_exact_kappa_pair_is_positive_on_float_labels(low, high, step, scale, dtype):
    exact = [v / scale for v in grid(low, high, step)]
    kappa = Fraction("0.4")
    labels = torch.tensor([float(v) for v in exact], dtype=torch.float32).to(dtype)
    if scale != 1:  # what the criterion does: float32 labels divided by the scale in float32
        labels = torch.tensor([float(v * scale) for v in exact], dtype=torch.float32).div(scale).to(dtype)
    want = exact_mask(exact, kappa)
    assert torch.equal(make_positive_mask(labels, float(kappa)), want)
    ties = sum(abs(a - b) == kappa for a in exact for b in exact)
    if (kappa / Fraction(step) * scale).denominator == 1:
        assert ties > 0  # the grid has exact-kappa pairs, and they are all positive


def test_float32_mosi_batch_loss_matches_exact_reference():
    """The issue's case: a MOSI batch of float32 labels gave 1.72 where a float64 reference gave 1.29."""
    g = torch.Generator().manual_seed(4)
    steps = torch.randint(-15, 16, (32,), generator=g)                 # labels k * 0.2 in [-3, 3]
    labels32 = (steps.double() / 5).float()
    f64 = normalised(32, 3, 8, seed=4)
    got = intensity_contrastive_loss(f64.float(), labels32, 0.4, 0.1)
    ref = reference_loss(f64, steps.double() / 5, 0.4, 0.1)             # exact grid labels (Fractions)
    assert math.isclose(got.item(), ref, rel_tol=1e-5)
    gaps = (labels32[:, None] - labels32[None, :]).abs()
    assert ((steps[:, None] - steps[None, :]).abs() == 2).any()         # exact-kappa pairs present ...
    assert not torch.equal(gaps <= 0.4, make_positive_mask(labels32, 0.4) | torch.eye(32, dtype=torch.bool))
    # ... and a plain float32 `<=` gets some of them wrong, which is what the grid rule fixes


def test_gap_close_to_but_not_kappa_stays_negative():
    # MOSI labels with 3, 4 or 5 annotators: the nearest gaps to 0.4 that are not 0.4 are 1/60 away
    y = torch.tensor([0.0, 0.4 - 1 / 60, 0.4, 0.4 + 1 / 60, 5 / 12], dtype=torch.float32)
    mask = make_positive_mask(y, 0.4)
    assert mask[0].tolist() == [False, True, True, False, False]
