"""The README's ```python blocks run as written, in order, against small trained checkpoints."""
import re
from pathlib import Path

import pytest
from PIL import Image

from gcg.train import main as train_main

README = Path(__file__).resolve().parents[1] / "README.md"
# the runs the blocks load, each a 2-step training run of the preset with a slimmer network
RUNS = {"runs/digits": "digits", "runs/digits-classifier": "digits-classifier"}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A directory holding runs/digits and runs/digits-classifier, as the README's commands leave it."""
    root = tmp_path_factory.mktemp("readme")
    for out_dir, preset in RUNS.items():
        code = train_main(["--preset", preset, "--out-dir", str(root / out_dir), "--max-steps", "2",
                           "--batch-size", "16", "--no-progress", "--set", "model.num_res_blocks=1"])
        assert code == 0
    return root


def test_readme_python_blocks_run_as_written(workdir, monkeypatch):
    text = README.read_text()
    blocks = python_blocks(text)
    code = "\n".join(blocks)
    assert "## From Python" in text and blocks, "the README's 'From Python' section has no ```python block"
    for name in ("gcg.load_model", "gcg.sample_images", "cfg_scale", "classifier=", "gcg.save_grid"):
        assert name in code, f"the README's Python blocks no longer show {name}"
    for path in re.findall(r'load_model\("([^"]+)"', code):
        assert str(Path(path).parent) in RUNS, f"{path}: add its run to RUNS in tests/test_readme.py"
    monkeypatch.chdir(workdir)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    written = re.findall(r'save_grid\([^)]*"([^"]+\.png)"', code)
    assert written
    for name in written:  # 20 digits, 10 per row, each 8x8 pixel enlarged to an 8x8 block
        assert Image.open(workdir / name).size == (10 * (64 + 4) + 4, 2 * (64 + 4) + 4), name


def test_trainer_grid_shows_each_digit_at_64_px(workdir):
    # a 2-step run's grid: 9 images (3 x 3) scaled to the run's cost; 8x8 -> 64 px tiles, 4 px separators
    grid = Image.open(workdir / "runs/digits/samples_final.png").convert("RGB")
    assert grid.size == (3 * 68 + 4, 3 * 68 + 4)
    pixels = grid.load()
    assert all(pixels[x, 100] == (255, 255, 255) for x in (0, 3, 68, 71))  # white separator columns
