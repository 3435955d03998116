"""gcg's ADM networks vs a reference-equivalent implementation, same weights, same inputs, one process.

The reference (OpenAI guided-diffusion, Dhariwal & Nichol 2021) is not shipped with gcg, so this
script carries a written-out forward pass that computes what the reference computes, op for op,
from reference-named tensors (``gcg.convert.gcg_to_openai`` of the gcg weights): GroupNorm on a
float32 copy, attention as two einsums with q and k each scaled by d^(-1/4) and a float32 softmax,
nearest/avg-pool resampling inside the BigGAN blocks, skips concatenated on the up path. Like the
reference, its attention blocks are always gradient-checkpointed (``--ref-attention-checkpoint
off`` to compare without that recomputation).

Timed, alternating gcg and reference rounds (median of ``--repeats`` rounds):
  * UNet forward (no grad, eval mode) of ``--unet`` (default the 64x64 ADM UNet, 296M params);
  * classifier input gradient d log p(y | x_t, t) / d x_t of ``--classifier`` (what classifier
    guidance computes at every sampling step).

    OMP_NUM_THREADS=1 python benchmarks/bench_reference.py --batch 2 --repeats 5
    OMP_NUM_THREADS=1 python benchmarks/bench_reference.py --batch 2 --precision bf16 [--ref-precision bf16]
    python benchmarks/bench_reference.py --unet digits8_small --classifier digits8_classifier --batch 64

Prints wall ms per call and the speed ratio reference time / gcg time (> 1: gcg is faster) in wall
and in process CPU time, and the largest relative difference of the two outputs (round-off only
when both run in fp32). ``--precision bf16`` runs gcg's side under bf16 autocast (where the CPU has
bf16 units: ``gcg.nn.precision``; else fp32 with a notice), ``--ref-precision`` the reference's; the
last column is then the relative L2 error of gcg's output against the fp32 reference output.
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gcg.convert import gcg_to_openai
from gcg.nn import ClassifierConfig, create_model, get_preset
from gcg.nn.precision import PRECISIONS, autocast, resolve_precision


# ---------------------------------------------------------------------------------------------
# The reference computation, from reference-named tensors p.

def ref_group_norm(x, p, name):
    return F.group_norm(x.float(), 32, p[name + ".weight"], p[name + ".bias"]).type(x.dtype)


def ref_timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1) if dim % 2 else emb


def ref_resblock(x, emb, p, name, scale_shift, up=False, down=False):
    h = F.silu(ref_group_norm(x, p, name + ".in_layers.0"))
    if up:
        h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(x, scale_factor=2, mode="nearest")
    elif down:
        h, x = F.avg_pool2d(h, 2, 2), F.avg_pool2d(x, 2, 2)
    h = F.conv2d(h, p[name + ".in_layers.2.weight"], p[name + ".in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), p[name + ".emb_layers.1.weight"], p[name + ".emb_layers.1.bias"]).type(h.dtype)
    e = e[..., None, None]
    if scale_shift:
        scale, shift = torch.chunk(e, 2, dim=1)
        h = ref_group_norm(h, p, name + ".out_layers.0") * (1 + scale) + shift
    else:
        h = ref_group_norm(h + e, p, name + ".out_layers.0")
    h = F.conv2d(F.silu(h), p[name + ".out_layers.3.weight"], p[name + ".out_layers.3.bias"], padding=1)
    if name + ".skip_connection.weight" in p:
        x = F.conv2d(x, p[name + ".skip_connection.weight"], p[name + ".skip_connection.bias"])
    return x + h


def ref_qkv_attention(qkv, heads, new_order):
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    scale = 1 / math.sqrt(math.sqrt(ch))
    if new_order:
        q, k, v = qkv.chunk(3, dim=1)
        q = (q * scale).view(bs * heads, ch, length)
        k = (k * scale).view(bs * heads, ch, length)
        v = v.reshape(bs * heads, ch, length)
    else:
        q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
        q, k = q * scale, k * scale
    weight = torch.einsum("bct,bcs->bts", q, k)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bts,bcs->bct", weight, v).reshape(bs, -1, length)


def _ref_attention_body(x, p, name, heads, new_order):
    b, c, *spatial = x.shape
    x = x.reshape(b, c, -1)
    qkv = F.conv1d(ref_group_norm(x, p, name + ".norm"), p[name + ".qkv.weight"], p[name + ".qkv.bias"])
    h = F.conv1d(ref_qkv_attention(qkv, heads, new_order), p[name + ".proj_out.weight"], p[name + ".proj_out.bias"])
    return (x + h).reshape(b, c, *spatial)


def ref_attention(x, p, name, heads, new_order, use_checkpoint):
    if use_checkpoint and torch.is_grad_enabled():
        return checkpoint(_ref_attention_body, x, p, name, heads, new_order, use_reentrant=False)
    return _ref_attention_body(x, p, name, heads, new_order)


def ref_forward(p, cfg, x, t, y=None, attn_ckpt=True):
    """The reference UNet (or, for a ClassifierConfig, the encoder classifier) forward pass."""
    def heads(ch, n):
        return ch // cfg.num_head_channels if cfg.num_head_channels > 0 else n

    def attn(h, name, n):
        return ref_attention(h, p, name, heads(h.shape[1], n), cfg.use_new_attention_order, attn_ckpt)

    temb = ref_timestep_embedding(t, cfg.model_channels)
    emb = F.linear(F.silu(F.linear(temb, p["time_embed.0.weight"], p["time_embed.0.bias"])),
                   p["time_embed.2.weight"], p["time_embed.2.bias"])
    if y is not None:
        emb = emb + F.embedding(y, p["label_emb.weight"])
    ss = cfg.use_scale_shift_norm
    h = F.conv2d(x, p["input_blocks.0.0.weight"], p["input_blocks.0.0.bias"], padding=1)
    hs, i, res = [h], 1, cfg.image_size
    for level, _ in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            h = ref_resblock(h, emb, p, f"input_blocks.{i}.0", ss)
            if res in cfg.attention_resolutions:
                h = attn(h, f"input_blocks.{i}.1", cfg.num_heads)
            hs.append(h)
            i += 1
        if level != len(cfg.channel_mult) - 1:
            if cfg.resblock_updown:
                h = ref_resblock(h, emb, p, f"input_blocks.{i}.0", ss, down=True)
            elif cfg.conv_resample:
                h = F.conv2d(h, p[f"input_blocks.{i}.0.op.weight"], p[f"input_blocks.{i}.0.op.bias"], stride=2,
                             padding=1)
            else:
                h = F.avg_pool2d(h, 2, 2)
            hs.append(h)
            i, res = i + 1, res // 2
    h = ref_resblock(h, emb, p, "middle_block.0", ss)
    h = attn(h, "middle_block.1", cfg.num_heads)
    h = ref_resblock(h, emb, p, "middle_block.2", ss)
    if isinstance(cfg, ClassifierConfig):
        h = F.silu(ref_group_norm(h, p, "out.0"))
        if cfg.pool == "adaptive":
            return F.conv2d(h.mean((2, 3), keepdim=True), p["out.3.weight"], p["out.3.bias"]).flatten(1)
        tokens = h.reshape(h.shape[0], h.shape[1], -1)
        tokens = torch.cat([tokens.mean(dim=-1, keepdim=True), tokens], dim=-1)
        tokens = tokens + p["out.2.positional_embedding"][None].to(tokens.dtype)
        qkv = F.conv1d(tokens, p["out.2.qkv_proj.weight"], p["out.2.qkv_proj.bias"])
        a = ref_qkv_attention(qkv, h.shape[1] // cfg.num_head_channels, new_order=True)
        return F.conv1d(a, p["out.2.c_proj.weight"], p["out.2.c_proj.bias"])[:, :, 0]
    i = 0
    for level, _ in reversed(list(enumerate(cfg.channel_mult))):
        for k in range(cfg.num_res_blocks + 1):
            h = ref_resblock(torch.cat([h, hs.pop()], dim=1), emb, p, f"output_blocks.{i}.0", ss)
            j = 1
            if res in cfg.attention_resolutions:
                h = attn(h, f"output_blocks.{i}.1", cfg.num_heads_upsample)
                j = 2
            if level and k == cfg.num_res_blocks:
                if cfg.resblock_updown:
                    h = ref_resblock(h, emb, p, f"output_blocks.{i}.{j}", ss, up=True)
                else:
                    h = F.interpolate(h, scale_factor=2, mode="nearest")
                    if cfg.conv_resample:
                        h = F.conv2d(h, p[f"output_blocks.{i}.{j}.conv.weight"],
                                     p[f"output_blocks.{i}.{j}.conv.bias"], padding=1)
                res *= 2
            i += 1
    h = F.silu(ref_group_norm(h, p, "out.0"))
    return F.conv2d(h, p["out.2.weight"], p["out.2.bias"], padding=1)


# ---------------------------------------------------------------------------------------------

def randomised_model(name, seed):
    """A gcg network of preset ``name`` with every tensor random (zero-initialised convs included,
    so outputs depend on every layer), in eval mode."""
    cfg = get_preset(name)
    model = create_model(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen) * (0.5 / math.sqrt(max(1, t[0].numel()))
                                                                if t.ndim > 1 else 0.1))
    return cfg, model


def classifier_grad(forward, x, y):
    """d sum_i log p(y_i | x_i) / d x, the classifier-guidance gradient."""
    x = x.detach().requires_grad_(True)
    log_probs = F.log_softmax(forward(x), dim=-1)
    return torch.autograd.grad(log_probs[torch.arange(len(y)), y].sum(), x)[0]


def time_pair(fn_gcg, fn_ref, warmup, repeats):
    """{"gcg"/"ref": (median wall seconds, median process CPU seconds)} over ``repeats`` alternating
    rounds after warm-up (at one thread, CPU time is the less contention-sensitive of the two)."""
    for _ in range(warmup):
        fn_gcg()
        fn_ref()
    times = {"gcg": [], "ref": []}
    for r in range(repeats):
        order = (("gcg", fn_gcg), ("ref", fn_ref)) if r % 2 == 0 else (("ref", fn_ref), ("gcg", fn_gcg))
        for key, fn in order:
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {k: tuple(statistics.median(col) for col in zip(*v)) for k, v in times.items()}


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", default="64x64_diffusion", help="UNet preset ('' to skip)")
    parser.add_argument("--classifier", default="64x64_classifier", help="classifier preset ('' to skip)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ref-attention-checkpoint", choices=("on", "off"), default="on",
                        help="checkpoint the reference's attention blocks, as the reference does (default on)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="gcg's side: fp32 or autocast")
    parser.add_argument("--ref-precision", choices=PRECISIONS, default="fp32", help="the reference's side")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch and --repeats must be >= 1 and --warmup >= 0")
    attn_ckpt = args.ref_attention_checkpoint == "on"
    precisions = {}
    for side, asked in (("gcg", args.precision), ("ref", args.ref_precision)):
        precisions[side], reason = resolve_precision(asked, "cpu")
        if reason:
            print(f"{side}: {reason}")
    mixed = precisions != {"gcg": "fp32", "ref": "fp32"}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, "
          f"median of {args.repeats} alternating rounds, gcg {precisions['gcg']}, reference {precisions['ref']}")
    last = "rel L2 vs fp32" if mixed else "max rel diff"
    print(f"{'what':<44} {'gcg ms':>9} {'ref ms':>9} {'ref/gcg':>8} {'CPU-time ref/gcg':>17} {last:>15}")
    gen = torch.Generator().manual_seed(args.seed + 1)
    for kind, name in (("unet", args.unet), ("classifier", args.classifier)):
        if not name:
            continue
        cfg, model = randomised_model(name, args.seed)
        if (cfg.kind == "classifier") != (kind == "classifier"):
            parser.error(f"--{kind} {name!r} is a {cfg.kind} preset; pick a {kind} preset")
        p = gcg_to_openai(model.state_dict(), cfg)
        x = torch.randn(args.batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        if kind == "unet":
            if cfg.super_res or cfg.aug_level_cond:
                parser.error(f"--unet {name!r}: super-resolution UNets are not covered; pick a base UNet")
            y = torch.randint(0, cfg.num_classes, (args.batch,), generator=gen) if cfg.num_classes else None

            def run_gcg():
                with torch.no_grad(), autocast(precisions["gcg"], "cpu"):
                    return model(x, t, y=y)

            def run_ref(precision=precisions["ref"]):
                with torch.no_grad(), autocast(precision, "cpu"):
                    return ref_forward(p, cfg, x, t, y)
            label = f"{name} forward (no grad)"
        else:
            y = torch.randint(0, cfg.num_classes, (args.batch,), generator=gen)

            def run_gcg():
                with autocast(precisions["gcg"], "cpu"):
                    return classifier_grad(lambda z: model(z, t), x, y)

            def run_ref(precision=precisions["ref"]):
                with autocast(precision, "cpu"):
                    return classifier_grad(lambda z: ref_forward(p, cfg, z, t, attn_ckpt=attn_ckpt), x, y)
            label = f"{name} input gradient"
        if mixed:  # gcg's output in its precision against the fp32 reference output
            out, exact = run_gcg().double(), run_ref("fp32").double()
            diff = float((out - exact).norm() / exact.norm())
        else:
            diff = rel_diff(run_gcg(), run_ref())
        timing = time_pair(run_gcg, run_ref, args.warmup, args.repeats)
        (wall_gcg, cpu_gcg), (wall_ref, cpu_ref) = timing["gcg"], timing["ref"]
        print(f"{label:<44} {1e3 * wall_gcg:9.1f} {1e3 * wall_ref:9.1f} {wall_ref / wall_gcg:8.3f} "
              f"{cpu_ref / cpu_gcg:17.3f} {diff:15.2e}", flush=True)


if __name__ == "__main__":
    main()
