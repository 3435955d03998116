"""Classifier guidance and classifier-free guidance (chapter 04).

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4) samples p(x | y) from an unconditional (or
conditional) diffusion model by adding the gradient of a noise-aware classifier's log-likelihood,
scaled by s, to each reverse step:

- DDPM form (Sec. 4.1, Algorithm 1): the reverse Gaussian N(mu, Sigma) becomes
  N(mu + s Sigma grad_x log p_phi(y | x_t), Sigma)   -> ``GaussianDiffusion.condition_mean``;
- DDIM form (Sec. 4.2, Algorithm 2): eps_hat = eps - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t)
  -> ``GaussianDiffusion.condition_score``.

Both take the gradient through a ``cond_fn(x, t, y=...)`` built here by
``classifier_cond_fn``; the samplers in ``gcg.diffusion`` call it with the ORIGINAL timestep.

Classifier-free guidance (Ho & Salimans 2021, Algorithms 1-2) trains one model on labels that are
dropped to a null class with probability p_uncond (``label_dropout``) and samples with
eps_tilde = (1 + w) eps(x, c) - w eps(x)   (``ClassifierFreeGuidance``).

On the exact toy (``gcg.toy``), both can be checked against the true conditional p(x | y); the
helpers ``class_purity`` and ``tilted_conditional_resample`` serve those checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "classifier_cond_fn",
    "ClassifierFreeGuidance",
    "label_dropout",
    "class_purity",
    "tilted_conditional_resample",
]


def _check_labels(y, n, num_classes, what):
    """Validate int labels y [n] against a batch of size n and num_classes (None = unknown)."""
    if not torch.is_tensor(y):
        raise TypeError(f"{what}: y must be a LongTensor of class labels of shape [N], got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{what}: y must hold integer class labels, got dtype {y.dtype}; pass y.long()")
    if y.shape != (n,):
        raise ValueError(f"{what}: y has shape {tuple(y.shape)} but the batch has {n} examples; pass one label per example")
    if num_classes is not None and n > 0 and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{what}: labels must lie in [0, {num_classes}), got min {int(y.min())} and max {int(y.max())}"
        )


def classifier_cond_fn(classifier, scale=1.0):
    """Turn a noisy classifier into the guidance hook ``cond_fn`` (Dhariwal & Nichol 2021, Sec. 4).

    Args:
        classifier: any callable ``classifier(x_t, t) -> logits`` [N, K] (an ``nn.Module`` such as
            ``EncoderUNetModel``, or the exact ``GaussianMixture.classifier(...)`` of ``gcg.toy``).
            An ``nn.Module`` is put in eval mode here (dropout off, norms frozen).
        scale: the guidance scale s (float >= 0); s = 1 targets p(x | y), s > 1 sharpens it.

    Returns:
        ``cond_fn(x, t, y=None, **model_kwargs) -> Tensor like x``: the gradient
        s * grad_x log softmax(classifier(x, t))[y]  (the g of Algorithms 1 and 2), detached.
        x: [N, C, ...] noisy input; t: [N] ORIGINAL timesteps, passed to the classifier as given;
        y: [N] int64 labels (required). Extra model kwargs (e.g. ``low_res``) are ignored.
        The gradient is taken under ``torch.enable_grad()`` on a detached copy of x, so it works
        inside ``torch.no_grad()`` samplers, builds no graph on the caller's tensors and leaves
        the classifier's ``.grad`` untouched. Each example's gradient depends only on its own row
        (log-probabilities are summed over the batch, and the classifier is in eval mode).
    """
    if not callable(classifier):
        raise TypeError(f"classifier must be callable as classifier(x_t, t) -> logits, got {type(classifier).__name__}")
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"classifier guidance scale must be a finite float, got {scale}")
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()

    def cond_fn(x, t, y=None, **model_kwargs):
        if y is None:
            raise ValueError(
                "classifier guidance needs the target labels: call the sampler with model_kwargs={'y': labels} "
                "(labels: LongTensor [N])"
            )
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            if not torch.is_tensor(logits) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
                raise ValueError(
                    f"classifier must return logits of shape [N, num_classes] = [{x.shape[0]}, K], got {shape}"
                )
            _check_labels(y, x.shape[0], logits.shape[1], "classifier_cond_fn")
            log_probs = F.log_softmax(logits, dim=-1)
            selected = log_probs.gather(1, y.long().view(-1, 1).to(log_probs.device)).sum()
            grad = torch.autograd.grad(selected, x_in, allow_unused=True)[0] if selected.requires_grad else None
        if grad is None:
            raise ValueError(
                "the classifier's logits do not depend differentiably on x (did it detach x, call "
                ".numpy() or run under torch.no_grad()?); guidance needs grad_x of the logits"
            )
        return grad.detach() * scale

    return cond_fn


def _batch_double(value, n):
    """Repeat a per-example tensor kwarg ([n, ...]) for the stacked cond/uncond batch."""
    if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == n:
        return torch.cat([value, value], dim=0)
    return value


class ClassifierFreeGuidance:
    """A model callable that applies classifier-free guidance (Ho & Salimans 2021, Algorithm 2).

    ``guided(x, t, y, **kw)`` returns the guided noise prediction
        eps_tilde = (1 + w) eps(x, t, c=y) - w eps(x, t, c=null)
                  = eps_uncond + (1 + w) (eps_cond - eps_uncond)
    on the first C = x.shape[1] output channels. For a learned-variance model (output [N, 2C, ...])
    the last C channels (variance values v) are passed through from the conditional half.
    w = 0 gives the conditional model; with exact models, w equals classifier guidance at s = 1 + w.

    Args:
        model: ``model(x, t, y=..., **kw) -> [N, C or 2C, ...]`` trained with ``label_dropout``.
        scale: the guidance weight w (float >= 0 in the paper; w < 0 is allowed, e.g. w = -1 gives
            the unconditional model).
        null_label: the int label meaning "no class" (``num_classes`` for a UNet built with
            ``class_null=True``). The conditional and null halves then run in ONE batched forward
            of size 2N. With ``null_label=None`` the unconditional half is ``model(x, t, y=None)``
            (two forwards; e.g. for the exact toy eps models of ``gcg.toy``).

    Per-example tensor kwargs of batch size N (``low_res``, ``aug_level``) are repeated for the
    stacked batch; anything else is passed unchanged.
    """

    def __init__(self, model, scale, null_label):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t, y=..., **kw), got {type(model).__name__}")
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int)):
            raise TypeError(f"null_label must be an int (the 'no class' label, usually num_classes) or None, got {null_label!r}")
        self.model = model
        self.scale = float(scale)
        self.null_label = null_label

    def __repr__(self):
        return f"ClassifierFreeGuidance(scale={self.scale}, null_label={self.null_label})"

    def __call__(self, x, t, y=None, **model_kwargs):
        n, channels = x.shape[0], x.shape[1]
        if y is None:
            raise ValueError(
                "classifier-free guidance needs the class labels: pass y (LongTensor [N]), e.g. "
                "model_kwargs={'y': labels} in the sampler"
            )
        _check_labels(y, n, None, "ClassifierFreeGuidance")
        if self.null_label is None:
            out_cond = self.model(x, t, y=y, **model_kwargs)
            out_uncond = self.model(x, t, y=None, **model_kwargs)
        else:
            if bool((y == self.null_label).any()):
                raise ValueError(
                    f"ClassifierFreeGuidance: y contains the null label {self.null_label}; pass real class labels"
                )
            y_null = torch.full_like(y, self.null_label)
            doubled = {k: _batch_double(v, n) for k, v in model_kwargs.items()}
            out = self.model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, y_null]), **doubled)
            out_cond, out_uncond = out[:n], out[n:]
        if out_cond.shape[1] not in (channels, 2 * channels):
            raise ValueError(
                f"model output has {out_cond.shape[1]} channels; expected {channels} (eps) or {2 * channels} "
                "(eps and learned variance)"
            )
        eps_cond, rest = out_cond[:, :channels], out_cond[:, channels:]
        eps_uncond = out_uncond[:, :channels]
        eps = eps_cond + self.scale * (eps_cond - eps_uncond)  # = (1 + w) eps_c - w eps_u
        return torch.cat([eps, rest], dim=1) if rest.shape[1] else eps


def label_dropout(y, p_uncond, null_label, generator=None):
    """Replace each label by ``null_label`` with probability ``p_uncond`` (Ho & Salimans 2021, Alg. 1).

    Args:
        y: [N] int64 class labels. p_uncond: probability in [0, 1] (the paper uses 0.1 or 0.2).
        null_label: the "no class" label (``num_classes`` for a UNet with ``class_null=True``).
        generator: optional ``torch.Generator`` on y's device, for reproducible dropout.
    Returns:
        a new [N] int64 tensor; y is not modified.
    """
    if not 0.0 <= float(p_uncond) <= 1.0:
        raise ValueError(f"p_uncond must be a probability in [0, 1], got {p_uncond}")
    if not torch.is_tensor(y) or y.ndim != 1:
        raise ValueError(f"y must be a 1-D LongTensor of labels [N], got {getattr(y, 'shape', type(y).__name__)}")
    drop = torch.rand(y.shape, generator=generator, device=y.device) < float(p_uncond)
    return torch.where(drop, torch.full_like(y, int(null_label)), y)


def class_purity(log_probs, y):
    """Class purity of labelled samples under a reference classifier.

    Args:
        log_probs: [N, K] log p(k | x_i) from the reference (e.g. the exact toy posterior at t = 0,
            ``GaussianMixture.posterior_logits(x, 1.0)``). y: [N] target labels.
    Returns:
        (hard, soft): hard = fraction of samples whose most likely class is y_i;
        soft = mean p(y_i | x_i). Both are floats in [0, 1]; exact conditional samples of class y
        score E_{x ~ p(x|y)} p(y | x), which guidance at s > 1 pushes above.
    """
    if log_probs.ndim != 2 or y.shape != (log_probs.shape[0],):
        raise ValueError(f"class_purity expects log_probs [N, K] and y [N], got {tuple(log_probs.shape)} and {tuple(y.shape)}")
    y = y.long().to(log_probs.device)
    hard = (log_probs.argmax(dim=1) == y).double().mean().item()
    soft = log_probs.gather(1, y.view(-1, 1)).exp().double().mean().item()
    return hard, soft


def tilted_conditional_resample(x_cond, log_p_y, scale, num_samples, generator=None):
    """Importance-resample exact conditional samples to the tilted target p_s(x | y) ∝ p(x) p(y | x)^s.

    The "sharpened" distribution that guidance at scale s is often described as sampling is
    p(x) p(y|x)^s ∝ p(x | y) p(y | x)^(s - 1), so samples x_i ~ p(x | y) with self-normalised
    weights w_i ∝ p(y | x_i)^(s - 1) target it (sampling-importance-resampling). Note that
    guided diffusion at s != 1 does NOT sample this exactly (the noisy tilts p_t(x) p_t(y|x)^s are
    not the marginals of one diffusion); the chapter measures that gap.

    Args:
        x_cond: [M, ...] samples of p(x | y) for one class y. log_p_y: [M] log p(y | x_i) at t = 0.
        scale: s >= 0. num_samples: how many to draw (with replacement).
        generator: optional ``torch.Generator`` (on CPU, or x_cond's device).
    Returns:
        (x [num_samples, ...], ess): resampled points and the effective sample size of the weights,
        1 / sum(w_i^2); a small ess (<< num_samples) means the target is poorly covered.
    """
    if x_cond.shape[0] != log_p_y.shape[0] or log_p_y.ndim != 1:
        raise ValueError(f"need one log p(y|x) per sample: x_cond {tuple(x_cond.shape)}, log_p_y {tuple(log_p_y.shape)}")
    log_w = (float(scale) - 1.0) * log_p_y.double()
    weights = torch.softmax(log_w, dim=0)
    ess = (1.0 / (weights**2).sum()).item()
    idx = torch.multinomial(weights.to(x_cond.device), num_samples, replacement=True, generator=generator)
    return x_cond[idx], ess
