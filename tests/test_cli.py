"""gcg.cli: every command line turns a user error into ONE line on stderr and exit code 2, checked
before the work; bugs keep their tracebacks. Plus --threads, the trainer's start-up summary,
re-running a saved config (--config), TensorBoard logging and the feature-network CLI."""
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from gcg import cli
from gcg.checkpoint import save_checkpoint
from gcg.diffusion import DiffusionConfig
from gcg.features import DomainFeatureConfig, DomainFeatureNet, load_feature_net, save_feature_net
from gcg.nn.config import MODEL_PRESETS, create_model
from gcg.presets import PRESETS, TrainConfig, config_from_dict, get_preset, load_config_file

MAINS = {name: importlib.import_module(f"gcg.{name}").main
         for name in ("train", "sample", "evaluate", "toy", "features")}


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The paths the cases refer to, by placeholder name."""
    d = tmp_path_factory.mktemp("cli")
    (d / "a_file").write_text("not a directory")
    torch.manual_seed(0)
    model = create_model(MODEL_PRESETS["tiny"])
    save_checkpoint(d / "tiny.pt", {"model_config": MODEL_PRESETS["tiny"].to_dict(), "model": model.state_dict(),
                                    "diffusion_config": DiffusionConfig(steps=50).to_dict(), "ema": {}})
    images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    np.savez(d / "images.npz", arr_0=images, arr_1=np.arange(12) % 3)
    full = (d / "images.npz").read_bytes()
    (d / "truncated.npz").write_bytes(full[: len(full) // 2])
    (d / "garbage.npz").write_bytes(b"these bytes are neither a zip archive nor an .npy file" * 10)
    save_feature_net(DomainFeatureNet(DomainFeatureConfig(1, 8, 3, widths=(8, 8, 8))), d / "net.pt")
    net = (d / "net.pt").read_bytes()
    (d / "truncated_net.pt").write_bytes(net[: len(net) // 2])
    (d / "foreign_net.pt").write_text("a text file, not a network")
    return {"dir": str(d), "file": str(d / "a_file"), "ckpt": str(d / "tiny.pt"), "npz": str(d / "images.npz"),
            "truncated_npz": str(d / "truncated.npz"), "garbage_npz": str(d / "garbage.npz"),
            "net": str(d / "net.pt"), "truncated_net": str(d / "truncated_net.pt"),
            "foreign_net": str(d / "foreign_net.pt")}


def user_error(capsys, name, argv):
    """Run gcg.<name>'s main(argv): it must return 2 with exactly one stderr line, no traceback and
    no output on stdout (nothing was computed). Returns that line."""
    code = MAINS[name](argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gcg.{name}: error: "), err
    assert "Traceback" not in err and out == "", (out, err)
    return lines[0]


DIGITS = ["--preset", "digits", "--no-progress"]
SAMPLE = ["{ckpt}", "--out-dir", "{dir}/samples", "--no-progress"]
EVAL = ["--features", "domain:{net}", "--no-progress"]
CASES = [
    # issue 20, "One error path": tracebacks before
    ("train", [*DIGITS, "--set", "model.model_channels=abc"], r"--set model\.model_channels=abc: expected an integer"),
    ("train", [*DIGITS, "--out-dir", "{file}"], r"--out-dir \S+a_file is a file, not a directory"),
    ("train", [*DIGITS, "--out-dir", "{file}/run"], r"a_file is a file, so the directory cannot be created"),
    ("train", [*DIGITS, "--set", "device=cuda:99"], r"device=cuda:99: (CUDA is not available|this machine has)"),
    ("sample", [*SAMPLE, "--device", "cuda:99"], r"--device cuda:99: (CUDA is not available|this machine has)"),
    ("evaluate", ["{npz}", "{npz}", *EVAL, "--device", "cuda:99"], r"--device cuda:99: "),
    ("evaluate", ["{npz}", "{truncated_npz}", *EVAL], r"truncated\.npz is truncated or corrupt \(BadZipFile"),
    ("evaluate", ["{npz}", "{npz}", "--features", "domain:{truncated_net}"],
     r"truncated_net\.pt is not a readable domain feature network .*python -m gcg\.features"),
    ("evaluate", ["{npz}", "{npz}", "--features", "domain:{foreign_net}"],
     r"foreign_net\.pt is not a readable domain feature network"),
    ("toy", ["--out", "{dir}/toy.png", "--n", "0"], r"argument --n: must be >= 1, got 0"),
    ("toy", ["--out", "{dir}/toy.png", "--steps", "0"], r"argument --steps: must be >= 1, got 0"),
    ("toy", ["--out", "{file}/toy.png"], r"--out \S+toy\.png: \S+a_file is a file, not a directory"),
    ("toy", ["--out", "{dir}/toy.png", "--steps", "10"], r"--ddim-steps 50 exceeds --steps 10"),
    ("toy", ["--out", "{dir}/toy.png", "--steps", "10", "--ddim-steps", "5"], r"--steps 10: the linear schedule"),
    ("toy", ["--out", "{dir}/toy.xyz"], r"matplotlib cannot write \.xyz; end the name with one of .*\.png"),
    # unclear before
    ("sample", [*SAMPLE, "--class-labels", "a"], r"argument --class-labels: expected comma-separated integers"),
    ("sample", [*SAMPLE, "--batch-size", "0"], r"argument --batch-size: must be >= 1, got 0"),
    ("sample", [*SAMPLE, "--batch-size", "-2"], r"argument --batch-size: must be >= 1, got -2"),
    ("evaluate", ["{npz}", "{npz}", *EVAL, "--batch-size", "0"], r"argument --batch-size: must be >= 1"),
    ("train", [*DIGITS, "--set", "model.model_channels=48"],
     r"model_channels=48 gives 48 channels at level 0 .*multiple of 32: use model_channels=32 or 64"),
    ("evaluate", ["{npz}", "{garbage_npz}", *EVAL], r"garbage\.npz is not a NumPy \.npz archive"),
    # silently wrong, or failing after the work, before
    ("sample", [*SAMPLE, "--cfg-scale", "nan"], r"argument --cfg-scale: must be a finite number, got 'nan'"),
    ("sample", [*SAMPLE, "--classifier-scale", "inf"], r"argument --classifier-scale: must be a finite number"),
    ("sample", [*SAMPLE, "--classifier-scale", "3"], r"--classifier-scale 3\.0 needs --classifier CKPT"),
    ("train", [*DIGITS, "--max-steps", "0"], r"argument --max-steps: must be >= 1, got 0"),
    ("train", [*DIGITS, "--max-seconds", "nan"], r"argument --max-seconds: must be a finite number, got 'nan'"),
    ("train", [*DIGITS, "--max-seconds", "-5"], r"argument --max-seconds: must be > 0, got '-5'"),
    ("train", [*DIGITS, "--save-every", "-1"], r"argument --save-every: must be >= 0, got -1"),
    ("train", [*DIGITS, "--max-steps", "-5"], r"argument --max-steps: must be >= 1, got -5"),
    ("train", [*DIGITS, "--set", "max_steps=0"], r"max_steps=0 must be >= 1"),
    ("train", [*DIGITS, "--batch-size", "0"], r"argument --batch-size: must be >= 1"),
    ("train", [*DIGITS, "--data-dir", "{dir}"], r"data set 'digits' is built in and reads no directory; drop --data-dir"),
    ("sample", ["{ckpt}", "--out-dir", "{file}", "--no-progress"], r"--out-dir \S+a_file is a file, not a directory"),
    ("evaluate", ["{npz}", "{npz}", *EVAL, "--json", "{file}/r.json"], r"--json \S+r\.json: \S+a_file is a file"),
    ("evaluate", ["{npz}", "{npz}", *EVAL, "--json", "{dir}"], r"--json \S+ is a directory; pass a file name"),
    # more of the same kind
    ("train", [*DIGITS, "--set", "lr=nan"], r"--set lr=nan: expected a finite number"),
    ("train", [*DIGITS, "--set", "batch_size=inf"], r"--set batch_size=inf: expected an integer"),
    ("train", [*DIGITS, "--set", "model.no_such_field=1"], r"unknown network field model\.no_such_field"),
    ("train", [*DIGITS, "--threads", "0"], r"argument --threads: must be >= 1"),
    ("train", ["--preset", "digits", "--config", "{file}"], r"argument --config: not allowed with argument --preset"),
    ("train", [*DIGITS, "--set", "log=wandb"], r"log='wandb' is not one of"),
    ("sample", [*SAMPLE, "--num-samples", "0"], r"argument --num-samples: must be >= 1"),
    ("sample", [*SAMPLE, "--steps", "0"], r"argument --steps: must be >= 1"),
    ("sample", ["{dir}/missing.pt", "--no-progress"], r"checkpoint \S+missing\.pt: file not found"),
    ("sample", [*SAMPLE, "--low-res", "{truncated_npz}"], r"--low-res \S+truncated\.npz is truncated or corrupt"),
    ("evaluate", ["{npz}", "{npz}", *EVAL, "--k", "0"], r"argument --k: must be >= 1"),
    ("evaluate", ["{npz}"], r"give SAMPLES to evaluate, or --save-ref OUT"),
    ("features", ["--dataset", "digits", "--out", "{file}/net.pt"], r"--out \S+net\.pt: \S+a_file is a file"),
    ("features", ["--dataset", "digits", "--out", "{dir}/n.pt", "--widths", "7,8,8"], r"--widths 7,8,8: widths must be"),
    ("features", ["--images", "{garbage_npz}", "--out", "{dir}/n.pt"], r"--images \S+ is not a NumPy \.npz archive"),
    ("features", ["--out", "{dir}/n.pt"], r"one of the arguments --dataset --images is required"),
]


@pytest.mark.parametrize("name, argv, match", CASES, ids=[f"{c[0]}:{' '.join(c[1][-2:])}" for c in CASES])
def test_user_errors_are_one_line_with_exit_code_2(name, argv, match, files, capsys):
    line = user_error(capsys, name, [a.format(**files) for a in argv])
    assert re.search(match, line), line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name, argv", [("sample", [*SAMPLE, "--device", "cuda"]),
                                        ("train", [*DIGITS, "--set", "device=cuda"])])
def test_device_cuda_without_cuda(name, argv, files, capsys):
    line = user_error(capsys, name, [a.format(**files) for a in argv])
    assert "CUDA is not available on this machine" in line and "cpu" in line


def test_out_dir_not_writable(files, tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(cli.os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    line = user_error(capsys, "train", [*DIGITS, "--out-dir", str(locked / "run")])
    assert re.search(r"locked is not writable; choose a directory you can write to", line)
    line = user_error(capsys, "sample", [files["ckpt"], "--out-dir", str(locked), "--no-progress"])
    assert "is not writable" in line
    assert not (locked / "run").exists()


def test_toy_creates_a_missing_directory(tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "toy.png"
    assert MAINS["toy"](["--out", str(out), "--n", "20", "--steps", "30", "--ddim-steps", "3"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(MAINS))
def test_python_dash_m_exits_2_with_one_line(name, tmp_path):
    argv = {"train": [*DIGITS, "--batch-size", "-1"], "sample": ["x.pt", "--cfg-scale", "nan"],
            "evaluate": ["a.npz", "b.npz", "--batch-size", "0"], "toy": ["--out", "t.png", "--n", "0"],
            "features": ["--dataset", "digits", "--out", "n.pt", "--epochs", "0"]}[name]
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", f"gcg.{name}", *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"gcg.{name}: error: argument --") and "--help" in done.stderr


# ---------------------------------------------------------------- the handler itself
def test_bugs_keep_their_traceback_and_user_errors_can_show_theirs(monkeypatch, capsys):
    def bug(argv):
        return {}["missing"]

    with pytest.raises(KeyError):
        cli.run("gcg.x", bug)
    with pytest.raises(TypeError):
        cli.run("gcg.x", lambda argv: None + 1)

    def user(argv):
        raise cli.UsageError("bad value\n  spread over lines; the fix")

    assert cli.run("gcg.x", user) == 2
    assert capsys.readouterr().err == "gcg.x: error: bad value spread over lines; the fix\n"
    assert cli.run("gcg.x", lambda argv: open("/no/such/dir/file")) == 2
    assert capsys.readouterr().err == "gcg.x: error: No such file or directory: /no/such/dir/file\n"
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(cli.UsageError):
        cli.run("gcg.x", user)


def test_help_still_exits_0(capsys):
    for main in MAINS.values():
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
    assert "--threads" in capsys.readouterr().out


def test_read_npz_reports_each_kind_of_bad_file(files, tmp_path):
    assert sorted(cli.read_npz(files["npz"])) == ["arr_0", "arr_1"]
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(cli.UsageError, match="holds a single .npy array"):
        cli.read_npz(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError, match="no such file"):
        cli.read_npz(tmp_path / "missing.npz")


# ---------------------------------------------------------------- threads and the start-up summary
def test_threads_flag_sets_torch_threads():
    cli.set_threads(1)
    assert torch.get_num_threads() == 1
    before = torch.get_num_threads()
    assert cli.set_threads(None) == before  # default: leave torch's choice alone


def test_machine_load_hint_when_busy(monkeypatch):
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    text, hint = cli.machine_load(2)
    assert text.startswith("load 0.50 on ") and hint is None
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    text, hint = cli.machine_load(2)
    assert "load 99.00" in text and "2 torch threads may crawl; try --threads 1" in hint
    assert "--threads" not in cli.machine_load(1)[1] and "busy" in cli.machine_load(1)[1]


def _tiny_run(out, *extra):
    return [*DIGITS, "--out-dir", str(out), "--batch-size", "8", "--max-steps", "2", "--threads", "1",
            "--set", "log_every=1", "--set", "sample_every=0", "--set", "num_sample_images=4",
            "--set", "sample_steps=ddim2", *extra]


def test_train_prints_a_startup_summary_and_rereruns_its_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    out = tmp_path / "run"
    assert MAINS["train"](_tiny_run(out)) == 0
    err = capsys.readouterr().err
    from gcg.train import build_model_config, data_properties, make_data

    config = load_config_file(out / "config.json")
    data = make_data(config)
    params = sum(p.numel() for p in create_model(build_model_config(config, *data_properties(data))).parameters())
    assert f"{params / 1e6:.2f}M parameters" in err and f"{len(data):,} examples of shape [1, 8, 8]" in err
    assert "device cpu, precision fp32, 1 torch threads, load 9.00 on" in err
    assert "the machine is busy (load 9.0 > " in err
    # the saved config re-runs the same run, with --set on top
    again = tmp_path / "again"
    assert MAINS["train"](["--config", str(out / "config.json"), "--out-dir", str(again), "--threads", "1",
                           "--set", "lr=5e-4", "--no-progress"]) == 0
    capsys.readouterr()
    rerun = load_config_file(again / "config.json")
    assert rerun == dataclasses.replace(config, lr=5e-4, out_dir=str(again))
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in first] == [1, 2]
    # --config without --out-dir would overwrite the run it came from
    line = user_error(capsys, "train", ["--config", str(out / "config.json"), "--no-progress"])
    assert "already holds the run of" in line and "--out-dir NEW" in line and "--resume" in line


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_through_its_config_json(preset):
    config = get_preset(preset)
    assert config_from_dict(json.loads(json.dumps(config.to_dict())), "x") == config


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(ema_decay_warmup=True), r"unknown field 'ema_decay_warmup' is not a TrainConfig field"),
    (lambda d: d.update(batch_size="abc"), r"field 'batch_size' must be an integer, got 'abc'"),
    (lambda d: d.update(lr=None), r"field 'lr' must be a number"),
    (lambda d: d.update(ema_rates=0.999), r"field 'ema_rates' must be a list"),
    (lambda d: d.update(task="denoise"), r"task='denoise' is not one of"),
    (lambda d: d["model_overrides"].update(model_channels="abc"), r"field 'model\.model_channels' must be an integer"),
    (lambda d: d["model_overrides"].update(widht=3), r"unknown network field model\.widht"),
    (lambda d: (d.clear(), d.update(MODEL_PRESETS["tiny"].to_dict())), r"describes a network \(kind='unet'\)"),
])
def test_bad_config_files_name_the_field(edit, match, tmp_path, capsys):
    data = get_preset("glyphs16").to_dict()
    edit(data)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    line = user_error(capsys, "train", ["--config", str(path), "--out-dir", str(tmp_path / "o")])
    assert re.search(match, line) and str(path) in line, line


def test_config_files_that_are_not_configs(tmp_path, capsys):
    (tmp_path / "text.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, match in [("text.json", "is not a JSON file"), ("list.json", "holds a JSON list"),
                        ("missing.json", "no such file")]:
        line = user_error(capsys, "train", ["--config", str(tmp_path / name)])
        assert match in line and "config.json a run wrote" in line


def test_config_from_an_older_gcg_takes_defaults_and_says_so(tmp_path, capsys):
    data = get_preset("digits").to_dict()
    del data["log"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    assert load_config_file(path) == get_preset("digits")
    assert "has no log (written by an older gcg): using the defaults" in capsys.readouterr().err


# ---------------------------------------------------------------- TensorBoard
def test_tensorboard_logging_mirrors_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert MAINS["train"](_tiny_run(out, "--set", "log=tensorboard")) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"loss", "loss/q0", "grad_norm", "lr"} <= set(events.Tags()["scalars"])
    logged = [(e.step, e.value) for e in events.Scalars("loss")]
    assert logged == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in records]


def test_no_tensorboard_by_default_and_a_one_line_error_without_it(tmp_path, monkeypatch, capsys):
    assert TrainConfig().log == "jsonl"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else find_spec(name, *a))
    line = user_error(capsys, "train", [*DIGITS, "--out-dir", str(tmp_path / "run"), "--set", "log=tensorboard"])
    assert "pip install tensorboard" in line and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the feature-network CLI
def test_features_cli_builds_the_network_evaluate_needs(files, tmp_path, capsys):
    path = tmp_path / "nets" / "digits_features.pt"
    assert MAINS["features"](["--dataset", "digits", "--out", str(path), "--epochs", "1", "--widths", "8,16,16",
                              "--threads", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"--features domain:{path}" in out and "10 classes" in out
    net = load_feature_net(path)
    assert (net.config.in_channels, net.config.image_size, net.config.num_classes, net.config.widths) == (1, 8, 10, (8, 16, 16))
    result = MAINS["evaluate"]([files["npz"], files["npz"], "--features", f"domain:{path}", "--no-progress", "--k", "1"])
    assert result["fid"] == pytest.approx(0.0, abs=1e-3) and result["precision"] == 1.0
    # from labelled images in an npz, same seed, same weights
    again = tmp_path / "from_npz.pt"
    assert MAINS["features"](["--images", files["npz"], "--out", str(again), "--epochs", "1", "--no-progress"]) == 0
    assert load_feature_net(again).config.num_classes == 3
    capsys.readouterr()
    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    line = user_error(capsys, "features", ["--images", str(unlabelled), "--out", str(again)])
    assert "needs arr_0 (uint8 images NHWC) and arr_1 (class labels)" in line
