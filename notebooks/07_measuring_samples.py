# %% [markdown]
# # 07 · Measuring samples: IS, FID, sFID, precision and recall
#
# ```{admonition} Learning goals
# After this chapter you can
# - derive the Inception Score as a mutual information, and the Fréchet distance as the
#   optimal-transport cost between two Gaussians;
# - implement the Fréchet distance and compute its matrix square root stably;
# - predict which of FD, IS, precision, recall and KID moves when samples lose fidelity or
#   diversity, and which defects none of them sees;
# - measure how the number of samples biases FD, and say why published FIDs need one
#   particular Inception network.
#
# **Prerequisites:** [chapter 04](04_classifier_guidance.ipynb) (guidance trades diversity for
# fidelity); symmetric and singular value decompositions, positive semi-definite matrices.
# ```
#
# Every claim in the guidance papers is a number. Table 4 of {cite:t}`dhariwal2021beat`
# (ImageNet 256×256, conditional ADM) reports, as the classifier scale grows from 1 to 10: FID
# 4.59 → 9.11, sFID 5.25 → 10.93, Inception Score 186.7 → 283.9, precision 0.82 → 0.88, recall
# 0.52 → 0.32. IS and precision reward *fidelity* and rise; recall measures *diversity* and falls;
# FID and sFID weigh both. Table 5 shows the same axis between model families: on ImageNet 64,
# BigGAN-deep has precision 0.79 / recall 0.48, ADM 0.73 / 0.63.
#
# This chapter derives each metric (IS {cite:p}`salimans2016is`, the Fréchet distance
# {cite:p}`heusel2017fid` and its spatial form sFID {cite:p}`nash2021sfid`, $k$-NN precision and
# recall {cite:p}`kynkaanniemi2019pr`, KID {cite:p}`binkowski2018kid`), checks each against a
# closed form, then runs them on real digits with *known* defects.

# %%
import os

# On a machine whose cores are shared, OpenMP threads that spin while waiting make 2-thread torch
# ops many times slower; passive waiting costs nothing on an idle machine. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import inspect
import random
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

GCG_SCALE = float(os.environ.get("GCG_SCALE", "1"))  # 1 = the CPU size whose outputs are stored
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(2)  # results depend on the thread count: fix it
random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False)
CHAPTER_START = time.perf_counter()


def show(obj):
    """Display the source of a gcg function or class as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


# %%
from gcg import metrics
from gcg.cascade import gaussian_blur_3x3
from gcg.data import load_digits_dataset
from gcg.features import DomainFeatureNet, save_feature_net, train_feature_net
from gcg.images import plot_image_grid
from gcg.inception import INCEPTION_WEIGHTS_ENV, FIDInceptionV3, load_fid_inception

N_DRAWS = max(1, round(5 * GCG_SCALE))  # random draws averaged per controlled set
BIAS_REPEATS = max(2, round(20 * GCG_SCALE))  # repeats per sample size in the FD-vs-N study

# %% [markdown]
# ## 1. Features first: a domain feature network for the digits
#
# Every metric here compares **features**, one vector per image, never pixels. Published numbers
# use one specific Inception-v3 network (section 9), which gcg does not ship and which would be
# a poor judge of 8×8 digits. So gcg trains a **domain feature network** (`gcg.features`): a small
# convolutional classifier whose pooled penultimate layer plays Inception's `pool_3` (FD,
# precision, recall), whose intermediate map plays `mixed_6/conv` (sFD), and whose softmax plays
# the Inception classifier (IS). Every number below is "on domain features", **not comparable
# with published FID or IS**.
#
# scikit-learn's 1,797 digits are split in two stratified halves: the **reference** half trains
# the feature network and is the "real data"; the **held-out** half supplies the sets we
# evaluate, as a generator's samples would.

# %%
ref_set = load_digits_dataset("train", test_fraction=0.5)
held_set = load_digits_dataset("test", test_fraction=0.5)
x_ref, y_ref = ref_set.as_tensors()
x_held, y_held = held_set.as_tensors()
print(f"reference {tuple(x_ref.shape)}, held-out {tuple(x_held.shape)}, pixel range [{x_ref.min():.0f}, {x_ref.max():.0f}]")
print("held-out images per class:", torch.bincount(y_held, minlength=10).tolist())

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
feature_net = train_feature_net(x_ref, y_ref, epochs=10, widths=(16, 32, 64), seed=0)
held_accuracy = float((feature_net.extract(x_held)["logits"].argmax(1) == y_held).float().mean())
print(f"trained in {time.perf_counter() - t0:.1f} s; {sum(p.numel() for p in feature_net.parameters()):,} parameters")
print(f"accuracy: reference (train) {feature_net.train_accuracy:.3f}, held-out {held_accuracy:.3f}")
feats_ref = feature_net.extract(x_ref)
feats_held = feature_net.extract(x_held)
print({k: tuple(v.shape) for k, v in feats_ref.items()})

# %%
assert held_accuracy > 0.93, f"the domain feature network should recognise held-out digits, got {held_accuracy:.3f}"

# %% tags=["nbval-ignore-output"]
show(DomainFeatureNet.extract)

# %% [markdown]
# A held-out accuracy well above 90% says the features separate the ten classes, so distances
# in this space mean something about digits.

# %% [markdown]
# ## 2. The Inception Score
#
# Let $p(y \mid x)$ be a classifier's class probabilities for a generated image $x$ and
# $p(y) = \mathbb E_x\, p(y \mid x)$ their average over the generated set. Salimans et al. define
#
# $$
# \mathrm{IS} = \exp\Big(\mathbb E_x\, \mathrm{KL}\big(p(y \mid x)\,\|\,p(y)\big)\Big).
# $$ (ch07-is)
#
# Expanding the KL divergence and using $\mathbb E_x\, p(y \mid x) = p(y)$:
#
# $$
# \mathbb E_x \sum_y p(y\mid x) \log \frac{p(y \mid x)}{p(y)}
#   = -\sum_y p(y) \log p(y) - \mathbb E_x\Big[-\sum_y p(y\mid x)\log p(y \mid x)\Big]
#   = H(y) - \mathbb E_x H(y \mid x) = I(x; y).
# $$ (ch07-is-mi)
#
# So $\log \mathrm{IS}$ is the mutual information between image and label: large when each image
# is classified **confidently** (small $H(y \mid x)$: fidelity) and the labels are **spread**
# over classes (large $H(y)$). Since $0 \le I \le H(y) \le \log K$, $1 \le \mathrm{IS} \le K$,
# with $\mathrm{IS} = K$ exactly when every prediction is one-hot and the $K$ classes are equally
# used.

# %% tags=["nbval-ignore-output"]
show(metrics.inception_score)

# %% [markdown]
# **Checks.** Identical predictions give IS = 1; confident predictions used equally over 10
# (or 4) classes give IS = 10 (or 4); soft predictions give $\exp(H(y) - \mathbb E_x H(y \mid x))$
# of {eq}`ch07-is-mi`, computed independently with numpy.

# %%
K = 10
g = torch.Generator().manual_seed(0)
constant = torch.softmax(torch.randn(1, K, generator=g), 1).repeat(500, 1)
confident = torch.eye(K)[torch.arange(500) % K]  # one-hot, every class 50 times
confident4 = torch.eye(K)[torch.arange(500) % 4]  # one-hot, only classes 0..3
soft = torch.distributions.Dirichlet(torch.full((K,), 0.3)).sample((500,))


def entropy(p):
    return -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)


p_soft = soft.double().numpy()
mi = entropy(p_soft.mean(0)) - entropy(p_soft).mean()
checks = {
    "constant predictions": (metrics.inception_score(constant, splits=1).mean, 1.0),
    "confident, 10 classes": (metrics.inception_score(confident, splits=1).mean, 10.0),
    "confident, 4 classes": (metrics.inception_score(confident4, splits=1).mean, 4.0),
    "Dirichlet(0.3) predictions": (metrics.inception_score(soft, splits=1).mean, float(np.exp(mi))),
}
for name, (got, expected) in checks.items():
    print(f"{name:28s} gcg IS {got:8.4f}   closed form {expected:8.4f}")
    assert abs(got - expected) < 1e-6 * expected, (name, got, expected)


# %% [markdown]
# Published IS values use the Inception classifier's 1008 outputs on 50,000 samples (10 splits);
# ours use the domain classifier's 10 outputs, so the ceiling is 10.

# %% [markdown]
# ## 3. The Fréchet distance, derived
#
# FID fits a Gaussian $\mathcal N(\mu_1, \Sigma_1)$ to the features of real images and one,
# $\mathcal N(\mu_2, \Sigma_2)$, to those of generated images, and reports the squared
# **2-Wasserstein (Fréchet) distance** between them. For distributions $P, Q$ on $\mathbb R^D$,
#
# $$
# W_2^2(P, Q) = \inf_{\pi \in \Pi(P, Q)} \mathbb E_{(X, Y) \sim \pi}\, \|X - Y\|^2 ,
# $$ (ch07-w2)
#
# where $\Pi(P, Q)$ is the set of *couplings*: joint distributions of $(X, Y)$ with marginals
# $P$ and $Q$. We bound it for any $P, Q$ with means $\mu_i$ and covariances $\Sigma_i$, and
# show that Gaussians attain the bound.
#
# **Step 1: the means separate.** Write $X = \mu_1 + \tilde X$, $Y = \mu_2 + \tilde Y$ with
# $\tilde X, \tilde Y$ centred. Then
# $\mathbb E\|X - Y\|^2 = \|\mu_1 - \mu_2\|^2 + 2(\mu_1 - \mu_2)^\top \mathbb E[\tilde X - \tilde Y] + \mathbb E\|\tilde X - \tilde Y\|^2$, and the middle term is zero.
#
# **Step 2: only the cross-covariance is free.** With $C = \mathbb E[\tilde X \tilde Y^\top]$,
#
# $$
# \mathbb E\|\tilde X - \tilde Y\|^2 = \operatorname{Tr}\Sigma_1 + \operatorname{Tr}\Sigma_2 - 2 \operatorname{Tr} C .
# $$
#
# A coupling enters only through $C$, so we **maximise $\operatorname{Tr} C$** over the $C$ that
# make the joint covariance $\begin{pmatrix}\Sigma_1 & C\\ C^\top & \Sigma_2\end{pmatrix}$
# positive semi-definite.
#
# **Step 3: the constraint.** Take $\Sigma_1, \Sigma_2$ invertible (the singular case follows by
# continuity). By the Schur complement, the joint covariance is PSD iff
# $\Sigma_2 - C^\top \Sigma_1^{-1} C \succeq 0$. Multiply by $\Sigma_2^{-1/2}$ on both sides and
# set $K = \Sigma_1^{-1/2} C\, \Sigma_2^{-1/2}$: the condition becomes $I - K^\top K \succeq 0$,
# i.e. the operator norm $\|K\|_{\mathrm{op}} \le 1$. Every feasible $C$ is
# $C = \Sigma_1^{1/2} K \Sigma_2^{1/2}$ with $\|K\|_{\mathrm{op}} \le 1$.
#
# **Step 4: the best $K$ (von Neumann's trace inequality).** Let $M = \Sigma_2^{1/2}\Sigma_1^{1/2}$
# with singular value decomposition $M = U S V^\top$. Then
#
# $$
# \operatorname{Tr} C = \operatorname{Tr}\big(\Sigma_1^{1/2} K \Sigma_2^{1/2}\big)
#   = \operatorname{Tr}(K M) = \operatorname{Tr}(V^\top K U\, S) = \sum_i s_i\, (V^\top K U)_{ii}
#   \le \sum_i s_i = \|M\|_* ,
# $$
#
# because every entry of $V^\top K U$ has magnitude at most $\|K\|_{\mathrm{op}} \le 1$. The bound
# is reached by $K = V U^\top$. So the maximum is the **nuclear norm** (sum of singular values) of
# $\Sigma_1^{1/2}\Sigma_2^{1/2}$ (a matrix and its transpose have the same singular values).
#
# **Step 5: why a square root of $\Sigma_1\Sigma_2$.** The singular values of
# $\Sigma_1^{1/2}\Sigma_2^{1/2}$ are the square roots of the eigenvalues of
# $(\Sigma_1^{1/2}\Sigma_2^{1/2})(\Sigma_1^{1/2}\Sigma_2^{1/2})^\top = \Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}$,
# a symmetric PSD matrix. And $\Sigma_1\Sigma_2 = \Sigma_1^{1/2}\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)\Sigma_1^{-1/2}$
# is *similar* to it: though not symmetric, $\Sigma_1\Sigma_2$ is diagonalisable with the same
# eigenvalues $\lambda_i \ge 0$, so its principal square root has eigenvalues $\sqrt{\lambda_i}$
# and $\operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \sum_i \sqrt{\lambda_i} = \|M\|_*$.
# Putting steps 1–5 together:
#
# $$
# \mathrm{FD} = \|\mu_1 - \mu_2\|^2 + \operatorname{Tr}\Big(\Sigma_1 + \Sigma_2 - 2\,(\Sigma_1\Sigma_2)^{1/2}\Big).
# $$ (ch07-fd)
#
# **Step 6: Gaussians attain it.** For $P = \mathcal N(\mu_1, \Sigma_1)$ and
# $Q = \mathcal N(\mu_2, \Sigma_2)$, the jointly Gaussian coupling with the optimal $C$ exists, so
# $W_2^2 = \mathrm{FD}$ {cite:p}`dowson1982frechet`. It is realised by the linear **optimal transport
# map** $T(x) = \mu_2 + A(x - \mu_1)$ with
#
# $$
# A = \Sigma_1^{-1/2}\big(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}\big)^{1/2}\Sigma_1^{-1/2},
# \qquad A\Sigma_1 A = \Sigma_2 .
# $$ (ch07-ot-map)
#
# For non-Gaussian features steps 1–4 still bound every coupling, so FD is a **lower bound** on
# their $W_2^2$ {cite:p}`gelbrich1990`: FID sees only two moments. Special cases: in one dimension FD $= (\mu_1 - \mu_2)^2 + (\sigma_1 - \sigma_2)^2$;
# for commuting (e.g. diagonal) covariances
# FD $= \|\mu_1 - \mu_2\|^2 + \|\Sigma_1^{1/2} - \Sigma_2^{1/2}\|_F^2$.
#
# **Computing it stably.** The reference FID code calls `scipy.linalg.sqrtm(sigma1 @ sigma2)`, a
# square root of a *non-symmetric* matrix: round-off leaves small imaginary parts, it is slow at
# $D = 2048$, and singular covariances (fewer samples than dimensions) need an $\varepsilon I$
# offset. gcg avoids the non-symmetric matrix: for *any* factors $F_1F_1^\top = \Sigma_1$,
# $F_2F_2^\top = \Sigma_2$, the non-zero eigenvalues of $\Sigma_1\Sigma_2 = F_1(F_1^\top F_2F_2^\top)$
# equal those of $(F_1^\top F_2F_2^\top)F_1 = (F_1^\top F_2)(F_1^\top F_2)^\top$ ($AB$ and $BA$
# share their non-zero eigenvalues), hence
#
# $$
# \operatorname{Tr}(\Sigma_1\Sigma_2)^{1/2} = \|F_1^\top F_2\|_* .
# $$ (ch07-nuclear)
#
# `frechet_distance` takes $F_i$ = the Cholesky factor (the symmetric square root by `eigh` when
# $\Sigma_i$ is singular) and sums singular values, in float64. `fid_from_features` goes further
# when both sets have fewer rows than dimensions: the centred feature matrices are themselves
# factors ($\Sigma_a = A^\top A/(N_a - 1)$), so the trace is $\|AB^\top\|_*/\sqrt{(N_a - 1)(N_b - 1)}$,
# an $N_a \times N_b$ problem instead of $D \times D$.
#
# ### Write it yourself: the Fréchet distance
#
# Write `my_frechet_distance(mu1, sigma1, mu2, sigma2)`: float64 `mu` [D], PSD `sigma` [D, D] →
# {eq}`ch07-fd` as a 0-d tensor. Take the trace term as step 5 does, through the symmetric
# $\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2}$ (`torch.linalg.eigh`; clamp negative round-off
# eigenvalues to 0). The next cell checks each term against `gcg.metrics.frechet_distance`.

# %% tags=["write-it-yourself", "hide-input"]
def my_frechet_distance(mu1, sigma1, mu2, sigma2):
    """FD between N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D] float64 -> 0-d tensor."""
    # --- solution ---
    evals, evecs = torch.linalg.eigh(sigma1)
    root1 = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T  # Sigma_1^{1/2}
    middle = root1 @ sigma2 @ root1  # symmetric PSD, same eigenvalues as Sigma_1 Sigma_2 (step 5)
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()  # Tr (Sigma_1 Sigma_2)^{1/2}
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    # --- end of solution ---


# %%
gen = torch.Generator().manual_seed(1)
for d in (1, 3, 16):
    mu1, mu2 = torch.randn(2, d, generator=gen, dtype=torch.float64)
    a1, a2 = torch.randn(2, d, d, generator=gen, dtype=torch.float64)
    sigma1, sigma2 = a1 @ a1.T + 0.1 * torch.eye(d), a2 @ a2.T + 0.1 * torch.eye(d)
    for what, args in (("the mean term |mu1 - mu2|^2", (mu1, sigma1, mu2, sigma1)),
                       ("the trace term Tr(S1 + S2 - 2 (S1 S2)^1/2)", (mu1, sigma1, mu1, sigma2)),
                       ("the sum of both terms", (mu1, sigma1, mu2, sigma2))):
        mine = torch.as_tensor(my_frechet_distance(*args), dtype=torch.float64)
        torch.testing.assert_close(mine, torch.tensor(metrics.frechet_distance(*args), dtype=torch.float64),
                                   msg=lambda m, what=what, d=d: f"D = {d}: {what} is wrong. {m}")
print("my_frechet_distance agrees with gcg.metrics.frechet_distance for D = 1, 3, 16")

# %% tags=["nbval-ignore-output"]
show(metrics.frechet_distance)

# %% tags=["nbval-ignore-output"]
show(metrics.fid_from_features)

# %% [markdown]
# **Check 1: the closed forms.** One dimension, commuting covariances, and non-commuting random
# covariances in $D = 6$ against $\operatorname{Tr}(\Sigma_1^{1/2}\Sigma_2\Sigma_1^{1/2})^{1/2}$
# computed with numpy's symmetric eigen-solver, and against `scipy.linalg.sqrtm` of the product.

# %%
import scipy.linalg


def sym_sqrt(s):
    """Symmetric PSD square root by eigen-decomposition (numpy), for checking."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


rng = np.random.default_rng(0)
# 1-D: (m1 - m2)^2 + (s1 - s2)^2
fd_1d = metrics.frechet_distance([0.5], [[4.0]], [-1.0], [[0.25]])
print(f"1-D:            gcg {fd_1d:.6f}   closed form {(0.5 + 1.0) ** 2 + (2.0 - 0.5) ** 2:.6f}")
assert abs(fd_1d - 4.5) < 1e-12
# commuting: diagonal covariances
a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
m1, m2 = rng.normal(size=5), rng.normal(size=5)
fd_diag = metrics.frechet_distance(m1, np.diag(a), m2, np.diag(b))
closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
print(f"diagonal:       gcg {fd_diag:.6f}   closed form {closed:.6f}")
assert abs(fd_diag - closed) < 1e-10
# non-commuting random covariances
A1, A2 = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
S1, S2 = A1 @ A1.T + 0.1 * np.eye(6), A2 @ A2.T + 0.1 * np.eye(6)
m1, m2 = rng.normal(size=6), rng.normal(size=6)
assert not np.allclose(S1 @ S2, S2 @ S1)  # they do not commute: the square root matters
fd_gcg = metrics.frechet_distance(m1, S1, m2, S2)
r1 = sym_sqrt(S1)
closed = ((m1 - m2) ** 2).sum() + np.trace(S1 + S2) - 2 * np.trace(sym_sqrt(r1 @ S2 @ r1))
via_scipy = ((m1 - m2) ** 2).sum() + np.trace(S1 + S2) - 2 * np.trace(scipy.linalg.sqrtm(S1 @ S2)).real
print(f"non-commuting:  gcg {fd_gcg:.6f}   closed form {closed:.6f}   scipy sqrtm {via_scipy:.6f}")
assert abs(fd_gcg - closed) < 1e-9 * closed and abs(fd_gcg - via_scipy) < 1e-6 * closed
# the naive formula with an elementwise / symmetric shortcut is wrong when they do not commute
wrong = ((m1 - m2) ** 2).sum() + np.trace(S1 + S2) - 2 * np.trace(r1 @ sym_sqrt(S2))
print(f"(Tr S1^1/2 S2^1/2 instead of Tr (S1 S2)^1/2 would give {wrong:.6f})")

# %% [markdown]
# **Check 2: FD is the optimal transport cost.** Map $X \sim \mathcal N(\mu_1, \Sigma_1)$ with $T$
# of {eq}`ch07-ot-map`: $A\Sigma_1A = \Sigma_2$ exactly, and the Monte Carlo cost
# $\mathbb E\|X - T(X)\|^2$ matches FD. The *independent* coupling costs more:
# $\|\mu_1 - \mu_2\|^2 + \operatorname{Tr}\Sigma_1 + \operatorname{Tr}\Sigma_2$.

# %%
r1_inv = np.linalg.inv(r1)
A_map = r1_inv @ sym_sqrt(r1 @ S2 @ r1) @ r1_inv
print(f"A S1 A = S2 to 1e-9: {np.abs(A_map @ S1 @ A_map - S2).max() < 1e-9}")
assert np.abs(A_map @ S1 @ A_map - S2).max() < 1e-9
n_mc = 200_000
x = m1 + rng.normal(size=(n_mc, 6)) @ np.linalg.cholesky(S1).T
cost = ((x - (m2 + (x - m1) @ A_map.T)) ** 2).sum(1)
mc, se = cost.mean(), cost.std() / np.sqrt(n_mc)
independent = ((m1 - m2) ** 2).sum() + np.trace(S1 + S2)
print(f"FD {fd_gcg:.3f};  optimal map, Monte Carlo {mc:.3f} ± {se:.3f};  independent coupling {independent:.3f}")
assert abs(mc - fd_gcg) < 4 * se and independent > fd_gcg

# %% [markdown]
# **Check 3: singular covariances** (fewer samples than dimensions). For $\Sigma_1 = AA^\top$,
# $\Sigma_2 = BB^\top$ with $A, B \in \mathbb R^{20 \times 5}$, {eq}`ch07-nuclear` gives the trace
# term as the nuclear norm of $A^\top B$. Then, with $N < D$, `fid_from_features` (sample space)
# agrees with `frechet_distance` on the fitted statistics.

# %%
A, B = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
S1, S2 = A @ A.T, B @ B.T
exact = np.trace(S1 + S2) - 2 * np.linalg.svd(A.T @ B, compute_uv=False).sum()
fd_singular = metrics.frechet_distance(np.zeros(20), S1, np.zeros(20), S2)
print(f"rank-5 covariances in D = 20: gcg {fd_singular:.6f}   closed form {exact:.6f}")
assert abs(fd_singular - exact) < 1e-9 * exact
fa = torch.randn(40, 100, generator=g, dtype=torch.float64)
fb = torch.randn(30, 100, generator=g, dtype=torch.float64) * 1.5 + 0.3
fd_sample_space = metrics.fid_from_features(fa, fb)
fd_stats = metrics.frechet_distance(*metrics.feature_statistics(fa), *metrics.feature_statistics(fb))
print(f"N = 40, 30 < D = 100: sample space {fd_sample_space:.4f}   from statistics {fd_stats:.4f}")
assert abs(fd_sample_space - fd_stats) < 1e-7 * fd_stats

# %% [markdown]
# **Check 4: on the digits.** FD of a feature set with itself is 0, FD is symmetric, and the
# held-out half of the digits is much closer to the reference half than the digits with
# labels 0–4 only.

# %% tags=["nbval-ignore-output"]
fd_self = metrics.fid_from_features(feats_held["pool"], feats_held["pool"])
fd_ab = metrics.fid_from_features(feats_ref["pool"], feats_held["pool"])
fd_ba = metrics.fid_from_features(feats_held["pool"], feats_ref["pool"])
low = y_held < 5
fd_low = metrics.fid_from_features(feats_ref["pool"], feats_held["pool"][low])
print(f"FD(held, held) = {fd_self:.2e}; FD(ref, held) = {fd_ab:.4f}, FD(held, ref) = {fd_ba:.4f}; "
      f"FD(ref, held digits 0-4) = {fd_low:.4f}")

# %%
assert abs(fd_self) < 1e-6 and abs(fd_ab - fd_ba) < 1e-6 * fd_ab and fd_low > 10 * fd_ab, (fd_self, fd_ab, fd_ba, fd_low)

# %% [markdown]
# ## 4. sFID: spatial features
#
# FID's `pool_3` features **average** over the positions of Inception's last 8×8 map: they say
# *which* parts are present, not *where*. sFID is the same Fréchet distance on **spatial**
# features: the first 7 channels of the `mixed_6/conv` map (17×17 positions), flattened to
# $17 \cdot 17 \cdot 7 = 2023$ numbers per image. `spatial_features` slices and flattens (channels
# last, as the ADM evaluator); for our digits network the tap is the 4×4 map of stage 2, first 4
# channels: 64 numbers.

# %% tags=["nbval-ignore-output"]
show(metrics.spatial_features)

# %% [markdown]
# **Check.** Shuffling the *positions* of a feature map leaves its global average (the pool
# features) exactly unchanged, so FD on pooled features cannot see it, while the spatial
# features move and their FD grows.

# %%
fmap = torch.randn(300, 8, 4, 4, generator=g, dtype=torch.float64) + torch.linspace(-1, 1, 16, dtype=torch.float64).reshape(1, 1, 4, 4)
shuffled = fmap.flatten(2)[:, :, torch.randperm(16, generator=g)].reshape(fmap.shape)
print("flattening order of spatial_features (channel fastest):", metrics.spatial_features(torch.arange(8.0).reshape(1, 2, 2, 2), 2).tolist())
fd_pool = metrics.fid_from_features(fmap.mean((2, 3)), shuffled.mean((2, 3)))
fd_spatial = metrics.fid_from_features(metrics.spatial_features(fmap, 4), metrics.spatial_features(shuffled, 4))
print(f"after shuffling positions: FD on pooled features {abs(fd_pool):.6f}, FD on spatial features {fd_spatial:.4f}")
assert abs(fd_pool) < 1e-9 and fd_spatial > 1.0

# %% [markdown]
# ## 5. Precision and recall on $k$-NN manifolds
#
# FD folds fidelity and diversity into one number; Kynkäänniemi et al. separate them. Estimate
# the support of a set of feature vectors $\Phi$ by a union of balls:
#
# $$
# \operatorname{manifold}(\Phi) = \bigcup_{\phi' \in \Phi} B\big(\phi', \|\phi' - \mathrm{NN}_k(\phi')\|\big),
# \qquad f(\phi, \Phi) = \mathbb 1\big[\phi \in \operatorname{manifold}(\Phi)\big],
# $$ (ch07-manifold)
#
# where $\mathrm{NN}_k(\phi')$ is the $k$-th nearest neighbour of $\phi'$ in $\Phi$ (itself
# excluded). With real features $\Phi_r$ and generated features $\Phi_g$:
#
# $$
# \text{precision} = \frac{1}{|\Phi_g|}\sum_{\phi_g \in \Phi_g} f(\phi_g, \Phi_r), \qquad
# \text{recall} = \frac{1}{|\Phi_r|}\sum_{\phi_r \in \Phi_r} f(\phi_r, \Phi_g).
# $$ (ch07-pr)
#
# **Precision** is the fraction of samples that look real (fidelity); **recall** is the fraction
# of real data the samples cover (diversity). ADM uses $k = 3$ on `pool_3` features. gcg computes
# distances in blocks so that 50K × 50K fits in memory.

# %% tags=["nbval-ignore-output"]
show(metrics.precision_recall)

# %% [markdown]
# **Checks.** Identical sets give (1, 1); far-apart sets (0, 0); a subset of the real set has
# precision 1 and recall below 1. And {eq}`ch07-manifold`–{eq}`ch07-pr` written out with a full
# distance matrix (`scipy.spatial.distance.cdist`) agrees with gcg's blocked computation.

# %%
from scipy.spatial.distance import cdist


def pr_by_definition(real, fake, k):
    d_rr, d_ff, d_rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_real = np.sort(d_rr, 1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(d_ff, 1)[:, k]
    return (d_rf <= r_real[:, None]).any(0).mean(), (d_rf <= r_fake[None, :]).any(1).mean()


cloud = torch.randn(200, 5, generator=g)
print("identical:", tuple(metrics.precision_recall(cloud, cloud, k=3)))
print("disjoint: ", tuple(metrics.precision_recall(cloud, cloud + 100.0, k=3)))
subset = metrics.precision_recall(cloud, cloud[:50], k=3)
print(f"subset:    precision {subset.precision:.3f}, recall {subset.recall:.3f}")
assert tuple(metrics.precision_recall(cloud, cloud, k=3)) == (1.0, 1.0)
assert tuple(metrics.precision_recall(cloud, cloud + 100.0, k=3)) == (0.0, 0.0)
assert subset.precision == 1.0 and subset.recall < 1.0
real_pts = torch.randn(300, 4, generator=g)
fake_pts = 0.7 * torch.randn(250, 4, generator=g) + 0.5
for k in (1, 3, 5):
    got = metrics.precision_recall(real_pts, fake_pts, k=k, block_size=64)
    want = pr_by_definition(real_pts.double().numpy(), fake_pts.double().numpy(), k)
    print(f"k = {k}: gcg ({got.precision:.4f}, {got.recall:.4f})   definition ({want[0]:.4f}, {want[1]:.4f})")
    # 0.01: a point within float32 round-off of a ball's boundary may fall on the other side
    assert abs(got.precision - want[0]) < 0.01 and abs(got.recall - want[1]) < 0.01

# %% [markdown]
# ## 6. KID: an unbiased alternative
#
# The Kernel Inception Distance {cite:p}`binkowski2018kid` is the squared maximum mean discrepancy
# with the cubic polynomial kernel $k(x, y) = (x^\top y / D + 1)^3$, estimated **without bias**:
#
# $$
# \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)}\sum_{i \ne j} k(x_i, x_j)
#   + \frac{1}{m(m-1)}\sum_{i \ne j} k(y_i, y_j) - \frac{2}{m^2}\sum_{i, j} k(x_i, y_j).
# $$ (ch07-kid)
#
# Its expectation is the population MMD² for every sample size $m$: 0 on average for two samples
# of one distribution (single estimates can be negative). The cubic kernel compares moments up to
# third order, but KID is noisier than FD; gcg averages it over random subsets.

# %% tags=["nbval-ignore-output"]
show(metrics.kid)

# %% [markdown]
# **Check.** With one subset that takes every row, `kid` equals {eq}`ch07-kid` evaluated
# directly.

# %%
xk = torch.randn(60, 8, generator=g, dtype=torch.float64)
yk = torch.randn(60, 8, generator=g, dtype=torch.float64) + 0.3


def cubic(u, v):
    return (u @ v.T / u.shape[1] + 1) ** 3


m = 60
direct = ((cubic(xk, xk).sum() - cubic(xk, xk).trace()) / (m * (m - 1))
          + (cubic(yk, yk).sum() - cubic(yk, yk).trace()) / (m * (m - 1)) - 2 * cubic(xk, yk).mean())
got = metrics.kid(xk, yk, num_subsets=1, subset_size=m).mean
print(f"KID: gcg {got:.6f}   Eq. (ch07-kid) directly {float(direct):.6f}")
assert abs(got - float(direct)) < 1e-9

# %% [markdown]
# ## 7. What each metric rewards and misses: controlled sets of real digits
#
# A generator's samples have unknown defects. Here we make sets with **known** defects from
# held-out real digits, 180 images each, and compare each with the 899 reference digits:
#
# - **held-out real**: random held-out images, the best a generator could do;
# - **copied training images**: 180 reference images themselves (memorisation);
# - **noise** $\sigma$: held-out images plus Gaussian pixel noise (pixels in $[-1, 1]$), low fidelity;
# - **blur** $\sigma$: a 3×3 Gaussian blur (`gcg.cascade.gaussian_blur_3x3`), low fidelity;
# - **mode dropping** $c$: held-out images of the first $c$ digit classes only: perfect images,
#   missing modes;
# - **truncation** $m$: drawn from the $m$ images of each class (of ≈ 90) that the classifier
#   finds most typical (highest $\log p(y \mid x)$), a real-data analogue of guidance, which
#   samples from $p(x \mid y)\, p(y \mid x)^s$ (chapter 04).
#
# Each set is drawn without replacement `N_DRAWS` times with different seeds and the metrics are
# averaged. All sets have the same size, because every metric depends on it (section 8).

# %%
N_EVAL = 180
log_p_true = feats_held["logits"].log_softmax(1)[torch.arange(len(y_held)), y_held]


def pool_of(kind, level):
    """Indices of the held-out images a controlled set is drawn from."""
    if kind == "modes":  # only classes 0 .. level - 1
        return torch.nonzero(y_held < level).squeeze(1)
    if kind == "truncation":  # the `level` most typical images of each class
        return torch.cat([idx[log_p_true[idx].argsort(descending=True)[:level]]
                          for idx in (torch.nonzero(y_held == c).squeeze(1) for c in range(10))])
    return torch.arange(len(y_held))


def draw(kind, level, seed):
    """N_EVAL images of one controlled set, drawn at random without replacement."""
    gen = torch.Generator().manual_seed(1000 * seed + 7)
    if kind == "copies":
        return x_ref[torch.randperm(len(y_ref), generator=gen)[:N_EVAL]]
    pool = pool_of(kind, level)
    x = x_held[pool[torch.randperm(len(pool), generator=gen)[:N_EVAL]]]
    if kind == "noise":
        return x + level * torch.randn(x.shape, generator=gen)
    if kind == "blur":
        return gaussian_blur_3x3(x, torch.full((len(x),), float(level)))
    return x  # "real", "modes", "truncation"


def evaluate_set(x):
    f = feature_net.extract(x)
    pr = metrics.precision_recall(feats_ref["pool"], f["pool"], k=3)
    return {
        "FD": metrics.fid_from_features(feats_ref["pool"], f["pool"]),
        "sFD": metrics.fid_from_features(feats_ref["spatial"], f["spatial"]),
        "KID": metrics.kid(feats_ref["pool"], f["pool"], num_subsets=20, subset_size=N_EVAL).mean,
        "IS": metrics.inception_score(f["probs"], splits=1).mean,
        "precision": pr.precision,
        "recall": pr.recall,
    }


# %%
SHOWN = [("real", 0), ("copies", 0), ("noise", 0.4), ("blur", 1.0), ("modes", 2), ("truncation", 18)]
fig, ax = plt.subplots(figsize=(6.5, 4.2))
plot_image_grid(ax, torch.cat([draw(kind, level, seed=0)[:10] for kind, level in SHOWN]), nrow=10,
                row_labels=["held-out real", "copies", "noise σ = 0.4", "blur σ = 1", "2 classes", "top 18 / class"],
                title="Ten images of six controlled sets (one draw)", pad_value=0.6)
plt.tight_layout()
plt.show()

# %%
CONDITIONS = [("real", 0), ("copies", 0)] + [("noise", s) for s in (0.1, 0.2, 0.4, 0.8)] + \
    [("blur", s) for s in (0.5, 1.0, 2.0)] + [("modes", c) for c in (6, 4, 2)] + [("truncation", m) for m in (54, 36, 18)]
t0 = time.perf_counter()
results = {}
for kind, level in CONDITIONS:
    runs = [evaluate_set(draw(kind, level, seed)) for seed in range(N_DRAWS)]
    results[kind, level] = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
controlled_seconds = time.perf_counter() - t0

# %% tags=["nbval-ignore-output"]
LABELS = {"real": "held-out real", "copies": "copied training images", "noise": "noise σ = {}",
          "blur": "blur σ = {}", "modes": "mode dropping: {} classes", "truncation": "truncation: top {} of ~90"}
rows = ["| set | FD | sFD | KID ×100 | IS | precision | recall |", "|---|---|---|---|---|---|---|"]
for (kind, level), r in results.items():
    rows.append(f"| {LABELS[kind].format(level)} | {r['FD']:.3f} | {r['sFD']:.3f} | {100 * r['KID']:.3f} | "
                f"{r['IS']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} |")
print(f"{len(CONDITIONS)} sets x {N_DRAWS} draws in {controlled_seconds:.1f} s; all metrics on domain features")
print(f"for scale: FD of all {len(y_held)} held-out images {fd_ab:.3f}, of {N_EVAL} of them {results['real', 0]['FD']:.3f}")
Markdown("\n".join(rows))

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6, 4))
base = results["real", 0]
ax.scatter([base["recall"]], [base["precision"]], color="k", zorder=3, label="held-out real")
for kind, marker in (("noise", "o"), ("blur", "s"), ("modes", "^"), ("truncation", "D")):
    pts = [base] + [r for (k_, _), r in results.items() if k_ == kind]
    ax.plot([p["recall"] for p in pts], [p["precision"] for p in pts], marker=marker, label=kind)
ax.set_xlabel("recall (diversity)")
ax.set_ylabel("precision (fidelity)")
ax.set_xlim(0, 1.02)
ax.set_ylim(0, 1.02)
ax.set_title("Each defect moves a different coordinate (domain features)")
ax.legend(loc="lower left", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Read the figure from the black dot (held-out real digits) outwards:
#
# - **mode dropping** slides left: recall falls with the classes kept while precision stays
#   high, since every sample is still a perfect digit. FD grows a lot; IS falls (fewer classes)
#   but would not notice dropped *styles within* a class. (IS of real digits is far below 10
#   because the small classifier's softmax is not confident: IS measures the classifier as much
#   as the samples);
# - **noise and blur** slide down: precision falls. Noise also shows a blind spot of $k$-NN
#   recall: scattered samples have large balls that cover the real data, so recall *rises*. A
#   high recall means something only together with a decent precision;
# - **truncation** slides left and up: precision and IS rise, recall falls, the signature of
#   Table 4 of {cite:t}`dhariwal2021beat` for growing guidance scales. FD, however, does not rise
#   (it falls here): at $N = 180$ most of any set's FD is the finite-sample bias of section 8
#   (compare the FD of all 898 held-out images above), so FD at this size cannot resolve the lost
#   diversity that recall sees at once. The paper's FID rise is measured on 50,000 samples;
# - **copied training images** have perfect precision and lower FD, sFD and KID than held-out
#   real data; only their recall is slightly lower (0.889 vs 0.901). No metric here penalises
#   memorisation.
#
# The next cell asserts these claims.

# %% tags=["hide-input"]
r = results
base = r["real", 0]
msg = "\n" + "\n".join(f"{k}: " + ", ".join(f"{m_} {v:.3f}" for m_, v in val.items()) for k, val in r.items())
# FD grows with the corruption strength
assert base["FD"] < r["noise", 0.4]["FD"] < r["noise", 0.8]["FD"], msg
assert base["FD"] < r["blur", 1.0]["FD"] < r["blur", 2.0]["FD"], msg
assert base["FD"] < r["modes", 6]["FD"] < r["modes", 4]["FD"] < r["modes", 2]["FD"], msg
# mode dropping: recall falls, precision stays high
assert r["modes", 2]["recall"] < base["recall"] - 0.25 and r["modes", 4]["recall"] < base["recall"] - 0.1, msg
assert min(r["modes", c]["precision"] for c in (6, 4, 2)) > base["precision"] - 0.1, msg
# noise and blur: precision falls (and noise inflates recall)
assert r["noise", 0.8]["precision"] < base["precision"] - 0.2 and r["blur", 2.0]["precision"] < base["precision"] - 0.1, msg
assert r["noise", 0.8]["recall"] >= base["recall"], msg
# truncation: precision and IS up, recall down -- the guidance trade-off
assert r["truncation", 18]["precision"] >= base["precision"] and r["truncation", 18]["IS"] > base["IS"], msg
assert r["truncation", 18]["recall"] < base["recall"] - 0.3, msg
# memorised copies are not penalised: perfect precision, FD no worse, recall within 0.05
assert r["copies", 0]["precision"] == 1.0 and r["copies", 0]["FD"] <= base["FD"], msg
assert r["copies", 0]["recall"] > base["recall"] - 0.05, msg

# %% [markdown]
# ## 8. How the number of samples biases FD
#
# FD is a non-linear function of *estimated* means and covariances, so it is **biased upwards**:
# two samples of one distribution have FD > 0 on average. For $N$ samples of
# $\mathcal N(0, I_D)$ on each side the leading term can be computed.
# The sample means differ by a $\mathcal N(0, 2I/N)$ vector: $\mathbb E\|\hat\mu_1 - \hat\mu_2\|^2 = 2D/N$.
# Write the sample covariances as $\hat\Sigma_i = I + \Delta_i$. Expanding {eq}`ch07-fd` to second
# order ($(I + \Delta)^{1/2} = I + \Delta/2 - \Delta^2/8 + \dots$) gives
# $\operatorname{Tr}(\hat\Sigma_1 + \hat\Sigma_2 - 2(\hat\Sigma_1\hat\Sigma_2)^{1/2}) \approx \tfrac14\|\Delta_1 - \Delta_2\|_F^2$.
# With the $N - 1$ normalisation, $\operatorname{Var}\hat\Sigma_{jj} = 2/(N-1)$ and
# $\operatorname{Var}\hat\Sigma_{jl} = 1/(N-1)$ for $j \ne l$, so
# $\mathbb E\|\Delta_i\|_F^2 = D(D+1)/(N-1)$ and
#
# $$
# \mathbb E\big[\mathrm{FD}_N\big] \approx \frac{2D}{N} + \frac{D(D+1)}{2(N-1)} .
# $$ (ch07-fd-bias)
#
# The bias falls like $1/N$ but grows like $D^2$: with 2048-dimensional features, FID must use a
# fixed, large $N$ (50,000 in the ADM papers), and FIDs at different $N$ cannot be compared. For
# general features the same law holds, $\mathrm{FD}_N \approx \mathrm{FD}_\infty + b/N$
# {cite:p}`chong2020unbiased`, and can be extrapolated to $N \to \infty$. KID ({eq}`ch07-kid`) is
# unbiased: its mean is 0 at every $N$.
#
# **Experiment.** (a) Isotropic Gaussians in $D = 16$ against {eq}`ch07-fd-bias`. (b) Disjoint
# random halves of the held-out digit features ($D = 64$), for growing $N$, with the fit
# $a + b/N$; KID on the same pairs.

# %%
D_GAUSS = 16
N_GAUSS = [50, 100, 200, 400, 800, 1600]
gauss_mean, gauss_se = [], []
for n in N_GAUSS:
    gen = torch.Generator().manual_seed(n)
    vals = [metrics.fid_from_features(torch.randn(n, D_GAUSS, generator=gen, dtype=torch.float64),
                                      torch.randn(n, D_GAUSS, generator=gen, dtype=torch.float64)) for _ in range(BIAS_REPEATS)]
    gauss_mean.append(np.mean(vals))
    gauss_se.append(np.std(vals) / np.sqrt(len(vals)))
gauss_closed = [2 * D_GAUSS / n + D_GAUSS * (D_GAUSS + 1) / (2 * (n - 1)) for n in N_GAUSS]

N_DIGITS = [25, 50, 100, 200, 400]
held_pool = feats_held["pool"].double()
digit_fd, digit_kid = [], []
for n in N_DIGITS:
    fds, kids = [], []
    for rep in range(BIAS_REPEATS):
        perm = torch.randperm(len(held_pool), generator=torch.Generator().manual_seed(10 * n + rep))
        a_, b_ = held_pool[perm[:n]], held_pool[perm[n : 2 * n]]
        fds.append(metrics.fid_from_features(a_, b_))
        kids.append(metrics.kid(a_, b_, num_subsets=10, subset_size=n, seed=rep).mean)
    digit_fd.append(np.mean(fds))
    digit_kid.append((np.mean(kids), np.std(kids) / np.sqrt(len(kids))))
# least squares for FD_N = a + b / N on relative residuals, so that every N counts equally
design = np.stack([np.ones(len(N_DIGITS)), 1.0 / np.array(N_DIGITS)], 1) / np.array(digit_fd)[:, None]
(fd_inf, fd_slope), *_ = np.linalg.lstsq(design, np.ones(len(N_DIGITS)), rcond=None)

# %% tags=["nbval-ignore-output"]
print(" N    FD (Gaussian, mean ± s.e.)   closed form (ch07-fd-bias)")
for n, mean, se, cf in zip(N_GAUSS, gauss_mean, gauss_se, gauss_closed):
    print(f"{n:5d}   {mean:8.4f} ± {se:.4f}            {cf:8.4f}")
print("\n N    FD digits (same distribution)   N x FD    KID x 100 (mean ± s.e.)")
for n, fd_, (km, ks) in zip(N_DIGITS, digit_fd, digit_kid):
    print(f"{n:5d}   {fd_:8.4f}                   {n * fd_:7.2f}   {100 * km:+.4f} ± {100 * ks:.4f}")
print(f"\nfit FD_N = a + b / N on the digits: a (FD at N -> infinity) = {fd_inf:.4f}, b = {fd_slope:.2f}")

fig, axes = plt.subplots(1, 3, figsize=(10, 3.2))
axes[0].errorbar(N_GAUSS, gauss_mean, yerr=2 * np.array(gauss_se), fmt="o", label="measured")
axes[0].plot(N_GAUSS, gauss_closed, "-", label="2D/N + D(D+1)/(2(N-1))")
axes[0].set(xscale="log", yscale="log", xlabel="N per set", ylabel="FD", title=f"two samples of N(0, I_{D_GAUSS})")
axes[0].legend(fontsize=8)
n_grid = np.geomspace(N_DIGITS[0], 4 * N_DIGITS[-1], 50)
axes[1].plot(N_DIGITS, digit_fd, "o", label="measured")
axes[1].plot(n_grid, fd_inf + fd_slope / n_grid, "-", label="fit a + b/N")
axes[1].set(xscale="log", yscale="log", xlabel="N per set", title="FD, two halves of the digits")
axes[1].legend(fontsize=8)
axes[2].errorbar(N_DIGITS, [100 * km for km, _ in digit_kid], yerr=[200 * ks for _, ks in digit_kid], fmt="s", color="C2")
axes[2].axhline(0, color="k", lw=0.5)
axes[2].set(xscale="log", xlabel="N per set", ylabel="KID x 100", title="KID (unbiased), same pairs")
axes[2].minorticks_off()
axes[2].set_xticks(N_DIGITS, [str(n) for n in N_DIGITS])
plt.tight_layout()
plt.show()

# %% tags=["hide-input"]
# the bias decreases with N, on the Gaussians and on the digit features
assert np.all(np.diff(gauss_mean) < 0) and np.all(np.diff(digit_fd) < 0), (gauss_mean, digit_fd)
# (ch07-fd-bias) within Monte Carlo error plus 5% for the terms beyond second order
for n, mean, se, cf in zip(N_GAUSS, gauss_mean, gauss_se, gauss_closed):
    assert abs(mean - cf) < 4 * se + 0.05 * cf, f"N={n}: measured {mean:.4f} ± {se:.4f}, closed form {cf:.4f}"
# the 1/N law extrapolates to (nearly) zero for two halves of one distribution
assert abs(fd_inf) < 0.3 * digit_fd[-1], f"extrapolated FD {fd_inf:.4f} vs FD at N={N_DIGITS[-1]}: {digit_fd[-1]:.4f}"
assert all(abs(km) < 4 * ks + 1e-4 for km, ks in digit_kid), digit_kid

# %% [markdown]
# The bias halves each time $N$ doubles, as {eq}`ch07-fd-bias` predicts for the Gaussian; the
# digit features follow the same $1/N$ law with $\mathrm{FD}_\infty$ near 0, as two halves of one
# distribution must. KID stays at 0 within its error bars. Practical rule: **compare FDs only at
# equal $N$**, and treat differences smaller than the spread between random draws as noise.

# %% [markdown]
# ## 9. Why published FIDs need the Inception network
#
# "FID" is {eq}`ch07-fd` on the 2048-d `pool_3` features of one particular network, the
# TensorFlow Inception-v3 graph `inception-2015-12-05`, with its 299×299 resize, on 50,000
# samples against a fixed reference batch. Change the network (even torchvision's
# Inception-v3), the resize filter or $N$, and the number changes: published FID, sFID and IS
# are comparable only because everyone uses this network. Even the resize splits published
# evaluators in two, so `gcg` offers both ($u \in [0, 255]$ are the pixels, $j$ an output column):
#
# | `preprocess=` | resize to 299 reads the source at | scaling | matches the numbers of |
# |---|---|---|---|
# | `"adm"` (default) | $j \cdot \mathrm{in}/\mathrm{out}$ (TF1 bilinear) | $(u - 128)/128$ | the TF graph: ADM's `evaluator.py` ({cite:t}`dhariwal2021beat`'s tables), torch-fidelity |
# | `"pytorch-fid"` | $(j + \tfrac12)\,\mathrm{in}/\mathrm{out} - \tfrac12$ | $u/127.5 - 1$ | papers that used pytorch-fid |
#
# `gcg.inception.FIDInceptionV3` is that architecture in PyTorch (1008 classes, the graph's
# pooling quirks, torchvision's module names); one `extract` call gives all three feature sets.
# `load_fid_inception` reads its weights from a **file you supply** (pytorch-fid's
# `pt_inception-2015-12-05-6726825d.pth` or torch-fidelity's file, or the
# `GCG_INCEPTION_WEIGHTS` environment variable) and says what to do when none is given:

# %%
saved = os.environ.pop(INCEPTION_WEIGHTS_ENV, None)  # show the message even if you have the file
try:
    load_fid_inception()
except FileNotFoundError as err:
    print(f"FileNotFoundError: {err}")
finally:
    if saved is not None:
        os.environ[INCEPTION_WEIGHTS_ENV] = saved

# %% [markdown]
# With random weights the network still runs (as in gcg's tests): right shapes, meaningless
# values.

# %%
inception = FIDInceptionV3().init_random_(seed=0)
print(f"FIDInceptionV3: {sum(p.numel() for p in inception.parameters()):,} parameters")
with torch.no_grad():
    out = inception.extract(x_held[:2])  # 8x8 digits, resized to 299x299 inside
print({k: tuple(v.shape) for k, v in out.items()})
assert out["pool"].shape == (2, 2048) and out["spatial"].shape == (2, 2023) and out["logits"].shape == (2, 1008)

# %% [markdown]
# On the digits the domain network goes through the same command-line evaluator a researcher
# runs on ImageNet samples, `python -m gcg.evaluate REF SAMPLES --features domain:PATH`
# (`--inception-weights W` for the real FID). Here: the reference half against the held-out
# half, as uint8 `.npz` files like those `gcg.sample` writes.

# %% tags=["nbval-ignore-output"]
import tempfile

from gcg.evaluate import main as evaluate_main


def to_uint8_nhwc(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


with tempfile.TemporaryDirectory() as tmp:
    save_feature_net(feature_net, f"{tmp}/digits_features.pt")
    np.savez(f"{tmp}/ref.npz", arr_0=to_uint8_nhwc(x_ref), arr_1=y_ref.numpy())
    np.savez(f"{tmp}/held.npz", arr_0=to_uint8_nhwc(x_held), arr_1=y_held.numpy())
    cli = evaluate_main([f"{tmp}/ref.npz", f"{tmp}/held.npz", "--features", f"domain:{tmp}/digits_features.pt",
                         "--no-progress", "--device", "cpu"])

# %%
assert cli["precision"] > 0.8 and cli["recall"] > 0.8 and cli["fid"] < fd_low, cli

# %% tags=["nbval-ignore-output"]
print(f"chapter run time: {time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# ## Summary
#
# $$
# \mathrm{FD} = \|\mu_1 - \mu_2\|^2 + \operatorname{Tr}\Big(\Sigma_1 + \Sigma_2 - 2\,(\Sigma_1\Sigma_2)^{1/2}\Big) \;\le\; W_2^2(P, Q)
# $$
#
# Every sample metric compares *features*: FD is the optimal-transport cost between Gaussian fits
# of them, precision and recall split its fidelity and diversity apart, and none of them detects
# copies of the training set.
#
# | metric | features | rewards | misses / pitfalls |
# |---|---|---|---|
# | IS | classifier probabilities | confident samples spread over classes | never looks at real data; diversity *within* a class; classifier-specific ceiling |
# | FID | pool features, Gaussian fit | fidelity and diversity in one number | only two moments; biased by $N$ (compare at equal $N$); network-specific |
# | sFID | spatial features | spatial layout too | as FID, larger $D$ so larger bias |
# | precision | $k$-NN manifold of real data | samples that look real | dropped modes; memorisation |
# | recall | $k$-NN manifold of samples | coverage of the real data | inflated by scattered outliers |
# | KID | polynomial-kernel MMD | moments up to third order, unbiased in $N$ | noisier than FD; network-specific |
#
# Guidance moves samples along the fidelity–diversity axis, so which scale is "best" depends on
# the metric read; the guidance chapters report them all, and [chapter 08](08_training_at_scale.ipynb)
# runs the same `.npz` → `gcg.evaluate` pipeline on a trained model's samples.

# %% [markdown]
# ## Exercises
#
# 1. **Step 4 by hand.** For $D = 1$ the constraint of step 3 says $|C| \le \sigma_1\sigma_2$.
#    Re-derive FD $= (\mu_1 - \mu_2)^2 + (\sigma_1 - \sigma_2)^2$ from steps 1–3 alone, and find
#    the optimal coupling. Which coupling gives the *largest* cost?
#
#    ```{admonition} Hint
#    :class: dropdown
#    A 2×2 covariance matrix is PSD iff its diagonal and its determinant are non-negative.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    By steps 1–2 the cost is $(\mu_1 - \mu_2)^2 + \sigma_1^2 + \sigma_2^2 - 2C$, and
#    $\det\begin{pmatrix}\sigma_1^2 & C\\ C & \sigma_2^2\end{pmatrix} \ge 0$ means
#    $|C| \le \sigma_1\sigma_2$. The smallest cost takes $C = \sigma_1\sigma_2$:
#    $(\mu_1 - \mu_2)^2 + (\sigma_1 - \sigma_2)^2$. It is attained by the monotone map
#    $Y = \mu_2 + \tfrac{\sigma_2}{\sigma_1}(X - \mu_1)$ (correlation $+1$; {eq}`ch07-ot-map` with
#    $A = \sigma_2/\sigma_1$). The largest cost takes $C = -\sigma_1\sigma_2$, the decreasing map
#    $Y = \mu_2 - \tfrac{\sigma_2}{\sigma_1}(X - \mu_1)$, and costs $(\mu_1 - \mu_2)^2 + (\sigma_1 + \sigma_2)^2$.
#    ```
#
# 2. **Gelbrich's bound.** Take $P$ = the uniform distribution on $\{-1, +1\}$ and
#    $Q = \mathcal N(0, 1)$ (same mean and variance). What is their FD? Compute their true
#    $W_2^2$ (in 1-D the optimal coupling matches quantiles) and check that FD is a lower bound.
#
#    ```{admonition} Hint
#    :class: dropdown
#    Matching quantiles sends the lower half of $Q$ to $-1$ and the upper half to $+1$, i.e.
#    $X = \operatorname{sign}(Z)$; you need $\mathbb E|Z| = \sqrt{2/\pi}$.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    Equal means and variances give FD $= 0$. With $X = \operatorname{sign}(Z)$,
#    $W_2^2 = \mathbb E(|Z| - 1)^2 = \mathbb E Z^2 - 2\,\mathbb E|Z| + 1 = 2 - 2\sqrt{2/\pi} \approx 0.40 > 0$:
#    FD sees only two moments, so it cannot tell a two-point distribution from a Gaussian.
#    ```
#
# 3. **IS splits.** Compute `metrics.inception_score` on the held-out digit probabilities with
#    `splits=1` and `splits=10`. Which is smaller, and why? Relate it to the bias of section 8.
#    (Seconds on a CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Each split estimates the marginal $p(y)$ from a tenth of the samples, and $H$ is concave:
#    by Jensen, the entropy of an estimated marginal is biased downwards, more so for small sets.
#    ```
#
# 4. **Choose $k$.** Re-run the controlled sets of section 7 with $k = 1$ and $k = 10$. How do the
#    precision and recall of the held-out real set change, and why do Kynkäänniemi et al.
#    recommend a small $k$ with many samples? (≈ 30 s on a 2-core CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    The ball around each point reaches its $k$-th neighbour: a larger $k$ inflates every ball, so
#    both manifolds cover more and both numbers rise towards 1, for good and bad sets alike.
#    ```
#
# 5. **Bias in $D$.** Repeat the Gaussian experiment of section 8 with $D = 64$ and $N$ from 200
#    to 3200. How many samples does {eq}`ch07-fd-bias` say you need for a bias below 1 with
#    $D = 2048$ whitened features? Why are real Inception features less demanding? (≈ 1 min on a
#    2-core CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    The second term dominates: $D^2/(2N) < 1$. For correlated features the covariance estimate's
#    error in a pair of directions scales with their variances, so a spectrum that decays fast
#    acts like a much smaller $D$.
#    ```
