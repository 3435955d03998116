"""gcg.images: value ranges, box downsampling and the sample-grid helper."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gcg.images import downsample, image_grid, plot_image_grid, to_uint8, to_unit_range  # noqa: E402


def test_unit_range_and_uint8_round_trip_every_level():
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = to_unit_range(u8)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    np.testing.assert_array_equal(to_uint8(x)[0, ..., 0], u8[0, 0].numpy())


def test_downsample_is_the_block_mean():
    x = torch.randn(2, 3, 8, 8)
    expected = x.view(2, 3, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(downsample(x, 4), expected)
    with pytest.raises(ValueError, match="multiple of the target"):
        downsample(x, 3)


def test_image_grid_enlarges_small_images_and_separates_them():
    # two 8x8 images, one black, one white; default tile 32 -> 4x nearest upsampling
    x = torch.stack([-torch.ones(1, 8, 8), torch.ones(1, 8, 8)])
    grid = image_grid(x, nrow=2, pad_value=0.5)
    pad = 2  # max(2, 32 // 16)
    assert grid.shape == (32 + 2 * pad, 2 * 32 + 3 * pad, 3) and grid.dtype == np.uint8
    assert (grid[pad:pad + 32, pad:pad + 32] == 0).all()              # first tile black
    assert (grid[pad:pad + 32, 2 * pad + 32:2 * pad + 64] == 255).all()  # second tile white
    # the separator column between them is the pad value (grey), so tiles never merge
    assert (grid[pad:pad + 32, pad + 32:2 * pad + 32] == 128).all()


def test_image_grid_keeps_each_pixel_as_a_block():
    x = torch.rand(1, 3, 4, 4) * 2 - 1
    grid = image_grid(x, tile=16, padding=0)
    block = grid[:4, :4]
    assert (block == block[0, 0]).all()
    np.testing.assert_array_equal(grid[::4, ::4], to_uint8(x)[0])


def test_image_grid_rejects_vectors_with_a_clear_message():
    with pytest.raises(ValueError, match="scatter plot"):
        image_grid(torch.randn(10, 2))


def test_plot_image_grid_labels_rows_columns_and_tiles():
    fig, ax = plt.subplots()
    x = torch.zeros(6, 1, 8, 8)
    plot_image_grid(ax, x, nrow=3, row_labels=["a", "b"], col_labels=["0", "1", "2"],
                    tile_text=[f"{i}" for i in range(6)])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    assert len(ax.texts) == 6
    with pytest.raises(ValueError, match="tile_text has 2 strings for 6 images"):
        plot_image_grid(ax, x, nrow=3, tile_text=["a", "b"])
    plt.close(fig)
