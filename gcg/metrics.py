"""Sample-quality metrics: FID, sFID, Inception Score, precision/recall, KID (chapter 07).

Every metric here works on *features* (numpy arrays or tensors, one row per image); the networks
that produce them live in ``gcg.inception`` (the FID Inception-v3) and ``gcg.features``
(a small network gcg trains on an offline data set). ``gcg.evaluate`` wires both together.

- Fréchet distance (Heusel et al. 2017; the closed form is Dowson & Landau 1982): the squared
  2-Wasserstein distance between two Gaussians fitted to the features,
  ``FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``. On the Inception pool3 features it is
  FID; on the spatial ``mixed_6/conv`` features it is sFID (Nash et al. 2021).
- Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))``.
- Improved precision and recall (Kynkäänniemi et al. 2019): k-NN manifold estimates.
- Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic kernel.

All statistics are computed in float64; distances for precision/recall in float32 blocks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "spatial_features",
    "inception_score",
    "precision_recall",
    "kid",
    "InceptionScore",
    "PrecisionRecall",
    "KernelDistance",
]


class InceptionScore(NamedTuple):
    mean: float
    std: float


class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


class KernelDistance(NamedTuple):
    mean: float
    std: float


def _as_matrix(x, name: str, dtype=torch.float64) -> torch.Tensor:
    """numpy array / tensor [N, D] -> CPU tensor of ``dtype``, with a clear error on bad shapes."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of features [N, D], got shape {tuple(t.shape)}; "
            "flatten spatial features first (see gcg.metrics.spatial_features)."
        )
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows): no features to compare.")
    t = t.detach().to("cpu", dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf; check the images/feature network that produced it.")
    return t


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features, the Gaussian fit used by FID.

    Args:
        features: [N, D] array or tensor, N >= 2.
    Returns:
        (mu [D], sigma [D, D]) float64 numpy arrays; sigma is the unbiased sample covariance
        (divides by N - 1, as ``np.cov`` and the reference FID code do).
    """
    f = _as_matrix(features, "features")
    if f.shape[0] < 2:
        raise ValueError("feature_statistics needs at least 2 feature rows to estimate a covariance.")
    mu = f.mean(0)
    centred = f - mu
    sigma = centred.T @ centred / (f.shape[0] - 1)
    return mu.numpy(), sigma.numpy()


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a PSD matrix by eigen-decomposition; negative round-off
    eigenvalues (singular covariances) are clamped to 0. [D, D] float64 -> [D, D]."""
    sym = 0.5 * (sigma + sigma.T)
    evals, evecs = torch.linalg.eigh(sym)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _psd_factor(sigma: torch.Tensor) -> torch.Tensor:
    """Some F with F F^T = sigma: the Cholesky factor when sigma is numerically positive definite
    (cheap), else the eigen-decomposition square root (exact for singular matrices)."""
    chol, info = torch.linalg.cholesky_ex(0.5 * (sigma + sigma.T))
    return chol if int(info) == 0 else _psd_sqrt(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017; Dowson & Landau 1982).

        FD = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr (S1 S2)^{1/2}

    The trace term is computed without the non-symmetric (and, for singular covariances, ill-posed)
    matrix square root of S1 S2. For any factors F1 F1^T = S1, F2 F2^T = S2, the non-zero
    eigenvalues of S1 S2 = F1 (F1^T F2 F2^T) equal those of (F1^T F2 F2^T) F1 = K K^T with
    K = F1^T F2 (AB and BA share their non-zero eigenvalues), so

        Tr (S1 S2)^{1/2} = sum of singular values of K = ||F1^T F2||_*   (a nuclear norm).

    Each factor is a Cholesky factor when the covariance is positive definite, otherwise its
    symmetric square root by ``eigh`` with negative round-off eigenvalues clamped to zero; all in
    float64. This needs no ``eps * I`` offset for singular covariances (fewer samples than
    dimensions) and agrees with ``scipy.linalg.sqrtm`` where that is well defined.

    Args:
        mu1, mu2: [D] means. sigma1, sigma2: [D, D] covariances (numpy arrays or tensors).
    Returns:
        the distance as a Python float (>= 0 up to round-off).
    """
    m1 = torch.as_tensor(np.atleast_1d(np.asarray(mu1, dtype=np.float64)))
    m2 = torch.as_tensor(np.atleast_1d(np.asarray(mu2, dtype=np.float64)))
    s1 = torch.as_tensor(np.atleast_2d(np.asarray(sigma1, dtype=np.float64)))
    s2 = torch.as_tensor(np.atleast_2d(np.asarray(sigma2, dtype=np.float64)))
    d = m1.shape[0]
    if m1.ndim != 1 or m2.shape != m1.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {tuple(m1.shape)} and {tuple(m2.shape)}.")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"sigma1 and sigma2 must be [{d}, {d}] to match the means, got {tuple(s1.shape)} and {tuple(s2.shape)}."
        )
    for name, t in (("mu1", m1), ("mu2", m2), ("sigma1", s1), ("sigma2", s2)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf.")
    diff = m1 - m2
    trace_sqrt = torch.linalg.svdvals(_psd_factor(s1).T @ _psd_factor(s2)).sum()
    fd = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2.0 * trace_sqrt
    return float(fd)


def fid_from_features(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [Na, D] and [Nb, D].

    FID when the features are Inception pool3 (2048-d); sFID for the spatial ``mixed_6/conv``
    features; "FD on domain features" for :mod:`gcg.features` (not comparable to published FID).

    When both sets are smaller than the dimension (Na, Nb <= D) the trace term is computed in
    sample space, exactly and without any D x D decomposition: with centred features A, B and
    S_a = A^T A / (Na - 1), S_b = B^T B / (Nb - 1), the non-zero eigenvalues of S_a S_b are those
    of (A B^T)(A B^T)^T / ((Na - 1)(Nb - 1)), so
        Tr (S_a S_b)^{1/2} = ||A B^T||_* / sqrt((Na - 1)(Nb - 1)).
    Otherwise it calls :func:`frechet_distance` on the statistics.
    """
    a = _as_matrix(feats_a, "feats_a")
    b = _as_matrix(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}; use the same feature network.")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("fid_from_features needs at least 2 feature rows in each set.")
    if max(a.shape[0], b.shape[0]) > a.shape[1]:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    mu_a, mu_b = a.mean(0), b.mean(0)
    ac, bc = a - mu_a, b - mu_b
    na, nb = a.shape[0] - 1, b.shape[0] - 1
    trace_sqrt = torch.linalg.svdvals(ac @ bc.T).sum() / (na * nb) ** 0.5
    diff = mu_a - mu_b
    fd = diff @ diff + (ac**2).sum() / na + (bc**2).sum() / nb - 2.0 * trace_sqrt
    return float(fd)


def spatial_features(feature_map: torch.Tensor, num_channels: int = 7) -> torch.Tensor:
    """sFID features (Nash et al. 2021): the first `num_channels` channels of an intermediate
    feature map, flattened in channels-last (NHWC) order like the ADM evaluator, which keeps
    ``mixed_6/conv[..., :7]`` of the 17x17 Inception map -> 17 * 17 * 7 = 2023 features.

    Args:
        feature_map: [N, C, H, W]. Returns: [N, H * W * num_channels].
    """
    if feature_map.ndim != 4:
        raise ValueError(f"feature_map must be [N, C, H, W], got shape {tuple(feature_map.shape)}.")
    return feature_map[:, :num_channels].permute(0, 2, 3, 1).reshape(feature_map.shape[0], -1)


def inception_score(probs_or_logits, splits: int = 10, from_logits: bool | None = None) -> InceptionScore:
    """Inception Score (Salimans et al. 2016): ``IS = exp(E_x KL(p(y|x) || p(y)))``.

    p(y) is the mean of p(y|x) within each split; the score is computed on `splits` equal
    consecutive chunks and the mean and standard deviation over chunks are returned, as in the
    original code (the ADM evaluator uses chunks of 5000 images: ``splits = N // 5000``).

    Args:
        probs_or_logits: [N, K] class probabilities or logits.
        splits: number of chunks (1 <= splits <= N).
        from_logits: True / False to say what the input is; None detects probabilities
            (non-negative rows that sum to 1 within 1e-3) and otherwise applies a softmax.
    Returns:
        InceptionScore(mean, std). Ranges from 1 (every prediction alike) to K (confident and
        uniform over the K classes).
    """
    x = _as_matrix(probs_or_logits, "probs_or_logits")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of rows ({n}), got {splits}.")
    if from_logits is None:
        from_logits = not (bool((x >= 0).all()) and bool(torch.allclose(x.sum(1), torch.ones(n, dtype=x.dtype), atol=1e-3)))
    probs = torch.softmax(x, dim=1) if from_logits else x / x.sum(1, keepdim=True)
    scores = []
    for i in range(splits):
        part = probs[i * n // splits : (i + 1) * n // splits]
        p_y = part.mean(0, keepdim=True)
        # KL(p(y|x) || p(y)) with 0 log 0 = 0 (xlogy), averaged over x in the chunk
        kl = (torch.xlogy(part, part) - torch.xlogy(part, p_y.expand_as(part))).sum(1).mean()
        scores.append(float(torch.exp(kl)))
    return InceptionScore(float(np.mean(scores)), float(np.std(scores)))


def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    return (x.double() ** 2).sum(1).float()


def _block_sq_dists(a, a_sq, b, b_sq):
    """Squared Euclidean distances [Na, Nb] = |a|^2 + |b|^2 - 2 a.b, clamped at 0."""
    return (a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)).clamp_min_(0)


def _knn_radii(x, x_sq, k, block):
    """Squared distance of each row of x to its k-th nearest neighbour in x (self excluded).
    Implemented as the (k+1)-th smallest distance including the zero self-distance, like
    Kynkäänniemi et al. 2019. x [N, D] -> [N]."""
    n = x.shape[0]
    radii = torch.empty(n)
    for i in range(0, n, block):
        best = None
        for j in range(0, n, block):
            d = _block_sq_dists(x[i : i + block], x_sq[i : i + block], x[j : j + block], x_sq[j : j + block])
            cand = d if best is None else torch.cat([best, d], 1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii[i : i + block] = best[:, k]
    return radii


def precision_recall(real_feats, fake_feats, k: int = 3, block_size: int = 5000, progress: bool = False) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019), k-NN manifold estimates.

    The manifold of a set Phi is the union of balls centred at each phi in Phi with radius
    NND_k(phi), the distance to its k-th nearest neighbour in Phi. Then
        precision = fraction of fake samples inside the real manifold,
        recall    = fraction of real samples inside the fake manifold.
    Distances are computed in float32 blocks of ``block_size`` x ``block_size`` (peak memory
    ~ 3 * block_size^2 * 4 bytes, so 50K x 50K fits); ties count as inside (<=).

    Args:
        real_feats: [Nr, D]; fake_feats: [Nf, D]; k: neighbourhood size (ADM and the paper use 3).
    Returns:
        PrecisionRecall(precision, recall), each in [0, 1].
    """
    real = _as_matrix(real_feats, "real_feats", torch.float32)
    fake = _as_matrix(fake_feats, "fake_feats", torch.float32)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}.")
    if not 1 <= k < min(real.shape[0], fake.shape[0]):
        raise ValueError(
            f"k={k} needs 1 <= k < the size of each set (real {real.shape[0]}, fake {fake.shape[0]})."
        )
    from tqdm.auto import tqdm

    real_sq, fake_sq = _sq_norms(real), _sq_norms(fake)
    r_real = _knn_radii(real, real_sq, k, block_size)
    r_fake = _knn_radii(fake, fake_sq, k, block_size)
    fake_in_real = torch.zeros(fake.shape[0], dtype=torch.bool)
    real_in_fake = torch.zeros(real.shape[0], dtype=torch.bool)
    for i in tqdm(range(0, real.shape[0], block_size), desc="precision/recall", disable=not progress):
        rs = slice(i, i + block_size)
        for j in range(0, fake.shape[0], block_size):
            fs = slice(j, j + block_size)
            d = _block_sq_dists(real[rs], real_sq[rs], fake[fs], fake_sq[fs])  # [real block, fake block]
            fake_in_real[fs] |= (d <= r_real[rs, None]).any(0)
            real_in_fake[rs] |= (d <= r_fake[None, fs]).any(1)
    return PrecisionRecall(float(fake_in_real.float().mean()), float(real_in_fake.float().mean()))


def kid(real_feats, fake_feats, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> KernelDistance:
    """Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with the cubic kernel
    k(x, y) = (x.y / D + 1)^3, averaged over `num_subsets` random subsets of `subset_size`
    (clipped to the smaller set size), as in the paper's code.

        MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)

    Args:
        real_feats: [Nr, D]; fake_feats: [Nf, D]. Returns: KernelDistance(mean, std); unbiased,
        so it can be slightly negative when the two sets come from one distribution.
    """
    real = _as_matrix(real_feats, "real_feats")
    fake = _as_matrix(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]} vs fake {fake.shape[1]}.")
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2:
        raise ValueError("kid needs at least 2 features in each set.")
    d = real.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(num_subsets):
        x = real[torch.randperm(real.shape[0], generator=g)[:m]]
        y = fake[torch.randperm(fake.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        values.append(float(mmd))
    return KernelDistance(float(np.mean(values)), float(np.std(values)))


def energy_distance(a, b) -> float:
    """Squared energy distance (Székely & Rizzo 2013), a two-sample distance for low-dimensional
    samples such as the book's toys: 2 E|X - Y| - E|X - X'| - E|Y - Y'|, zero iff the laws are equal.
    The within-set terms average over i != j, so the estimate is unbiased (it can dip below 0).

    Args:
        a: [n, D] samples of X; b: [m, D] samples of Y (n, m >= 2). Returns: a float.
    """
    x, y = _as_matrix(a, "a"), _as_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample dimensions differ: {x.shape[1]} vs {y.shape[1]}.")
    n, m = x.shape[0], y.shape[0]
    if min(n, m) < 2:
        raise ValueError("energy_distance needs at least 2 samples in each set.")
    within_x = torch.cdist(x, x).sum() / (n * (n - 1))
    within_y = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * torch.cdist(x, y).mean() - within_x - within_y)
