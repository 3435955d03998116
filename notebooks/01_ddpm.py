# %% [markdown]
# # 01 · Denoising diffusion probabilistic models
#
# ```{admonition} Learning goals
# After this chapter you can
# - derive the forward marginal $q(x_t \mid x_0)$ and posterior $q(x_{t-1} \mid x_t, x_0)$, and
#   implement the forward sample;
# - derive the variational bound, its KL terms and $L_\text{simple}$ from the
#   $\epsilon$-parameterisation;
# - convert between the $x_0$, $\epsilon$, score and $v$ predictions of a network;
# - predict what ancestral sampling does with the exact model, and measure what a short chain costs.
#
# **Prerequisites:** Gaussians (sums, completing the square), Bayes' rule, the KL divergence,
# PyTorch tensors.
# ```
#
# **The question.** Can a network learn to reverse a chain that slowly drowns data in Gaussian
# noise, turning noise into data?
#
# **The paper's claim.** {cite:t}`ho2020ddpm` answer yes: with $T = 1000$
# steps, a linear schedule $\beta_t$ from $10^{-4}$ to $0.02$ and a network trained by a plain
# mean-squared error on the noise ($L_\text{simple}$), ancestral sampling reaches FID 3.17 and
# Inception score 9.46 on CIFAR-10, with a likelihood bound of 3.75 bits/dim (Table 1).
#
# Every identity is checked against `gcg.diffusion` on a **labelled 2-D Gaussian mixture**
# (`gcg.toy`) with an exact noise predictor, and on scikit-learn's **8×8 digits** with
# a small trained UNet.

# %%
import inspect
import math
import os
import random
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown

GCG_SCALE = float(os.environ.get("GCG_SCALE", "1"))  # 1 = the CPU size whose outputs are stored
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_num_threads(2)
random.seed(0)
np.random.seed(0)
torch.manual_seed(0)
torch.set_printoptions(precision=4, sci_mode=False)
CHAPTER_START = time.perf_counter()


def show(obj):
    """Display the source of a gcg function or class as a highlighted code block."""
    return Markdown(f"```python\n{inspect.getsource(obj)}```")


# %%
from gcg.diffusion import GaussianDiffusion
from gcg.losses import normal_kl
from gcg.schedules import get_named_beta_schedule
from gcg.toy import GaussianMixture

T = 1000
betas = get_named_beta_schedule("linear", T)  # float64 [T]: Ho et al. 2020, 1e-4 -> 0.02
diffusion = GaussianDiffusion(betas)  # epsilon prediction, fixed small variance, L_simple
toy = GaussianMixture.ring()  # 6 classes on a circle, D = 2
print(diffusion)
print(f"toy: {toy.num_classes} components in D = {toy.dim}")


# %% [markdown]
# ## 1. The forward process
#
# For a variance schedule $\beta_1, \dots, \beta_T \in (0, 1)$, the forward (noising) process is
# the Markov chain
#
# $$
# q(x_t \mid x_{t-1}) = \mathcal N\!\left(x_t;\ \sqrt{1 - \beta_t}\, x_{t-1},\ \beta_t I\right),
# \qquad q(x_{1:T} \mid x_0) = \prod_{t=1}^T q(x_t \mid x_{t-1}).
# $$ (ch01-forward-step)
#
# Write $\alpha_t = 1 - \beta_t$, $\bar\alpha_t = \prod_{s=1}^t \alpha_s$. One step is
# $x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{1 - \alpha_t}\, \epsilon_t$ with fresh
# $\epsilon_t \sim \mathcal N(0, I)$. If (induction) $x_{t-1} = \sqrt{\bar\alpha_{t-1}}\, x_0 +
# \sqrt{1 - \bar\alpha_{t-1}}\, \bar\epsilon$ with $\bar\epsilon \sim \mathcal N(0, I)$
# independent of $\epsilon_t$, then
#
# $$
# x_t = \sqrt{\alpha_t \bar\alpha_{t-1}}\, x_0
#       + \underbrace{\sqrt{\alpha_t (1 - \bar\alpha_{t-1})}\, \bar\epsilon
#       + \sqrt{1 - \alpha_t}\, \epsilon_t}_{\text{sum of independent Gaussians}},
# $$
#
# a Gaussian noise term of variance $\alpha_t (1 - \bar\alpha_{t-1}) + 1 - \alpha_t =
# 1 - \bar\alpha_t$. So every marginal is in **closed form**:
#
# $$
# q(x_t \mid x_0) = \mathcal N\!\left(x_t;\ \sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\right),
# \qquad x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon .
# $$ (ch01-marginal)
#
# This is Eq. (4) of {cite:t}`ho2020ddpm`: training never simulates the chain.
#
# ```{note}
# **Indexing.** The paper counts steps $t = 1, \dots, T$, code chain indices $i = 0, \dots, T-1$,
# with $t = i + 1$: `diffusion.alphas_cumprod[i]` is $\bar\alpha_{i+1}$.
# ```

# %% [markdown]
# ### Write it yourself: the forward sample
#
# Implement `my_q_sample(x_start, t, noise, alphas_cumprod)`: `x_start`, `noise` `[N, ...]`, `t`
# `[N]` (int64 chain indices), `alphas_cumprod` `[T]`; return $x_t$ of {eq}`ch01-marginal`, shaped
# like `x_start`.

# %% tags=["write-it-yourself", "hide-input"]
def my_q_sample(x_start, t, noise, alphas_cumprod):
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, Eq. (ch01-marginal)."""
    # --- solution ---
    alpha_bar = alphas_cumprod[t].reshape(-1, *[1] * (x_start.dim() - 1)).to(x_start.dtype)
    return alpha_bar.sqrt() * x_start + (1 - alpha_bar).sqrt() * noise
    # --- end of solution ---


# %%
check_gen = torch.Generator().manual_seed(0)
for shape in [(64, 2), (16, 1, 8, 8)]:
    x_check = torch.randn(shape, generator=check_gen, dtype=torch.float64)
    noise_check = torch.randn(shape, generator=check_gen, dtype=torch.float64)
    t_check = torch.randint(0, T, (shape[0],), generator=check_gen)
    torch.testing.assert_close(
        my_q_sample(x_check, t_check, noise_check, diffusion.alphas_cumprod),
        diffusion.q_sample(x_check, t_check, noise=noise_check),
        msg="my_q_sample differs from diffusion.q_sample: sqrt(alpha_bar) multiplies x_0, "
            "sqrt(1 - alpha_bar) the noise, and alphas_cumprod[t] is indexed by the chain index t")
print("my_q_sample agrees with GaussianDiffusion.q_sample")

# %% tags=["nbval-ignore-output"]
show(GaussianDiffusion.q_sample)

# %% [markdown]
# **Check.** Run the chain {eq}`ch01-forward-step` step by step from toy data and compare $x_t$
# with the closed form {eq}`ch01-marginal`, which for data of mean $m$ and covariance $S$ gives
# $\mathbb E[x_t] = \sqrt{\bar\alpha_t}\, m$ and $\operatorname{Cov}[x_t] = \bar\alpha_t S +
# (1 - \bar\alpha_t) I$, and with a direct `q_sample` draw.

# %% tags=["nbval-ignore-output"]
n = 40_000
gen = torch.Generator().manual_seed(1)
x0, y0 = toy.sample(n, generator=gen, dtype=torch.float64)
checkpoints = [0, 9, 99, 499, 999]  # chain indices i (paper t = i + 1)
x, rows = x0.clone(), []
for i in range(T):  # the definition: one Gaussian step at a time
    x = (1 - betas[i]).sqrt() * x + betas[i].sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    if i in checkpoints:
        ab = diffusion.alphas_cumprod[i]
        mean_cf = ab.sqrt() * toy.mean()
        cov_cf = ab * toy.covariance() + (1 - ab) * torch.eye(2, dtype=torch.float64)
        t_batch = torch.full((n,), i, dtype=torch.long)
        direct = diffusion.q_sample(x0, t_batch, noise=torch.randn(x0.shape, generator=gen, dtype=torch.float64))
        rows.append((i + 1, float(ab), float((x.mean(0) - mean_cf).abs().max()),
                     float((torch.cov(x.T) - cov_cf).abs().max()),
                     float((torch.cov(direct.T) - cov_cf).abs().max())))
print(f"{'t':>5} {'alpha_bar_t':>12} {'|mean err| chain':>17} {'|cov err| chain':>16} {'|cov err| q_sample':>19}")
for t_, ab, me, ce, cd in rows:
    print(f"{t_:>5} {ab:>12.5f} {me:>17.4f} {ce:>16.4f} {cd:>19.4f}")
worst = max(max(r[2:]) for r in rows)
assert worst < 0.03, f"closed form q(x_t | x_0) disagrees with the simulated chain: {worst:.4f}"

# %% [markdown]
# Errors are at the Monte Carlo level (standard errors 0.005 for a mean, 0.007 for a
# variance).
#
# **Picture.** In 1-D the whole marginal $q(x_t)$ can be drawn: for a mixture, a mixture of
# $\mathcal N(\sqrt{\bar\alpha_t}\,\mu_k, \bar\alpha_t s_k^2 + 1 - \bar\alpha_t)$
# (`GaussianMixture.log_prob(x, alpha_bar)`). The modes shrink towards 0 and blur into one
# Gaussian; single paths wander through them.

# %%
toy_1d = GaussianMixture([[-1.2], [0.3], [1.4]], std=[0.15, 0.25, 0.1], weights=[0.3, 0.5, 0.2])
x_grid = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None]
t_grid = np.unique(np.geomspace(1, T, 120).astype(int)) - 1  # chain indices, denser at small t
density = torch.stack([toy_1d.log_prob(x_grid, diffusion.alphas_cumprod[i]).exp() for i in t_grid], 1)  # [x, t]
dx = float(x_grid[1] - x_grid[0])
mass = density.sum(0) * dx
std_normal = torch.exp(-0.5 * x_grid[:, 0] ** 2) / math.sqrt(2 * math.pi)
print(f"1-D mixture: mass of q(x_t) on [-3, 3] between {float(mass.min()):.4f} and {float(mass.max()):.4f}; "
      f"max |q(x_T) - N(0, 1)| = {float((density[:, -1] - std_normal).abs().max()):.1e}")
assert float((density[:, -1] - std_normal).abs().max()) < 0.01
path_gen = torch.Generator().manual_seed(4)
paths = toy_1d.sample(6, generator=path_gen)[0].double()
path_x = [paths]
for i in range(T):
    path_x.append((1 - betas[i]).sqrt() * path_x[-1] + betas[i].sqrt() * torch.randn(paths.shape, generator=path_gen, dtype=torch.float64))
path_x = torch.cat(path_x, 1)  # [6, T + 1], column t = x_t
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
axes[0].pcolormesh(t_grid + 1, x_grid[:, 0].numpy(), density.sqrt().numpy(), shading="nearest", cmap="magma")
for p in path_x:
    axes[0].plot(np.arange(1, T + 1), p[1:].numpy(), lw=0.6, color="w", alpha=0.7)
axes[0].set(xscale="log", xlabel="t (log scale)", ylabel="$x_t$", ylim=(-3, 3),
            title=r"$q(x_t)$ of a 1-D mixture (colour: $\sqrt{\mathrm{density}}$), six forward paths")
for i in [0, 49, 199, 499, T - 1]:
    axes[1].plot(x_grid[:, 0], toy_1d.log_prob(x_grid, diffusion.alphas_cumprod[i]).exp(), label=f"t = {i + 1}")
axes[1].plot(x_grid[:, 0], toy_1d.log_prob(x_grid).exp(), "k", lw=1, label="data")
axes[1].plot(x_grid[:, 0], std_normal, "k--", lw=1, label="N(0, 1)")
axes[1].set(xlabel="x", ylim=(0, 1.5), title="slices")
axes[1].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ### The schedule
#
# The linear schedule makes $\bar\alpha_T \approx 4 \times 10^{-5}$: $x_T$ keeps
# $\sqrt{\bar\alpha_T} \approx 0.006$ of the signal, so $q(x_T \mid x_0)$ is almost exactly the
# prior $p(x_T) = \mathcal N(0, I)$. The mismatch
# $L_T = D_\text{KL}(q(x_T \mid x_0) \,\|\, \mathcal N(0, I))$ has no parameters (`normal_kl`).

# %%
t_last = torch.full((n,), T - 1, dtype=torch.long)
mean_T, _, logvar_T = diffusion.q_mean_variance(x0, t_last)
L_T_nats = normal_kl(mean_T, logvar_T, torch.zeros(()), torch.zeros(())).sum(1).mean()
print(f"alpha_bar_T = {float(diffusion.alphas_cumprod[-1]):.2e}; L_T = {float(L_T_nats):.2e} nats per example")

# %% [markdown]
# **Picture.** A photo (64×64) and a digit noised with one draw at several $t$, above
# $\bar\alpha_t$ and $\mathrm{SNR}_t = \bar\alpha_t / (1 - \bar\alpha_t)$ (dots: the strip's $t$). The SNR falls below 1 at $t = 260$, and by $t = 350$ neither image is
# recognisable: most of the chain is spent at low SNR.

# %%
from sklearn.datasets import load_sample_image

from gcg.data import load_digits_dataset
from gcg.images import plot_image_grid, to_unit_range

photo = torch.from_numpy(load_sample_image("china.jpg")[:, 100:527].copy()).permute(2, 0, 1)  # [3, 427, 427] uint8
photo = torch.nn.functional.interpolate(to_unit_range(photo)[None], size=(64, 64), mode="area")
digit = load_digits_dataset("train").as_tensors()[0][:1]
strip_t = [0, 50, 100, 200, 350, 500, 1000]  # paper steps; 0 = the data


def noised(x):
    """x [1, C, H, W] and its x_t for every t of strip_t, one shared noise draw: [len(strip_t), C, H, W]."""
    out = [x]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for t_ in strip_t[1:]:
        out.append(diffusion.q_sample(x, torch.tensor([t_ - 1]), noise=noise).float())
    return torch.cat(out)


snr = diffusion.alphas_cumprod / (1 - diffusion.alphas_cumprod)
print(f"SNR falls below 1 at t = {int((snr < 1).nonzero()[0]) + 1}")
fig = plt.figure(figsize=(9, 5.4))
gs = fig.add_gridspec(2, 2, height_ratios=[2.2, 1.3])
strip_labels = [f"t = {t_}" for t_ in strip_t]
digit_big = noised(digit).repeat_interleave(8, -1).repeat_interleave(8, -2).expand(-1, 3, -1, -1)  # 8x8 -> 64x64
plot_image_grid(fig.add_subplot(gs[0, :]), torch.cat([noised(photo), digit_big]), nrow=len(strip_t),
                col_labels=strip_labels, row_labels=["photo", "digit"])
steps = np.arange(1, T + 1)
ax = fig.add_subplot(gs[1, 0])
ax.plot(steps, diffusion.alphas_cumprod.numpy(), label=r"$\bar\alpha_t$")
ax.plot(steps, diffusion.sqrt_alphas_cumprod.numpy(), label=r"$\sqrt{\bar\alpha_t}$ (signal scale)")
ax.set(xlabel="t")
ax.legend(fontsize=8)
ax = fig.add_subplot(gs[1, 1])
ax.semilogy(steps, snr.numpy())
ax.axhline(1, color="gray", lw=0.8, ls=":")
ax.plot(strip_t[1:], snr[[t_ - 1 for t_ in strip_t[1:]]].numpy(), "o", ms=4)
ax.set(xlabel="t", title=r"SNR $= \bar\alpha_t / (1 - \bar\alpha_t)$")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The forward posterior $q(x_{t-1} \mid x_t, x_0)$
#
# Running the chain backwards needs $q(x_{t-1} \mid x_t)$, which depends on the whole data
# distribution; given $x_0$, though, it is Gaussian. By Bayes' rule and the Markov property,
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \frac{q(x_t \mid x_{t-1})\, q(x_{t-1} \mid x_0)}{q(x_t \mid x_0)}
# \propto \exp\!\left(-\frac{\lVert x_t - \sqrt{\alpha_t}\, x_{t-1}\rVert^2}{2\beta_t}
#   - \frac{\lVert x_{t-1} - \sqrt{\bar\alpha_{t-1}}\, x_0\rVert^2}{2(1 - \bar\alpha_{t-1})}\right).
# $$
#
# The exponent is quadratic in $x_{t-1}$, with precision
#
# $$
# \frac{\alpha_t}{\beta_t} + \frac{1}{1 - \bar\alpha_{t-1}}
# = \frac{\alpha_t (1 - \bar\alpha_{t-1}) + \beta_t}{\beta_t (1 - \bar\alpha_{t-1})}
# = \frac{1 - \bar\alpha_t}{\beta_t (1 - \bar\alpha_{t-1})},
# $$
#
# using $\alpha_t (1 - \bar\alpha_{t-1}) + \beta_t = \alpha_t - \bar\alpha_t + 1 - \alpha_t$.
# The mean is the linear coefficient $\sqrt{\alpha_t}\, x_t / \beta_t + \sqrt{\bar\alpha_{t-1}}\,
# x_0 / (1 - \bar\alpha_{t-1})$ divided by the precision. Completing the square:
#
# $$
# q(x_{t-1} \mid x_t, x_0) = \mathcal N\!\left(x_{t-1};\ \tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\right),
# \quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\, x_0
#             + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\, x_t,
# \quad
# \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\, \beta_t .
# $$ (ch01-posterior)
#
# These are Eqs. (6)–(7) of the paper (`q_posterior_mean_variance`).

# %% tags=["nbval-ignore-output"]
show(GaussianDiffusion.q_posterior_mean_variance)

# %% [markdown]
# **Check.** For a fixed scalar $x_0$, draw $x_{t-1}$, then $x_t$. They are jointly Gaussian, so
# the regression of $x_{t-1}$ on $x_t$ is the conditional mean: slope = the $x_t$ coefficient of
# $\tilde\mu_t$, intercept = its $x_0$ term, residual variance = $\tilde\beta_t$.

# %% tags=["nbval-ignore-output"]
x0_scalar, m = 0.7, 400_000
print(f"{'t':>5} {'slope':>8} {'coef2':>8} {'intercept':>10} {'coef1*x0':>9} {'resid var':>10} {'beta_tilde':>10}")
for i in [1, 50, 500, 999]:  # chain index i = paper step t = i + 1
    x0_rep = torch.full((m, 1), x0_scalar, dtype=torch.float64)
    x_prev = diffusion.q_sample(x0_rep, torch.full((m,), i - 1, dtype=torch.long),
                                noise=torch.randn((m, 1), generator=gen, dtype=torch.float64))
    x_t = (1 - betas[i]).sqrt() * x_prev + betas[i].sqrt() * torch.randn((m, 1), generator=gen, dtype=torch.float64)
    design = torch.cat([x_t, torch.ones_like(x_t)], dim=1)
    (slope, intercept), *_ = torch.linalg.lstsq(design, x_prev).solution.T
    resid_var = float((x_prev[:, 0] - slope * x_t[:, 0] - intercept).var())
    mean_cf, var_cf, _ = diffusion.q_posterior_mean_variance(
        torch.tensor([[x0_scalar, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64),
        torch.tensor([i]))  # column 0 isolates the x_0 term, column 1 the x_t coefficient
    coef1_x0, coef2 = float(mean_cf[0, 0]), float(mean_cf[0, 1])
    print(f"{i + 1:>5} {float(slope):>8.4f} {coef2:>8.4f} {float(intercept):>10.4f} {coef1_x0:>9.4f} "
          f"{resid_var:>10.6f} {float(var_cf):>10.6f}")
    assert abs(float(slope) - coef2) < 0.01 and abs(float(intercept) - coef1_x0) < 0.01
    assert abs(resid_var / float(var_cf) - 1) < 0.02

# %% [markdown]
# ## 3. The reverse process and the variational bound
#
# The generative model runs the chain backwards with learned Gaussian steps,
#
# $$
# p_\theta(x_{0:T}) = p(x_T) \prod_{t=1}^T p_\theta(x_{t-1} \mid x_t), \qquad
# p(x_T) = \mathcal N(0, I), \qquad
# p_\theta(x_{t-1} \mid x_t) = \mathcal N\!\left(\mu_\theta(x_t, t),\ \sigma_t^2 I\right),
# $$ (ch01-reverse)
#
# with $\sigma_t^2$ fixed to $\tilde\beta_t$ (`model_var_type="fixed_small"`) or $\beta_t$
# (`"fixed_large"`). Its likelihood $p_\theta(x_0) = \int p_\theta(x_{0:T})\, dx_{1:T}$ is
# intractable; Jensen's inequality with proposal $q(x_{1:T} \mid x_0)$ bounds it:
#
# $$
# -\log p_\theta(x_0)
# = -\log \mathbb E_{q(x_{1:T} \mid x_0)}\!\left[\frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\right]
# \le \mathbb E_q\!\left[-\log p(x_T) - \sum_{t \ge 1} \log \frac{p_\theta(x_{t-1} \mid x_t)}{q(x_t \mid x_{t-1})}\right]
# =: L .
# $$
#
# To get KL divergences, rewrite each forward step for $t \ge 2$
# by Bayes' rule **given $x_0$** (by the Markov property $q(x_t \mid x_{t-1}) = q(x_t \mid x_{t-1}, x_0)$):
#
# $$
# q(x_t \mid x_{t-1}) = \frac{q(x_{t-1} \mid x_t, x_0)\, q(x_t \mid x_0)}{q(x_{t-1} \mid x_0)} .
# $$
#
# In $\sum_{t \ge 2} \log q(x_t \mid x_{t-1})$ the ratios $q(x_t \mid x_0) / q(x_{t-1} \mid x_0)$
# telescope to $q(x_T \mid x_0) / q(x_1 \mid x_0)$, and $q(x_1 \mid x_0)$ cancels the $t = 1$
# term. Collecting:
#
# $$
# L = \mathbb E_q\Big[
#   \underbrace{D_\text{KL}\big(q(x_T \mid x_0) \,\|\, p(x_T)\big)}_{L_T}
#   + \sum_{t=2}^{T} \underbrace{D_\text{KL}\big(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t)\big)}_{L_{t-1}}
#   \underbrace{- \log p_\theta(x_0 \mid x_1)}_{L_0} \Big] .
# $$ (ch01-elbo)
#
# This is Eq. (5) of the paper. Each $L_{t-1}$ compares two Gaussians, in closed form
#
# $$
# D_\text{KL}\big(\mathcal N(\mu_1, s_1^2) \,\|\, \mathcal N(\mu_2, s_2^2)\big)
# = \tfrac12\left(-1 + \log\frac{s_2^2}{s_1^2} + \frac{s_1^2}{s_2^2} + \frac{(\mu_1 - \mu_2)^2}{s_2^2}\right)
# $$ (ch01-kl)
#
# per dimension (`gcg.losses.normal_kl`). `calc_bpd_loop` evaluates each term of {eq}`ch01-elbo`
# with one $x_t$ draw, in bits per dimension (nats over $D \ln 2$); the toy uses
# `decoder="gaussian"` (image decoders: chapter 02).

# %% [markdown]
# **Check 1: the KL closed form.** A Monte Carlo estimate of $\mathbb E_{q}[\log q - \log p]$
# against `normal_kl`.

# %% tags=["nbval-ignore-output"]
mu1, lv1, mu2, lv2 = 0.3, math.log(0.5), -0.2, math.log(1.3)
z = mu1 + math.exp(0.5 * lv1) * torch.randn(1_000_000, generator=gen, dtype=torch.float64)
log_q = -0.5 * (math.log(2 * math.pi) + lv1 + (z - mu1) ** 2 / math.exp(lv1))
log_p = -0.5 * (math.log(2 * math.pi) + lv2 + (z - mu2) ** 2 / math.exp(lv2))
kl_mc = float((log_q - log_p).mean())
kl_cf = float(normal_kl(torch.tensor(mu1), torch.tensor(lv1), torch.tensor(mu2), torch.tensor(lv2)))
print(f"KL closed form {kl_cf:.4f}, Monte Carlo {kl_mc:.4f}")
assert abs(kl_cf - kl_mc) < 5e-3

# %% [markdown]
# **Check 2: it is a bound.** With the exact noise predictor of section 4, $L$ must lie above the
# data's true NLL on average: it bounds the model's cross-entropy, which is at least the data
# entropy.

# %% tags=["nbval-ignore-output"]
nll_data, nll_y = toy.sample(2000, generator=gen, dtype=torch.float64)
exact_eps = toy.eps_model(diffusion)
bpd = diffusion.calc_bpd_loop(exact_eps, nll_data, clip_denoised=False, decoder="gaussian", generator=gen)
true_bpd = toy.nll_bits_per_dim(nll_data)
se = float((bpd["total_bpd"] - true_bpd).std()) / math.sqrt(len(nll_data))
print(f"bound L: {float(bpd['total_bpd'].mean()):.4f} bits/dim   true NLL: {float(true_bpd.mean()):.4f} bits/dim   "
      f"gap {float((bpd['total_bpd'] - true_bpd).mean()):.4f} ± {se:.4f}")
print(f"  L_T (prior) {float(bpd['prior_bpd'].mean()):.2e}, L_0 (decoder) {float(bpd['vb'][:, 0].mean()):.4f}, "
      f"sum of L_1..L_(T-1) {float(bpd['vb'][:, 1:].sum(1).mean()):.4f}")
assert float((bpd["total_bpd"] - true_bpd).mean()) > -3 * se

# %% [markdown]
# ## 4. The $\epsilon$-parameterisation and $L_\text{simple}$
#
# With $\sigma_t^2$ fixed, the KL {eq}`ch01-kl` of each step is
# $L_{t-1} = \mathbb E_q\big[\lVert \tilde\mu_t(x_t, x_0) - \mu_\theta(x_t, t)\rVert^2 / (2\sigma_t^2)\big] + C$.
# Substitute $x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ from
# {eq}`ch01-marginal` into {eq}`ch01-posterior`: the coefficient of $x_t$ becomes
# $\frac{\beta_t}{\sqrt{\alpha_t}(1 - \bar\alpha_t)} + \frac{\sqrt{\alpha_t}(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}
# = \frac{\beta_t + \alpha_t - \bar\alpha_t}{\sqrt{\alpha_t}(1 - \bar\alpha_t)} = \frac{1}{\sqrt{\alpha_t}}$
# (as $\sqrt{\bar\alpha_{t-1} / \bar\alpha_t} = 1/\sqrt{\alpha_t}$), and that of $\epsilon$
# is $-\frac{\beta_t}{\sqrt{\alpha_t}\sqrt{1 - \bar\alpha_t}}$:
#
# $$
# \tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\, \epsilon\right)
# \quad\Longrightarrow\quad
# \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}}\left(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\, \epsilon_\theta(x_t, t)\right).
# $$ (ch01-eps-mean)
#
# The network predicts the noise (Eq. (11) of the paper); `p_mean_variance` computes this mean as
# $\tilde\mu_t(x_t, \hat x_0)$ with $\hat x_0$ from $\epsilon_\theta$ (box below), so that
# $\hat x_0$ can be clipped. Substituting {eq}`ch01-eps-mean`:
#
# $$
# L_{t-1} - C = \mathbb E_{x_0, \epsilon}\left[\frac{\beta_t^2}{2\sigma_t^2\, \alpha_t (1 - \bar\alpha_t)}
#   \left\lVert \epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,\ t\big)\right\rVert^2\right]
# $$ (ch01-weighted)
#
# (Eq. (12)). Dropping the weight gives DDPM's objective, denoising score matching with
# $t$ uniform:
#
# $$
# L_\text{simple}(\theta) = \mathbb E_{t \sim \mathcal U\{1..T\},\ x_0,\ \epsilon}
#   \left\lVert \epsilon - \epsilon_\theta\big(\sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,\ t\big)\right\rVert^2 .
# $$ (ch01-lsimple)
#
# **Check.** For a deliberately imperfect $\epsilon_\theta$, (a) `p_mean_variance` returns
# {eq}`ch01-eps-mean` (clipping off), and (b) `normal_kl` between the posterior and $p_\theta$
# equals the weighted error {eq}`ch01-weighted` per example.

# %% tags=["nbval-ignore-output"]
xs, _ = toy.sample(512, generator=gen, dtype=torch.float64)
t_idx = torch.randint(1, T, (512,), generator=gen)
noise = torch.randn(xs.shape, generator=gen, dtype=torch.float64)
x_t = diffusion.q_sample(xs, t_idx, noise=noise)


def imperfect_model(x, t):
    """The exact predictor, deliberately distorted, so the KL is far from zero."""
    return 0.8 * exact_eps(x, t) + 0.1 * torch.sin(3 * x)


out = diffusion.p_mean_variance(imperfect_model, x_t, t_idx, clip_denoised=False)
eps_hat = imperfect_model(x_t, t_idx)
b, a, ab = (v[t_idx][:, None] for v in (diffusion.betas, 1 - diffusion.betas, diffusion.alphas_cumprod))
mean_eq = (x_t - b / (1 - ab).sqrt() * eps_hat) / a.sqrt()
print(f"(a) max |p_mean_variance mean - Eq. (ch01-eps-mean)| = {float((out['mean'] - mean_eq).abs().max()):.2e}")
assert torch.allclose(out["mean"], mean_eq, atol=1e-10)

true_mean, _, true_logvar = diffusion.q_posterior_mean_variance(xs, x_t, t_idx)
kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"]).sum(1)
sigma2 = diffusion.posterior_variance[t_idx][:, None]
weighted = (b**2 / (2 * sigma2 * a * (1 - ab)) * (noise - eps_hat) ** 2).sum(1)
print(f"(b) max |KL - weighted eps error| = {float((kl - weighted).abs().max()):.2e} (KL values up to {float(kl.max()):.1f} nats)")
assert torch.allclose(kl, weighted, rtol=1e-8, atol=1e-10)

losses = diffusion.training_losses(imperfect_model, xs, t_idx, noise=noise)
assert torch.allclose(losses["loss"], ((noise - eps_hat) ** 2).mean(1))

# %% [markdown]
# ### The optimal noise predictor
#
# $L_\text{simple}$ regresses $\epsilon$ on $x_t$, so at each $t$ its minimiser is the conditional
# mean $\epsilon^\star(x_t, t) = \mathbb E[\epsilon \mid x_t]$, a multiple of the noisy marginal's
# score (Tweedie's formula). Differentiate $q(x_t) = \int q(x_t \mid x_0)\, q(x_0)\, dx_0$ under
# the integral and divide by $q(x_t)$; by Bayes' rule the weight is the posterior:
#
# $$
# \nabla_{x_t} \log q(x_t) = \int \nabla_{x_t} \log q(x_t \mid x_0)\,
#   \frac{q(x_t \mid x_0)\, q(x_0)}{q(x_t)}\, dx_0
# = \mathbb E\big[\nabla_{x_t} \log q(x_t \mid x_0) \,\big|\, x_t\big]
# = -\frac{\mathbb E[\epsilon \mid x_t]}{\sqrt{1 - \bar\alpha_t}},
# $$
#
# because {eq}`ch01-marginal` gives $\nabla_{x_t} \log q(x_t \mid x_0) = -(x_t - \sqrt{\bar\alpha_t}\,
# x_0)/(1 - \bar\alpha_t) = -\epsilon / \sqrt{1 - \bar\alpha_t}$. Hence
#
# $$
# \epsilon^\star(x_t, t) = -\sqrt{1 - \bar\alpha_t}\ \nabla_{x_t} \log q_t(x_t).
# $$ (ch01-optimal-eps)
#
# For a Gaussian mixture $q_t$ is again one, so `toy.eps_model` returns $\epsilon^\star$ in closed
# form: the *exact* model. **Check:** each perturbation of it has a higher $L_\text{simple}$.

# %% tags=["nbval-ignore-output"]
big, _ = toy.sample(50_000, generator=gen, dtype=torch.float64)
t_big = torch.randint(0, T, (len(big),), generator=gen)
noise_big = torch.randn(big.shape, generator=gen, dtype=torch.float64)
loss_exact = diffusion.training_losses(exact_eps, big, t_big, noise=noise_big)["loss"]
print(f"L_simple of the exact model: {float(loss_exact.mean()):.4f}")
for name, perturbed in [("0.95 * eps*", lambda x, t: 0.95 * exact_eps(x, t)),
                        ("1.05 * eps*", lambda x, t: 1.05 * exact_eps(x, t)),
                        ("eps* + 0.05", lambda x, t: exact_eps(x, t) + 0.05)]:
    diff = diffusion.training_losses(perturbed, big, t_big, noise=noise_big)["loss"] - loss_exact
    se = float(diff.std()) / math.sqrt(len(diff))
    print(f"  {name:>12}: L_simple higher by {float(diff.mean()):.4f} ± {se:.4f}")
    assert float(diff.mean()) > 3 * se

# %% [markdown]
# ```{admonition} One prediction, four parameterisations
# Given $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$, each determines the
# others; a gcg network outputs $\epsilon$, $x_0$ or $v$ (`model_mean_type`):
# - **noise** $\hat\epsilon$ (DDPM, `"epsilon"`);
# - **data** $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\, \hat\epsilon) / \sqrt{\bar\alpha_t}$
#   (`"start_x"`; `_predict_xstart_from_eps`, inverse `_predict_eps_from_xstart`);
# - **score** $\hat s = -\hat\epsilon / \sqrt{1 - \bar\alpha_t}$ {eq}`ch01-optimal-eps`
#   (`GaussianMixture.score`, `eps_model`);
# - **velocity** $\hat v = \sqrt{\bar\alpha_t}\, \hat\epsilon - \sqrt{1 - \bar\alpha_t}\, \hat x_0$,
#   so $\hat x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1 - \bar\alpha_t}\, \hat v$ {cite:p}`salimans2022progressive`
#   (`"v"`; `get_v`, `_predict_v_from_eps`, `_predict_xstart_from_v`).
# ```

# %% tags=["hide-input"]
t_conv = torch.randint(0, T, (512,), generator=torch.Generator().manual_seed(31))
x_conv = diffusion.q_sample(xs, t_conv, noise=noise)
ab_conv = diffusion.alphas_cumprod[t_conv][:, None]
eps_conv = exact_eps(x_conv, t_conv)
x0_conv = diffusion._predict_xstart_from_eps(x_conv, t_conv, eps_conv)
v_conv = diffusion._predict_v_from_eps(x_conv, t_conv, eps_conv)
torch.testing.assert_close(diffusion._predict_eps_from_xstart(x_conv, t_conv, x0_conv), eps_conv)
torch.testing.assert_close(diffusion._predict_xstart_from_v(x_conv, t_conv, v_conv), x0_conv)
torch.testing.assert_close(toy.score(x_conv, ab_conv[:, 0]), -eps_conv / (1 - ab_conv).sqrt())
torch.testing.assert_close(diffusion.get_v(xs, noise, t_conv), ab_conv.sqrt() * noise - (1 - ab_conv).sqrt() * xs)
print("x0, eps, score and v predictions convert into one another exactly (random t, exact model)")

# %% [markdown]
# ## 5. Ancestral sampling
#
# Sampling runs {eq}`ch01-reverse` from $x_T \sim \mathcal N(0, I)$ (Algorithm 2 of the paper):
#
# $$
# x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z, \qquad z \sim \mathcal N(0, I) \text{ for } t > 1,\ z = 0 \text{ for } t = 1 .
# $$ (ch01-ancestral)
#
# With the exact model, samples should follow the mixture and, given labels `y`, land in their
# own component.

# %% tags=["nbval-ignore-output"]
show(GaussianDiffusion.p_sample)

# %% tags=["nbval-ignore-output"]
n_s = 2000
labels = torch.randint(0, toy.num_classes, (n_s,), generator=gen)
samples_uncond = diffusion.p_sample_loop(exact_eps, (n_s, 2), clip_denoised=False, generator=gen)
samples_cond = diffusion.p_sample_loop(exact_eps, (n_s, 2), clip_denoised=False, generator=gen,
                                       model_kwargs={"y": labels})
data_ref, data_ref_y = toy.sample(n_s, generator=gen)


def describe(name, xs_, ref_nll):
    xs_ = xs_.double()
    mean_err = float((xs_.mean(0) - toy.mean()).norm())
    cov_err = float((torch.cov(xs_.T) - toy.covariance()).norm())
    nll = float(toy.nll(xs_).mean())
    print(f"{name:>26}: |mean err| {mean_err:.3f}  |cov err| {cov_err:.3f}  mean NLL {nll:.3f} (data {ref_nll:.3f})")
    return mean_err, cov_err, nll


data_nll = float(toy.nll(data_ref.double()).mean())
errs = describe("exact model, unconditional", samples_uncond, data_nll)
describe("exact model, given y", samples_cond, data_nll)
agreement = float((toy.posterior_logits(samples_cond.double(), 1.0).argmax(1) == labels).double().mean())
print(f"class agreement of conditional samples: {agreement:.3f}")
assert errs[0] < 0.05 and errs[1] < 0.05 and abs(errs[2] - data_nll) < 0.1
assert agreement > 0.95

# %%
traj = [s["sample"] for s in diffusion.p_sample_loop_progressive(
    exact_eps, (300, 2), clip_denoised=False, generator=torch.Generator().manual_seed(5))]
fig, axes = plt.subplots(1, 4, figsize=(12, 3.2), sharex=True, sharey=True)
for ax, (title, pts, col) in zip(axes, [("data", data_ref, data_ref_y), ("exact model, y given", samples_cond, labels)]):
    ax.scatter(pts[:, 0], pts[:, 1], c=col, cmap="tab10", vmin=0, vmax=9, s=2)
    ax.set_title(title)
for ax, k in zip(axes[2:], [700, 950]):
    ax.scatter(traj[k][:, 0], traj[k][:, 1], s=2, c="gray")
    ax.set_title(f"reverse chain at t = {T - k - 1}")
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-2.2, 2.2)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Experiment: a trained model against the exact one
#
# A network only approximates $\epsilon^\star$. gcg's residual MLP (preset `"toy"`: $T = 100$,
# class-conditional), trained on 10,000 toy draws, against the exact model on that chain:
# held-out $L_\text{simple}$ (the exact model's is the floor), and the samples' true NLL,
# precision and recall {cite:p}`kynkaanniemi2019pr` ($k = 3$).

# %%
import dataclasses

from gcg.data import ToyDataset
from gcg.metrics import precision_recall
from gcg.presets import get_preset
from gcg.train import train

toy_config = dataclasses.replace(get_preset("toy"), max_steps=int(600 * GCG_SCALE), ema_warmup=False)
toy_run = train(toy_config, dataset=ToyDataset(toy, num_samples=10_000, seed=0), progress=False)
toy_net = toy_run.ema.float().eval()
toy_diffusion = toy_run.diffusion
print(f"trained {toy_run.step} steps; chain: {toy_diffusion}")

# %% tags=["nbval-ignore-output"]
test_x, test_y = toy.sample(4000, generator=torch.Generator().manual_seed(11))
t_test = torch.randint(0, toy_diffusion.num_timesteps, (len(test_x),), generator=torch.Generator().manual_seed(12))
noise_test = torch.randn(test_x.shape, generator=torch.Generator().manual_seed(13))
exact_small = toy.eps_model(toy_diffusion)
results = {}
with torch.no_grad():
    for name, model in [("exact eps*", exact_small), ("trained MLP", toy_net)]:
        kw = {"y": test_y}
        loss = toy_diffusion.training_losses(model, test_x, t_test, model_kwargs=kw, noise=noise_test)["loss"]
        xs_ = toy_diffusion.p_sample_loop(model, (len(test_x), 2), clip_denoised=False, model_kwargs=kw,
                                          generator=torch.Generator().manual_seed(14))
        pr = precision_recall(test_x, xs_, k=3)
        results[name] = dict(loss=loss, nll=float(toy.nll(xs_.double()).mean()), precision=pr.precision,
                             recall=pr.recall, agree=float((toy.posterior_logits(xs_.double(), 1.0).argmax(1) == test_y).double().mean()))
print(f"{'model':>12} | {'L_simple':>8} | {'sample NLL':>10} | {'precision':>9} | {'recall':>6} | {'class agreement':>15}")
print(f"{'(data)':>12} | {'':>8} | {float(toy.nll(test_x.double()).mean()):>10.3f} | {'':>9} | {'':>6} |")
for name, r in results.items():
    print(f"{name:>12} | {float(r['loss'].mean()):>8.4f} | {r['nll']:>10.3f} | {r['precision']:>9.3f} | "
          f"{r['recall']:>6.3f} | {r['agree']:>15.3f}")

# %% tags=["hide-input"]
gap = results["trained MLP"]["loss"] - results["exact eps*"]["loss"]
se = float(gap.std()) / math.sqrt(len(gap))
assert float(gap.mean()) > -3 * se, "a network beat the Bayes-optimal predictor: check the exact model"
assert results["trained MLP"]["precision"] > 0.8 and results["trained MLP"]["recall"] > 0.8, results["trained MLP"]
assert results["exact eps*"]["precision"] > 0.9 and results["exact eps*"]["recall"] > 0.9
print("the exact model is the floor of L_simple, and the trained model's samples cover the data")

# %% [markdown]
# The trained network's loss is near the exact floor and its samples cover the data as well as
# the exact model's.
#
# ## 7. Experiment: how many steps does the chain need?
#
# Why $T = 1000$? A Gaussian reverse step is accurate only for a small forward step; for large
# steps the true $q(x_{t-1} \mid x_t)$ can be multimodal. The exact $\epsilon^\star$
# isolates this from training error: for $T \in \{25, \dots, 1000\}$ (the linear schedule's ends
# scaled by $1000/T$) we measure the bound $L$ and the samples' true NLL.

# %% tags=["nbval-ignore-output"]
study = []
eval_x, _ = toy.sample(1000, generator=torch.Generator().manual_seed(21))
for steps_T in [25, 50, 100, 250, 1000]:
    d_T = GaussianDiffusion(get_named_beta_schedule("linear", steps_T))
    model_T = toy.eps_model(d_T)
    g = torch.Generator().manual_seed(22)
    bound = float(d_T.calc_bpd_loop(model_T, eval_x.double(), clip_denoised=False, decoder="gaussian",
                                    generator=g)["total_bpd"].mean())
    xs_ = d_T.p_sample_loop(model_T, (2000, 2), clip_denoised=False, generator=g)
    pr = precision_recall(test_x, xs_, k=3)
    study.append((steps_T, bound, float(toy.nll(xs_.double()).mean()), pr.precision, pr.recall))
print(f"true NLL of the evaluation data: {float(toy.nll_bits_per_dim(eval_x.double()).mean()):.3f} bits/dim, "
      f"{float(toy.nll(eval_x.double()).mean()):.3f} nats")
print(f"{'T':>5} | {'bound L (bits/dim)':>18} | {'sample NLL (nats)':>17} | {'precision':>9} | {'recall':>6}")
for row in study:
    print(f"{row[0]:>5} | {row[1]:>18.3f} | {row[2]:>17.3f} | {row[3]:>9.3f} | {row[4]:>6.3f}")

# %%
bounds = [r[1] for r in study]
assert bounds[-1] < bounds[0], f"the bound should tighten with more steps: {bounds}"
assert all(a > b for a, b in zip(bounds, bounds[1:])), f"the bound should tighten at every T: {bounds}"
assert study[-1][4] > study[0][4], "the long chain's samples should cover more of the data (recall)"
fig, ax = plt.subplots(figsize=(5, 3))
ax.semilogx([r[0] for r in study], bounds, "o-", label="bound L (exact model)")
ax.axhline(float(toy.nll_bits_per_dim(eval_x.double()).mean()), color="k", ls="--", label="true NLL")
ax.set(xlabel="number of steps T", ylabel="bits/dim")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Even the perfect predictor pays for a short chain: the bound tightens at every $T$, yet at
# $T = 1000$ still exceeds the true NLL, as each step uses the fixed $\tilde\beta_t$, not the true
# conditional's variance (chapter 02 learns it). Recall rises with $T$, while the samples' NLL
# first drops *below* the data's (they crowd the component centres). Hence $T = 1000$, and slow
# sampling, which chapters 02 and 03 cut.
#
# ## 8. Real images: DDPM on the 8×8 digits
#
# The recipe on real data, scaled down: 1,438 training digits (8×8, in $[-1, 1]$), an
# unconditional 1.15M-parameter UNet (`digits8_small`), linear schedule, $T = 1000$,
# $L_\text{simple}$, AdamW with an EMA, batch 64.
#
# ```{note}
# **What the CPU budget changes.** At `GCG_SCALE=1` we sample ancestrally with 250 of the 1000
# trained steps (about 0.1 s each for 128 images on 2 CPU cores) by "respacing" (chapter 02: same
# network, $\beta$'s recomputed to keep the $\bar\alpha$'s); `GCG_SCALE=4` uses all 1000.
# ```

# %%
digits_config = dataclasses.replace(
    get_preset("digits"), noise_schedule="linear", diffusion_steps=T, class_cond=False, p_uncond=0.0,
    model_var_type="fixed_small", loss_type="mse", max_steps=int(300 * GCG_SCALE), batch_size=64,
    sample_every=0, ema_rates=(0.99,), ema_warmup=False)  # a short run: an EMA window of ~100 steps
start = time.perf_counter()
digits_run = train(digits_config, progress=False)
train_seconds = time.perf_counter() - start
digits_net = digits_run.ema.eval()
sample_steps = min(T, int(250 * GCG_SCALE))
sampler = diffusion if sample_steps == T else diffusion.respace(str(sample_steps))
print(f"UNet parameters: {sum(p.numel() for p in digits_net.parameters()) / 1e6:.2f}M; sampling chain: {sampler}")

# %% tags=["nbval-ignore-output"]
print(f"trained {digits_run.step} steps in {train_seconds:.0f} s")
history = digits_run.history
print("loss every", digits_config.log_every, "steps:", [round(h["loss"], 3) for h in history])

# %% [markdown]
# A classifier trained on the real digits (`gcg.features.train_feature_net`) scores the samples: the Fréchet distance of its features to the test digits' ("FD (domain)", the FID recipe
# {cite:p}`heusel2017fid`, **not** comparable to published FIDs) and its Inception-score analogue
# (at most 10), against real digits and a Gaussian fitted to the pixels.

# %% tags=["nbval-ignore-output"]
from gcg.data import load_digits_dataset
from gcg.features import train_feature_net
from gcg.metrics import fid_from_features, inception_score

train_images, train_labels = load_digits_dataset("train").as_tensors()
test_images, _ = load_digits_dataset("test").as_tensors()
feature_net = train_feature_net(train_images, train_labels, epochs=10, seed=0)
n_img = int(128 * GCG_SCALE)
start = time.perf_counter()
snap_idx = sorted({round(f * (sample_steps - 1)) for f in (0.8, 0.6, 0.45, 0.3, 0.18, 0.08, 0.0)}, reverse=True)
snapshots, x_current = {}, None  # chain index -> (x_t, predicted x_0) of the first 3 samples
for out in sampler.p_sample_loop_progressive(digits_net, (n_img, 1, 8, 8), generator=torch.Generator().manual_seed(3),
                                             device=DEVICE):
    i = int(out["t"][0])
    if i in snap_idx:
        snapshots[i] = (x_current[:3].cpu(), out["pred_xstart"][:3].cpu())
    x_current = out["sample"]  # x at chain index i - 1, the input of the next step
digit_samples = x_current.cpu()
sample_seconds = time.perf_counter() - start
flat = train_images.flatten(1).double()
gauss = torch.distributions.MultivariateNormal(flat.mean(0), torch.cov(flat.T) + 1e-4 * torch.eye(64, dtype=torch.float64))
gaussian_images = gauss.sample((n_img,)).float().clamp(-1, 1).reshape(-1, 1, 8, 8)
test_feats = feature_net.extract(test_images)["pool"]
table = {}
for name, imgs in [("real train digits", train_images[:n_img]), (f"DDPM samples ({sample_steps} steps)", digit_samples),
                   ("pixel Gaussian", gaussian_images)]:
    f = feature_net.extract(imgs)
    table[name] = (fid_from_features(test_feats, f["pool"]), inception_score(f["probs"], splits=1).mean)
print(f"{len(train_images)} training and {len(test_images)} held-out test digits; "
      f"feature net train accuracy {feature_net.train_accuracy:.3f}; sampling {n_img} images took {sample_seconds:.0f} s")
print(f"{'images':>24} | {'FD (domain)':>11} | {'IS (domain)':>11}")
for name, (fd, is_) in table.items():
    print(f"{name:>24} | {fd:>11.2f} | {is_:>11.2f}")

# %% tags=["hide-input"]
ddpm_fd, ddpm_is = table[f"DDPM samples ({sample_steps} steps)"]
assert ddpm_fd < table["pixel Gaussian"][0] and ddpm_is > table["pixel Gaussian"][1], table
print("DDPM samples are closer to real digits than a Gaussian with the same pixel statistics")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
for ax, (title, imgs) in zip(axes, [("real digits", train_images[:48]), ("DDPM samples", digit_samples[:48])]):
    plot_image_grid(ax, imgs, nrow=8, tile=24, title=title)
fig.tight_layout()
plt.show()

# %% [markdown]
# **One sample's reverse trajectory.** For three samples, the state $x_t$ entering a step and
# the network's prediction $\hat x_0(x_t)$ there, both read off `p_sample_loop_progressive`.

# %%
cols = [f"t = {int(sampler.timestep_map[i]) + 1}" for i in snap_idx]
rows, tiles = [], []
for k in range(3):
    for name, part in [("$x_t$", 0), (r"$\hat x_0$", 1)]:
        rows.append(f"{name} #{k + 1}")
        tiles += [snapshots[i][part][k] for i in snap_idx]
fig, ax = plt.subplots(figsize=(7, 6.2))
plot_image_grid(ax, torch.stack(tiles), nrow=len(snap_idx), row_labels=rows, col_labels=cols, tile=32)
fig.tight_layout()
plt.show()

# %% [markdown]
# In the trajectories $\hat x_0$ commits to a coarse shape by $t \approx 450$, while $x_t$ is
# mostly noise. After 90 s of CPU training some samples are recognisable digits, the rest blobs;
# the FD is well below the Gaussian baseline but far from real digits (exercise 5 trains longer).
# Reproduced: the identities exactly, and the recipe's qualitative behaviour; not the CIFAR-10
# numbers.

# %% tags=["nbval-ignore-output"]
print(f"chapter run time: {time.perf_counter() - CHAPTER_START:.0f} s")

# %% [markdown]
# ## Summary
#
# $$
# L_\text{simple} = \mathbb E_{t, x_0, \epsilon} \big\lVert \epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}\, x_0
#   + \sqrt{1 - \bar\alpha_t}\, \epsilon,\ t) \big\rVert^2, \qquad
# \epsilon^\star(x_t, t) = -\sqrt{1 - \bar\alpha_t}\, \nabla_{x_t} \log q_t(x_t).
# $$
#
# DDPM trains a network to recover the noise of a closed-form forward sample (a reweighted
# bound, minimised by the scaled score) and samples by Gaussian reverse steps from noise;
# chapters 02 and 03 shorten that chain.
#
# ```{admonition} Summary: equation → gcg
# - {eq}`ch01-marginal` → `q_sample`, `q_mean_variance`
# - {eq}`ch01-posterior` → `q_posterior_mean_variance`
# - {eq}`ch01-elbo`, {eq}`ch01-kl` → `calc_bpd_loop`, `normal_kl`
# - {eq}`ch01-eps-mean` → `p_mean_variance`
# - {eq}`ch01-lsimple` → `training_losses` (`loss_type="mse"`)
# - {eq}`ch01-optimal-eps` → `GaussianMixture.eps_model`
# - {eq}`ch01-ancestral` → `p_sample`, `p_sample_loop`
# ```
#
# ## Exercises
#
# 1. **Posterior variance.** Show from {eq}`ch01-posterior` that $\tilde\beta_1 = 0$ and
#    $\tilde\beta_t < \beta_t$ for $t > 1$. Why does `diffusion.posterior_variance / diffusion.betas`
#    approach 1 for large $t$? (Instant.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    The empty product gives $\bar\alpha_0 = 1$ (`alphas_cumprod_prev[0]`); $\bar\alpha_t$ decreases in $t$.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    $\tilde\beta_1 = \frac{1 - \bar\alpha_0}{1 - \bar\alpha_1}\beta_1 = 0$ since $\bar\alpha_0 = 1$: given
#    $x_0$, nothing is left to sample. For $t > 1$, $\bar\alpha_t = \alpha_t \bar\alpha_{t-1} <
#    \bar\alpha_{t-1}$, so $\tilde\beta_t / \beta_t = (1 - \bar\alpha_{t-1})/(1 - \bar\alpha_t) < 1$.
#    For large $t$ both $\bar\alpha$'s are near 0 and the ratio tends to 1: with $x_0$ forgotten,
#    the posterior variance is the forward step's.
#    ```
#
# 2. **The weight of $L_\text{simple}$.** Plot the weight of {eq}`ch01-weighted` against $t$ for
#    $\sigma_t^2 = \tilde\beta_t$. Which steps does $L_\text{simple}$ up-weight relative to the
#    bound? Ho et al. argue this helps sample quality; why? (Instant.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Substitute $\tilde\beta_t$ from {eq}`ch01-posterior`: most factors cancel.
#    ```
#
#    ```{admonition} Solution
#    :class: dropdown
#    With $\sigma_t^2 = \tilde\beta_t$ the weight is $\beta_t / (2\alpha_t (1 - \bar\alpha_{t-1}))$:
#    about 0.6 at $t = 2$ (where $1 - \bar\alpha_1 = \beta_1$), about $\beta_t / 2 \approx 0.01$
#    for most of the chain. $L_\text{simple}$ weights every $t$ by 1, so it up-weights the noisy
#    steps, where the network decides the content, and down-weights the nearly clean ones, which
#    the bound values for imperceptible detail.
#    ```
#
# 3. **Tweedie by Monte Carlo.** For one toy $x_t$, estimate $\mathbb E[\epsilon \mid x_t]$ by
#    weighting many $x_0$ draws with $q(x_t \mid x_0)$, and compare with `toy.eps_model`. (Seconds.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    Normalise the log weights $\log q(x_t \mid x_0^{(i)})$ with `torch.softmax`, then average
#    $(x_t - \sqrt{\bar\alpha_t}\, x_0^{(i)})/\sqrt{1 - \bar\alpha_t}$: the proof of
#    {eq}`ch01-optimal-eps`, computed.
#    ```
#
# 4. **Fixed large variance.** Repeat section 7 with `model_var_type="fixed_large"`. Which
#    $\sigma_t^2$ gives the tighter bound at small $T$, and which better samples? (≈ 1 min on a
#    2-core CPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    `toy.eps_model(d_T)` does not depend on $\sigma_t$: only the line building `d_T` changes.
#    Compare the terms of `bpd["vb"]`.
#    ```
#
# 5. **Train longer.** Re-run the chapter with `GCG_SCALE=4`. How do the digits' FD and IS move?
#    Plot `digits_run.history`. (≈ 15 min on a 2-core CPU, mostly sampling; 1–2 min on a GPU.)
#
#    ```{admonition} Hint
#    :class: dropdown
#    `GCG_SCALE=4 python scripts/execute_notebook.py notebooks/01_ddpm.py`; compare with the
#    real-digit row.
#    ```
