"""benchmarks/gpu_check.py in its CPU smoke mode: every section reports, every correctness row passes."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_peak_lookup_by_device_name(gpu_check):
    assert gpu_check.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756
    assert gpu_check.peak_tflops("NVIDIA H200") == 989
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert gpu_check.peak_tflops("a CPU") is None


@pytest.mark.slow  # about a minute on one core, and it launches torchrun
def test_cpu_smoke_run_reports_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "check.json"
    code = gpu_check.main(["--cpu-smoke", "--json", str(out)])
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    failed = [r for r in report["rows"] if r["passed"] is False]
    assert code == 0 and not failed, failed
    assert set(report["sections"]) == set(gpu_check.SECTIONS)
    for section in gpu_check.SECTIONS:
        assert report["sections"][section], f"section {section} reported nothing"
        assert section in table
    names = [r["name"] for r in report["sections"]["correctness"]]
    for part in ("UNet output", "UNet parameter grads", "classifier input grad", "DDIM guided",
                 "DDPM guided", "converter", "legacy attention order"):
        assert any(part in n for n in names), (part, names)
    assert all(r["passed"] for r in report["sections"]["correctness"])
    resume = [r["name"] for r in report["sections"]["train_resume"]]
    for precision in ("fp32", "bf16", "fp16"):
        assert any(n.startswith(f"{precision}: 3 steps vs 2 + resume") for n in resume), resume
        assert any(n.startswith(f"{precision}: injected inf skips") for n in resume), resume
    throughput = {r["name"]: r for r in report["sections"]["throughput"]}
    assert throughput["model FLOPs per training image (fwd+bwd)"]["value"] > 0
    rates = [r["value"] for n, r in throughput.items() if n.startswith("train ")]
    assert len(rates) == 6 and all(v > 0 for v in rates)
    assert report["sections"]["ddp"][0]["value"] > 0  # 2 gloo processes under torchrun
    assert [r["value"] > 0 for r in report["sections"]["sampling"]] == [True] * 4


def test_sections_option_selects_and_rejects(gpu_check):
    assert gpu_check.parse_sections("sampling, throughput") == ("throughput", "sampling")  # run order
    for bad in ("sampling,speed", ""):
        with pytest.raises(Exception, match="choose from correctness,train_resume"):
            gpu_check.parse_sections(bad)
    with pytest.raises(SystemExit):  # argparse turns the error into one usage line
        gpu_check.main(["--sections", "speed"])


def test_selected_sections_share_the_whole_budget(gpu_check):
    budget = gpu_check.Budget(100.0, ("train_resume", "throughput"))
    budget.open("train_resume")
    share = gpu_check.SHARES["train_resume"] / (gpu_check.SHARES["train_resume"] + gpu_check.SHARES["throughput"])
    assert budget.left() == pytest.approx(100.0 * share, abs=1.0)
    budget.open("throughput")  # what the first section leaves carries over: together the whole budget
    assert budget.left() == pytest.approx(100.0, abs=1.0)
