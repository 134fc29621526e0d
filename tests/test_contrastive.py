"""Intensity contrastive loss (eq. 13-21) against a loop that literally enumerates the pair sets."""
import itertools
import math

import pytest
import torch

from khar_mmsa.losses.contrastive import intensity_contrastive_loss, make_positive_mask

NAMES = "VTA"  # modality order is irrelevant to the loss; names only make the pair sets readable


def reference_loss(features, labels, kappa, tau):
    """Eq. 13-21 written out: build P^i and N^i as lists of (anchor, partner) = ((sample, modality), ...)."""
    b, m, _ = features.shape
    mods = NAMES[:m]
    f = {(i, M): features[i, mods.index(M)].tolist() for i in range(b) for M in mods}
    y = labels.tolist()

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
