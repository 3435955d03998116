"""Tests for gcg.metrics: closed forms, identities and known-overlap point clouds."""

import numpy as np
import pytest
import scipy.linalg
import torch

from gcg.metrics import (
    energy_distance,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_score,
    kid,
    precision_recall,
    spatial_features,
)


def random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1) * np.eye(d)


def scipy_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------- Fréchet distance


def test_fd_of_a_set_with_itself_is_zero_and_fd_is_symmetric():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    b = rng.standard_normal((400, 32)) * 2 + 1
    scale = np.trace(np.cov(a, rowvar=False))
    assert abs(fid_from_features(a, a)) < 1e-9 * scale
    assert fid_from_features(a, b) == pytest.approx(fid_from_features(b, a), rel=1e-10)
    assert fid_from_features(a, b) > 1.0


def test_fd_of_a_set_with_itself_is_zero_with_singular_covariance():
    # 20 samples in 64 dimensions: rank-19 covariance, where sqrtm(S1 S2) is ill-posed
    a = np.random.default_rng(1).standard_normal((20, 64))
    mu, sigma = feature_statistics(a)
    assert np.linalg.matrix_rank(sigma) == 19
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-10 * np.trace(sigma)


@pytest.mark.parametrize("na,nb", [(12, 30), (40, 40), (60, 25)])
def test_fid_from_features_sample_space_path_matches_covariance_path(na, nb):
    # fewer samples than dimensions: the trace term is a nuclear norm of the [Na, Nb] matrix A B^T
    rng = np.random.default_rng(na + nb)
    a = rng.standard_normal((na, 60)) @ rng.standard_normal((60, 60))
    b = rng.standard_normal((nb, 60)) * 1.5 + 0.2
    via_stats = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    # rank-deficient covariances: the D x D path carries ~sqrt(machine eps) round-off in the
    # square roots of their null spaces, the sample-space path none
    assert fid_from_features(a, b) == pytest.approx(via_stats, rel=1e-7)
    assert abs(fid_from_features(a, a)) < 1e-10 * np.trace(np.cov(a, rowvar=False))


def test_fd_commuting_covariances_closed_form():
    # diagonal covariances commute: FD = |dmu|^2 + sum (sqrt a_i - sqrt b_i)^2, zeros included
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 3, 10)
    b = rng.uniform(0, 3, 10)
    a[:3] = 0.0  # singular
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_fd_non_commuting_covariances_closed_form_2d():
    # For 2x2 A with non-negative eigenvalues, Tr A^{1/2} = sqrt(Tr A + 2 sqrt(det A)).
    s1 = np.array([[2.0, 0.9], [0.9, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-12)
    # the naive "sqrt of each matrix" answer (right only for commuting S1, S2) differs
    naive = ((mu1 - mu2) ** 2).sum() + ((scipy.linalg.sqrtm(s1) - scipy.linalg.sqrtm(s2)) ** 2).sum()
    assert abs(naive - expected) > 1e-3


@pytest.mark.parametrize("d", [3, 16, 64])
def test_fd_matches_scipy_sqrtm_on_random_spd(d):
    rng = np.random.default_rng(d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-9)


def test_fd_accepts_tensors_and_scalars():
    assert frechet_distance(torch.tensor([0.0]), torch.tensor([[4.0]]), torch.tensor([1.0]), torch.tensor([[1.0]])) == pytest.approx(
        1.0 + (2.0 - 1.0) ** 2
    )
    assert frechet_distance(0.0, 4.0, 1.0, 1.0) == pytest.approx(2.0)


def test_fd_bad_shapes_have_clear_errors():
    with pytest.raises(ValueError, match="same length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\[3, 3\]"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        fid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"2-D array of features"):
        fid_from_features(np.zeros((5, 3, 2)), np.zeros((5, 3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))


def test_feature_statistics_match_numpy():
    x = np.random.default_rng(3).standard_normal((50, 6))
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), atol=1e-6)


def test_fid_of_two_gaussian_samples_approaches_closed_form():
    rng = np.random.default_rng(4)
    n, d = 20000, 4
    s1, s2 = random_spd(rng, d), random_spd(rng, d)
    mu2 = np.full(d, 0.5)
    a = rng.multivariate_normal(np.zeros(d), s1, n)
    b = rng.multivariate_normal(mu2, s2, n)
    exact = scipy_frechet(np.zeros(d), s1, mu2, s2)
    assert fid_from_features(a, b) == pytest.approx(exact, rel=0.05)


def test_spatial_features_keep_first_channels_in_nhwc_order():
    fmap = torch.arange(2 * 9 * 3 * 4, dtype=torch.float32).reshape(2, 9, 3, 4)
    out = spatial_features(fmap, num_channels=7)
    assert out.shape == (2, 3 * 4 * 7)
    # channels-last: the first 7 features are the 7 channels at pixel (0, 0)
    torch.testing.assert_close(out[1, :7], fmap[1, :7, 0, 0])
    torch.testing.assert_close(out[1, 7:14], fmap[1, :7, 0, 1])


# ---------------------------------------------------------------- Inception Score


def test_inception_score_is_one_for_constant_predictions():
    probs = torch.softmax(torch.randn(1, 7), 1).repeat(100, 1)
    score = inception_score(probs, splits=10)
    assert score.mean == pytest.approx(1.0, abs=1e-12)
    assert score.std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_equals_num_classes_for_confident_uniform_predictions():
    k = 5
    labels = torch.arange(100) % k  # each of the 10 splits holds every class twice
    one_hot = torch.nn.functional.one_hot(labels, k).double()
    assert inception_score(one_hot, splits=10).mean == pytest.approx(k, rel=1e-12)
    # confident logits are detected as logits and give ~K
    logits = 40.0 * one_hot
    assert inception_score(logits, splits=10).mean == pytest.approx(k, rel=1e-6)
    assert inception_score(logits.numpy(), splits=1, from_logits=True).mean == pytest.approx(k, rel=1e-6)


def test_inception_score_matches_direct_formula():
    logits = torch.randn(64, 10, dtype=torch.float64) * 2
    p = torch.softmax(logits, 1)
    p_y = p.mean(0)
    expected = torch.exp((p * (p.log() - p_y.log())).sum(1).mean())
    assert inception_score(logits, splits=1).mean == pytest.approx(float(expected), rel=1e-12)
    assert inception_score(p, splits=1).mean == pytest.approx(float(expected), rel=1e-12)


def test_inception_score_uses_ten_splits_by_default():
    logits = torch.randn(110, 10, dtype=torch.float64) * 2  # 110 divides into 10 and into 11 splits
    default = inception_score(logits)
    assert default == inception_score(logits, splits=10)  # the protocol of Salimans et al. 2016
    assert default != inception_score(logits, splits=11)


def test_inception_score_bad_splits():
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.rand(5, 3), splits=10)


# ---------------------------------------------------------------- precision / recall


def _cloud(n, center, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + torch.as_tensor(center, dtype=torch.float32)


def test_precision_recall_identical_sets():
    x = _cloud(300, 0.0)
    assert precision_recall(x, x.clone(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_sets():
    real, fake = _cloud(300, 0.0, seed=1), _cloud(300, 100.0, seed=2)
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_subset_has_full_precision_and_partial_recall():
    # real = two far-apart clusters, fake = one of them: every fake is real (precision 1),
    # half the real data is never generated (recall ~ 0.5)
    real = torch.cat([_cloud(200, 0.0, seed=3), _cloud(200, 50.0, seed=4)])
    fake = real[:200]
    p, r = precision_recall(real, fake, k=3)
    assert p == 1.0
    assert r == pytest.approx(0.5, abs=0.01)
    # swapping roles swaps the answers
    p2, r2 = precision_recall(fake, real, k=3)
    assert (p2, r2) == pytest.approx((r, p), abs=0.01)


def test_precision_recall_is_independent_of_block_size():
    real, fake = _cloud(257, 0.0, seed=5), _cloud(190, 0.7, seed=6)
    full = precision_recall(real, fake, k=3, block_size=10_000)
    assert 0.0 < full.precision < 1.0 and 0.0 < full.recall < 1.0
    assert precision_recall(real, fake, k=3, block_size=37) == full


def test_precision_recall_matches_brute_force():
    real, fake = _cloud(120, 0.0, d=3, seed=7), _cloud(90, 0.5, d=3, seed=8)
    k = 4
    d_rr, d_ff, d_rf = torch.cdist(real, real), torch.cdist(fake, fake), torch.cdist(real, fake)
    r_real = d_rr.sort(1).values[:, k]  # index 0 is the point itself
    r_fake = d_ff.sort(1).values[:, k]
    precision = (d_rf <= r_real[:, None]).any(0).float().mean()
    recall = (d_rf <= r_fake[None, :]).any(1).float().mean()
    got = precision_recall(real, fake, k=k)
    assert got.precision == pytest.approx(float(precision), abs=1.5 / 90)
    assert got.recall == pytest.approx(float(recall), abs=1.5 / 120)


def test_precision_recall_counts_a_point_on_the_ball_boundary_as_inside():
    # k = 1: the reals 0, 1, 2 have radius 1, so the fake 3 lies exactly on the ball of 2 (a tie,
    # counted as inside, Kynkaenniemi et al. 2019 Eq. (1) uses <=) and the fake 10 outside every ball
    real, fake = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[3.0], [10.0]])
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(fake, real, k=1) == (1.0, 0.5)  # the same tie, on the recall side


def test_precision_recall_bad_k():
    with pytest.raises(ValueError, match="k=5"):
        precision_recall(torch.randn(5, 2), torch.randn(10, 2), k=5)


# ---------------------------------------------------------------- KID


def test_kid_needs_two_features_per_set_and_works_with_two():
    x = np.random.default_rng(11).standard_normal((2, 3))
    assert np.isfinite(kid(x, x + 1.0).mean)  # the smallest sets the unbiased estimate allows
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], x)


def test_kid_matches_direct_unbiased_mmd_and_detects_shift():
    x = np.random.default_rng(9).standard_normal((40, 5))
    y = np.random.default_rng(10).standard_normal((40, 5)) + 0.3
    kern = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    m = 40
    expected = (
        (kern(x, x).sum() - np.trace(kern(x, x))) / (m * (m - 1))
        + (kern(y, y).sum() - np.trace(kern(y, y))) / (m * (m - 1))
        - 2 * kern(x, y).mean()
    )
    # one subset of the full size is a permutation: the estimate is exact
    assert kid(x, y, num_subsets=1, subset_size=40).mean == pytest.approx(expected, rel=1e-10)
    same = kid(_cloud(500, 0.0, seed=11), _cloud(500, 0.0, seed=12), num_subsets=10, subset_size=200)
    shifted = kid(_cloud(500, 0.0, seed=11), _cloud(500, 1.0, seed=12), num_subsets=10, subset_size=200)
    assert abs(same.mean) < 3 * same.std + 1e-3
    assert shifted.mean > 10 * max(abs(same.mean), same.std)


def test_energy_distance_between_1d_gaussians_matches_closed_form():
    """X ~ N(0, 1), Y ~ N(mu, 1): X - Y ~ N(-mu, 2), E|N(m, s^2)| = s sqrt(2/pi) exp(-m^2 / 2s^2)
    + m (1 - 2 Phi(-m / s)); E|X - X'| = E|Y - Y'| = 2 / sqrt(pi)."""
    from math import erf, exp, pi, sqrt

    mu, s = 1.5, sqrt(2.0)
    phi = 0.5 * (1 + erf(-mu / s / sqrt(2)))
    expected = 2 * (s * sqrt(2 / pi) * exp(-mu**2 / (2 * s**2)) + mu * (1 - 2 * phi)) - 4 / sqrt(pi)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, generator=g, dtype=torch.float64)
    y = mu + torch.randn(4000, 1, generator=g, dtype=torch.float64)
    assert energy_distance(x, y) == pytest.approx(expected, abs=0.03)
    assert abs(energy_distance(x, torch.randn(4000, 1, generator=g, dtype=torch.float64))) < 0.01
    assert energy_distance(x, y) == pytest.approx(energy_distance(y, x), rel=1e-12)
    with pytest.raises(ValueError, match="dimensions differ"):
        energy_distance(x, torch.zeros(5, 2))
