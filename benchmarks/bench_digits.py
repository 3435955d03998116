"""Wall time and sample quality of the digits main job (`python -m gcg.train --preset digits`).

Trains the preset (plus `--set` overrides) through `gcg.train.train`, timing every training step
(wall and process CPU time, so contention from other processes shows as wall >> CPU / threads),
every sample grid and checkpoint; then scores checkpoints the same way before and after a change:
1000 class-conditional samples (100 per digit, DDIM-50, seed 0, EMA weights, no guidance) judged by

  accuracy   a logistic regression trained on the real training digits says the sample shows the
             requested digit (independent of the diffusion model and of gcg's own feature net);
  FD         Fréchet distance on `gcg.features` domain features to the held-out test digits.

One run can stand in for several recipes that share the raw-weight trajectory: EMA rates and
checkpoint steps do not change the weights the optimizer visits, so

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_digits.py --out /tmp/digits \
        --set max_steps=1200 --set ema_rates=0.995,0.999 --set save_every=200 --set keep_checkpoints=6 \
        --score 800@0.995 1200@0.999 800@0.999

scores "800 steps, EMA 0.995" against the preset's "1200 steps, EMA 0.999" from one training run.
Run it alone on the machine (timings are only meaningful without other heavy processes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gcg.train as gcg_train  # noqa: E402
from gcg.presets import apply_overrides, get_preset  # noqa: E402


def timed_run(config) -> dict:
    """Train `config`, timing train_step / write_sample_grid / save calls (monkeypatched wrappers)."""
    times = {"step": [], "step_cpu": [], "grid": [], "save": []}
    originals = {name: getattr(gcg_train, name) for name in ("train_step", "write_sample_grid", "save")}

    def wrap(name, key):
        def wrapper(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            out = originals[name](*args, **kwargs)
            times[key].append(time.perf_counter() - t0)
            if key == "step":
                times["step_cpu"].append(time.process_time() - c0)
            return out
        return wrapper

    gcg_train.train_step, gcg_train.write_sample_grid, gcg_train.save = (
        wrap("train_step", "step"), wrap("write_sample_grid", "grid"), wrap("save", "save"))
    try:
        t0 = time.perf_counter()
        gcg_train.train(config, progress=False)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(gcg_train, name, fn)
    steps, cpu = times["step"], times["step_cpu"]
    per_100 = lambda xs: [round(1e3 * sum(xs[i:i + 100]) / len(xs[i:i + 100]), 1) for i in range(0, len(xs), 100)]
    return {"total_s": round(total, 1), "train_steps_s": round(sum(steps), 1),
            "grids_s": [round(x, 1) for x in times["grid"]], "saves_s": [round(x, 2) for x in times["save"]],
            "wall_ms_per_step_by_100": per_100(steps), "cpu_ms_per_step_by_100": per_100(cpu),
            "threads": torch.get_num_threads()}


def score(checkpoints: list[tuple[Path, float]], num_samples: int = 1000) -> dict:
    """Logistic-regression accuracy and domain-feature FD of each (checkpoint, EMA rate)."""
    from sklearn.linear_model import LogisticRegression

    from gcg.checkpoint import load_model
    from gcg.data import load_digits_dataset
    from gcg.features import train_feature_net
    from gcg.metrics import fid_from_features
    from gcg.sample import sample

    x_train, y_train = load_digits_dataset("train").as_tensors()
    x_test, y_test = load_digits_dataset("test").as_tensors()
    logreg = LogisticRegression(max_iter=2000).fit(x_train.flatten(1).numpy(), y_train.numpy())
    features = train_feature_net(x_train, y_train, epochs=10, seed=0)
    test_pool = features.extract(x_test)["pool"]
    out = {"reference": {"logreg_accuracy_on_test_digits": float(logreg.score(x_test.flatten(1).numpy(),
                                                                               y_test.numpy())),
                         "FD_train_vs_test_digits": float(fid_from_features(test_pool,
                                                                            features.extract(x_train)["pool"]))}}
    for path, rate in checkpoints:
        model, diffusion = load_model(path, ema_rate=rate)
        labels = torch.arange(num_samples) % 10
        x, _ = sample(model, diffusion, num_samples, batch_size=500, class_labels=labels,
                      timestep_respacing="ddim50", seed=0, progress=False)
        accuracy = float((logreg.predict(x.flatten(1).numpy()) == labels.numpy()).mean())
        fd = float(fid_from_features(test_pool, features.extract(x)["pool"]))
        out[f"{path.name}@{rate}"] = {"logreg_accuracy": accuracy, "FD_domain": fd}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="run directory (checkpoints, metrics, timing.json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the digits preset")
    p.add_argument("--score", nargs="*", default=None, metavar="STEP@EMA",
                   help="checkpoints to score, e.g. 800@0.995 (default: the last one at the first EMA rate)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--no-train", action="store_true", help="only score the checkpoints already in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    config = apply_overrides(apply_overrides(get_preset("digits"), {"out_dir": str(out)}), args.set)
    report = {}
    if not args.no_train:
        report["timing"] = timed_run(config)
        print(json.dumps(report["timing"]), flush=True)
    specs = args.score or [f"{config.max_steps}@{config.ema_rates[0]}"]
    checkpoints = [(gcg_train.checkpoint_path(out, int(s.split("@")[0])), float(s.split("@")[1])) for s in specs]
    report["quality"] = score(checkpoints, args.num_samples)
    print(json.dumps(report["quality"], indent=1))
    (out / "bench_digits.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
