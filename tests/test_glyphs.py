"""The font-digit data set (gcg.data.load_glyphs): fonts with real digit glyphs only, split by
typeface, deterministic, balanced, no blank images, cached atomically, clear errors."""
import os

import pytest
import torch

from gcg.data import (GLYPH_TEST_FONTS, DataError, _matplotlib_font_dir, downsample, font_has_digits, glyph_fonts,
                      load_glyphs, make_dataset, render_glyphs)
from gcg.images import to_unit_range


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GCG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fonts_without_digit_glyphs_are_excluded():
    font_dir = _matplotlib_font_dir()
    path = lambda name: os.path.join(font_dir, name + ".ttf")  # noqa: E731
    assert font_has_digits(path("DejaVuSans")) and font_has_digits(path("cmr10"))
    # no digits at all (blank), a fallback font that draws a box ("tofu") for every character,
    # symbol fonts whose ASCII codes hold other glyphs, and old-style figures
    for name in ("DejaVuSansDisplay", "LastResortHE-Regular", "cmsy10", "cmex10", "STIXSizOneSymReg", "cmmi10"):
        assert not font_has_digits(path(name)), name
    usable = glyph_fonts()
    assert "LastResortHE-Regular" not in usable and "cmsy10" not in usable
    assert len(usable) >= 20 and set(GLYPH_TEST_FONTS) <= set(usable)


def test_shapes_range_balance_and_no_blank_images(cache):
    train = load_glyphs("train", 32, per_font=3)
    test = load_glyphs("test", 16, per_font=2)
    x, y = train.as_tensors()
    n_train_fonts = len(glyph_fonts()) - len(GLYPH_TEST_FONTS)
    assert x.shape == (n_train_fonts * 10 * 3, 1, 32, 32) and x.dtype == torch.float32
    assert test.as_tensors()[0].shape == (len(GLYPH_TEST_FONTS) * 10 * 2, 1, 16, 16)
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    for ds, per_font in ((train, 3), (test, 2)):
        images, labels = ds.as_tensors()
        assert torch.equal(labels.bincount(minlength=10), torch.full((10,), len(ds.font_names) * per_font))
        ink = (images + 1).flatten(1) / 2  # [0, 1], ink = 1
        brightest = 0.7 if images.shape[-1] == 32 else 0.4  # box averages of a 1-px stroke
        assert bool((ink.max(1).values > brightest).all()), "a blank or faint image"
        assert bool((ink.mean(1) > 0.005).all()), "an image with almost no ink"
        assert bool((ink.mean(1) < 0.6).all()), "an image that is mostly ink (a filled box?)"
        # every font contributes per_font copies of every digit
        pairs = ds.font_ids * 10 + labels
        assert torch.equal(pairs.bincount(), torch.full((len(ds.font_names) * 10,), per_font))


def test_split_is_by_font_and_disjoint(cache):
    train, test = load_glyphs("train", 16, per_font=1), load_glyphs("test", 16, per_font=1)
    assert sorted(test.font_names) == sorted(GLYPH_TEST_FONTS)
    assert not set(train.font_names) & set(test.font_names)
    assert set(train.font_names) | set(test.font_names) == set(glyph_fonts())


def test_deterministic_by_seed_and_cached_atomically(cache):
    a = load_glyphs("test", 32, per_font=2, seed=0).as_tensors()[0]
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".pt"), files  # no temporary file left behind
    cached = load_glyphs("test", 32, per_font=2, seed=0)  # from the cache
    fresh, _, _ = render_glyphs(cached.font_names, per_font=2, seed=0)  # rendered again
    assert torch.equal(a, cached.as_tensors()[0])
    assert torch.equal(a, to_unit_range(fresh))
    c = load_glyphs("test", 32, per_font=2, seed=1).as_tensors()[0]
    assert not torch.equal(a, c)
    assert len(os.listdir(cache)) == 2


def test_16px_is_the_box_average_of_32px(cache):
    x32 = load_glyphs("test", 32, per_font=1).as_tensors()[0]
    x16 = load_glyphs("test", 16, per_font=1).as_tensors()[0]
    torch.testing.assert_close(x16, downsample(x32, 16))


def test_registered_in_make_dataset(cache):
    ds = make_dataset("glyphs", image_size=16, split="test", per_font=1)
    x, y = ds[0]
    assert x.shape == (1, 16, 16) and y.dtype == torch.int64 and ds.num_classes == 10


def test_clear_errors(cache):
    with pytest.raises(DataError, match="split must be 'train' or 'test'"):
        load_glyphs("val")
    with pytest.raises(DataError, match="32x32 or box-averaged"):
        load_glyphs("train", 28)
    with pytest.raises(DataError, match="per_font must be >= 1"):
        load_glyphs("train", per_font=-1)
    with pytest.raises(DataError, match="does not exist"):
        glyph_fonts("/nonexistent/fonts")
