"""gcg.data: loaders on tiny files written here, offline sets, and the resumable sharded loader."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from gcg import data
from gcg.data import (DataError, DataUnavailable, ImageFolderDataset, ImageNet64Npz, PhotoPatches, TensorImageDataset,
                      ToyDataset, center_crop_arr, downsample, load_digits_dataset, make_dataset,
                      make_loader)


def _unit(x_uint8):
    return torch.as_tensor(x_uint8).to(torch.float32) / 127.5 - 1


# ------------------------------------------------------------------------------ downsample


def test_downsample_is_block_mean_and_rejects_non_divisible_sizes():
    x = torch.randn(2, 3, 8, 12)
    expected = x.reshape(2, 3, 2, 4, 3, 4).mean((3, 5))
    torch.testing.assert_close(downsample(x, (2, 3)), expected)
    torch.testing.assert_close(downsample(x[0], (2, 3)), expected[0])
    with pytest.raises(ValueError, match="multiple of the target 3x3"):
        downsample(x, 3)


# ------------------------------------------------------------------------------ ImageNet 64 npz


def _write_batch(path, images, labels, compressed=False):
    rows = images.reshape(len(images), -1)  # CHW order, as in the official files
    (np.savez_compressed if compressed else np.savez)(path, data=rows, labels=labels,
                                                      mean=rows.mean(0))


@pytest.fixture
def imagenet_dir(tmp_path):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(5, 3, 64, 64)).astype(np.uint8)
    labels = np.array([1, 1000, 7, 2, 500])
    _write_batch(tmp_path / "train_data_batch_1.npz", images[:3], labels[:3].tolist())
    _write_batch(tmp_path / "train_data_batch_2.npz", images[3:], labels[3:].tolist(), compressed=True)
    _write_batch(tmp_path / "val_data.npz", images[::-1].copy(), labels[::-1].copy())
    return tmp_path, images, labels


def test_imagenet_npz_chw_round_trip_labels_and_memory_map(imagenet_dir):
    root, images, labels = imagenet_dir
    with pytest.warns(UserWarning, match="2 of the 10"):
        ds = ImageNet64Npz(root, split="train")
    assert len(ds) == 5 and ds.native_size == 64 and ds.num_classes == 1000
    for i in range(5):
        x, y = ds[i]
        assert x.shape == (3, 64, 64) and x.dtype == torch.float32
        torch.testing.assert_close(x, _unit(images[i]), rtol=0, atol=0)  # exact, channel-first
        assert int(y) == labels[i] - 1
    assert ds[-1][1] == 499
    assert isinstance(ds._array(0), np.memmap)  # np.savez batch: mapped in place, not read
    val = ImageNet64Npz(root, split="val")
    torch.testing.assert_close(val[0][0], _unit(images[4]), rtol=0, atol=0)
    with pytest.raises(IndexError, match="out of range"):
        ds[5]


def test_imagenet_npz_compressed_batch_cached_as_npy(imagenet_dir, tmp_path_factory):
    root, images, _ = imagenet_dir
    cache = tmp_path_factory.mktemp("cache")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ImageNet64Npz(root, cache_dir=str(cache))
    torch.testing.assert_close(ds[4][0], _unit(images[4]), rtol=0, atol=0)
    assert os.listdir(cache) == ["train_data_batch_2.data.npy"]


def test_imagenet_npz_image_size_downsamples_and_flip_mirrors(imagenet_dir):
    root, images, _ = imagenet_dir
    ds = make_dataset("imagenet64", data_dir=str(root), image_size=32, split="val")
    assert not ds.random_flip  # flips only for the training split
    torch.testing.assert_close(ds[0][0], downsample(_unit(images[4]), 32))
    flipped = ImageNet64Npz(root, split="val", random_flip=True)
    seen = set()
    for epoch in range(8):
        flipped.set_epoch(epoch)
        x = flipped[0][0]
        seen.add(bool(torch.equal(x, _unit(images[4]).flip(-1))))
        assert torch.equal(x, _unit(images[4])) or torch.equal(x, _unit(images[4]).flip(-1))
    assert seen == {True, False}


def test_imagenet_missing_directory_and_files_messages(tmp_path):
    with pytest.raises(DataUnavailable, match=r"does not exist.*train_data_batch_1\.npz.*image-net\.org"):
        ImageNet64Npz(tmp_path / "nope")
    with pytest.raises(DataUnavailable, match=r"not found in .*expected train_data_batch_1\.npz \.\.\. "
                                              r"train_data_batch_10\.npz.*Downsampled ImageNet 64x64"):
        make_dataset("imagenet64", data_dir=str(tmp_path))
    with pytest.raises(DataUnavailable, match=r"expected val_data\.npz"):
        ImageNet64Npz(tmp_path, split="val")
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(DataUnavailable, match="use 'imagenet64-folder'"):
        ImageNet64Npz(tmp_path)
    with pytest.raises(DataError, match="pass data_dir") as info:
        make_dataset("imagenet64")
    assert not isinstance(info.value, DataUnavailable)  # a missing argument, not missing files


@pytest.mark.parametrize("contents, message", [
    (dict(data=np.zeros((2, 3 * 64 * 64), np.uint8)), r"expected arrays 'data' and 'labels'"),
    (dict(data=np.zeros((2, 3 * 64 * 64), np.uint8), labels=[0, 5]), r"labels must lie in 1\.\.1000"),
    (dict(data=np.zeros((2, 100), np.uint8), labels=[1, 5]), r"rows of 100 values are not 3\*S\*S"),
    (dict(data=np.zeros((3, 3 * 64 * 64), np.uint8), labels=[1, 5]), r"with N = 2 labels"),
    (dict(data=np.zeros((2, 3 * 64 * 64), np.float32), labels=[1, 5]), r"expected 'data' uint8"),
])
def test_imagenet_malformed_batch_messages(tmp_path, contents, message):
    np.savez(tmp_path / "val_data.npz", **contents)
    with pytest.raises(DataError, match=message) as info:
        ImageNet64Npz(tmp_path, split="val")
    assert not isinstance(info.value, DataUnavailable)  # the file is there but malformed


def test_imagenet_not_a_zip_message(tmp_path):
    (tmp_path / "val_data.npz").write_bytes(b"not a zip")
    with pytest.raises(DataUnavailable, match="not a readable .npz.*download it again"):
        ImageNet64Npz(tmp_path, split="val")


# ------------------------------------------------------------------------------ image folders


def _save_png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def test_center_crop_arr_follows_adm_box_halving_then_centre_crop():
    rng = np.random.RandomState(1)
    arr = rng.randint(0, 256, size=(8, 12, 3)).astype(np.uint8)
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(arr), 8), arr[:, 2:10])  # no resize
    big = np.kron(arr, np.ones((4, 4, 1), np.uint8))  # 32x48: two BOX halvings recover arr exactly
    np.testing.assert_array_equal(center_crop_arr(Image.fromarray(big), 8), arr[:, 2:10])
    wide = center_crop_arr(Image.fromarray(rng.randint(0, 256, (20, 50, 3)).astype(np.uint8)), 16)
    assert wide.shape == (16, 16, 3)


@pytest.mark.parametrize("layout", ["subdirs", "flat"])
def test_image_folder_layouts_labels_and_values(tmp_path, layout):
    rng = np.random.RandomState(2)
    arrays = {}
    for cls, n in [("zebra", 2), ("ant", 1), ("mole", 2)]:
        for k in range(n):
            arr = rng.randint(0, 256, size=(16, 16, 3)).astype(np.uint8)
            rel = f"{cls}/img{k}.png" if layout == "subdirs" else f"{cls}_img{k}.png"
            _save_png(str(tmp_path / rel), arr)
            arrays[rel] = (arr, cls)
    ds = ImageFolderDataset(tmp_path, image_size=16)
    assert ds.layout == layout and ds.class_names == ["ant", "mole", "zebra"] and len(ds) == 5
    for i, path in enumerate(ds.files):
        arr, cls = arrays[os.path.relpath(path, tmp_path)]
        x, y = ds[i]
        assert ds.class_names[int(y)] == cls
        torch.testing.assert_close(x, _unit(arr).permute(2, 0, 1), rtol=0, atol=0)


def test_image_folder_grey_images_become_rgb_and_crop_to_size(tmp_path):
    _save_png(str(tmp_path / "a_1.png"), np.full((20, 30), 255, np.uint8))
    x, y = make_dataset("imagenet64-folder", data_dir=str(tmp_path), image_size=8)[0]
    assert x.shape == (3, 8, 8) and int(y) == 0
    torch.testing.assert_close(x, torch.ones(3, 8, 8))


def test_image_folder_random_crop_is_seeded_by_epoch(tmp_path):
    _save_png(str(tmp_path / "a_1.png"), np.random.RandomState(3).randint(0, 256, (40, 40, 3)).astype(np.uint8))
    ds = ImageFolderDataset(tmp_path, 16, random_crop=True)
    first = ds[0][0]
    assert first.shape == (3, 16, 16) and torch.equal(first, ds[0][0])
    crops = []
    for epoch in range(6):
        ds.set_epoch(epoch, seed=1)
        crops.append(ds[0][0])
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_image_folder_error_messages(tmp_path):
    with pytest.raises(DataUnavailable, match=r"does not exist: expected class sub-directories"):
        ImageFolderDataset(tmp_path / "missing", 8)
    with pytest.raises(DataUnavailable, match=r"no images .* found in .*<class>_<name>\.png"):
        ImageFolderDataset(tmp_path, 8)
    _save_png(str(tmp_path / "noprefix.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"noprefix\.png has no '<class>_' prefix"):
        ImageFolderDataset(tmp_path, 8)
    unlabelled = ImageFolderDataset(tmp_path, 8, class_cond=False)
    assert unlabelled.labels.tolist() == [0] and unlabelled.num_classes == 1
    (tmp_path / "bad_1.png").write_bytes(b"garbage")
    with pytest.raises(DataUnavailable, match=r"cannot read image .*bad_1\.png"):
        ImageFolderDataset(tmp_path, 8, class_cond=False)[0]


# ------------------------------------------------------------------------------ torchvision sets


def _write_idx(path, array):
    """The IDX format of the MNIST files: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, data."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes() + array.tobytes())


def test_mnist_from_local_files_padded_to_32_and_to_rgb(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(4)
    images = {s: rng.randint(0, 256, size=(3, 28, 28)).astype(np.uint8) for s in ("train", "t10k")}
    for s in ("train", "t10k"):
        _write_idx(raw / f"{s}-images-idx3-ubyte", images[s])
        _write_idx(raw / f"{s}-labels-idx1-ubyte", np.array([3, 1, 4], np.uint8))
    ds = make_dataset("mnist", data_dir=str(tmp_path), image_size=32, split="test", download=False)
    x, y = ds[2]
    assert x.shape == (1, 32, 32) and int(y) == 4 and ds.num_classes == 10 and not ds.random_flip
    torch.testing.assert_close(x[0, 2:30, 2:30], _unit(images["t10k"][2]), rtol=0, atol=0)
    assert (x[0, :2] == -1).all() and (x[0, :, 30:] == -1).all()  # padding is background
    rgb = make_dataset("mnist", data_dir=str(tmp_path), channels=3, download=False)
    torch.testing.assert_close(rgb[0][0], _unit(images["train"][0])[None].expand(3, -1, -1), rtol=0, atol=0)


def test_torchvision_without_internet_gives_a_clear_message(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(self):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(DataUnavailable, match=r"could not download cifar10 into .*URLError.*offline set") as info:
        make_dataset("cifar10", data_dir=str(tmp_path))
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no urllib trace
    with pytest.raises(DataUnavailable, match=r"fashion-mnist not found in .* download=False"):
        make_dataset("fashion-mnist", data_dir=str(tmp_path), download=False)


# ------------------------------------------------------------------------------ offline sets


def test_digits_values_and_fixed_stratified_split():
    from sklearn.datasets import load_digits

    ref = load_digits()
    full = load_digits_dataset("all")
    images, labels = full.as_tensors()
    assert images.shape == (1797, 1, 8, 8) and full.num_classes == 10
    torch.testing.assert_close(images[:, 0], torch.tensor(ref.images, dtype=torch.float32) / 8 - 1)
    assert images.min() == -1 and images.max() == 1 and labels.tolist() == ref.target.tolist()
    train, test = make_dataset("digits"), make_dataset("digits", split="test")
    assert len(train) + len(test) == 1797
    both = torch.cat([train.source_indices, test.source_indices])
    assert torch.equal(both.sort().values, torch.arange(1797))  # disjoint and covering
    torch.testing.assert_close(test.images, images[test.source_indices], rtol=0, atol=0)
    counts = torch.bincount(test.labels, minlength=10).float() / torch.bincount(labels, minlength=10)
    assert ((counts - 0.2).abs() < 0.01).all()  # stratified 20% per class
    assert torch.equal(make_dataset("digits", split="test").images, test.images)  # deterministic
    assert make_dataset("digits", image_size=16)[0][0].shape == (1, 16, 16)


def test_photo_patches_split_by_region_never_overlaps():
    train = PhotoPatches(16, "train", photos=("coffee", "brick"), patches_per_class=40)
    test = PhotoPatches(16, "test", photos=("coffee", "brick"), patches_per_class=40, channels=3)
    assert train.num_classes == 2 and len(train) == 80
    for label in range(2):
        W = train.images[label].shape[-1]
        cut = int(0.8 * W)
        assert train.regions[label] == (0, cut) and test.regions[label] == (cut, W)
    for epoch in range(3):
        train.set_epoch(epoch, seed=5)
        for i in range(len(train)):
            label, top, left = train.patch_position(i)
            assert label == i // 40 and left + 16 <= train.regions[label][1] and top + 16 <= train.images[label].shape[1]
    for i in range(len(test)):
        label, top, left = test.patch_position(i)
        assert left >= test.regions[label][0] and left + 16 <= test.images[label].shape[-1]


def test_photo_patches_values_flip_epochs_and_low_res_pairs():
    train = PhotoPatches(16, "train", photos=("astronaut", "grass"), patches_per_class=8, low_res_size=4)
    x, y, low = train[9]
    label, top, left = train.patch_position(9)
    assert int(y) == label == 1 and x.shape == (3, 16, 16) and low.shape == (3, 4, 4)
    crop = _unit(train.images[1][:, top:top + 16, left:left + 16])
    assert torch.equal(x, crop) or torch.equal(x, crop.flip(-1))
    assert torch.equal(x[0], x[1])  # the grey photograph is repeated to 3 channels
    torch.testing.assert_close(low, downsample(x, 4))
    positions = [train.patch_position(9)]
    train.set_epoch(1)
    positions.append(train.patch_position(9))
    assert positions[0] != positions[1]  # new crop every epoch
    test = PhotoPatches(16, "test", photos=("astronaut",), channels=1)
    first = test[3][0]
    test.set_epoch(4)
    assert first.shape == (1, 16, 16) and torch.equal(first, test[3][0])  # fixed test set, no flip


def test_photo_patches_errors():
    with pytest.raises(DataError, match=r"does not fit in the test region of 'chelsea'"):
        PhotoPatches(128, "test", photos=("chelsea",))
    with pytest.raises(DataError, match=r"skimage.data has no photograph 'nonesuch'"):
        PhotoPatches(8, photos=("nonesuch",))
    with pytest.raises(DataError, match="low_res_size 5 must divide"):
        PhotoPatches(16, low_res_size=5)
    halved = PhotoPatches(16, photos=("brick",), photo_downsample=2)
    assert halved.images[0].shape == (3, 256, 256)


class _FakeToy:
    num_classes = 3

    def sample(self, n, generator=None):
        y = torch.randint(0, 3, (n,), generator=generator)
        return y[:, None].double() + torch.randn(n, 2, generator=generator, dtype=torch.float64), y


def test_toy_dataset_is_fixed_by_seed():
    a, b = ToyDataset(_FakeToy(), 50, seed=0), ToyDataset(_FakeToy(), 50, seed=0)
    assert torch.equal(a.x, b.x) and a.x.dtype == torch.float32 and a[0][0].shape == (2,)
    assert not torch.equal(a.x, ToyDataset(_FakeToy(), 50, seed=1).x) and a.num_classes == 3
    toy = make_dataset("toy-gmm", num_samples=64)
    assert len(toy) == 64 and toy[0][0].shape == (toy.toy.dim,)
    assert not torch.equal(toy.x, make_dataset("toy-gmm", split="test", num_samples=64).x)


def test_make_dataset_unknown_name_and_keyword():
    with pytest.raises(DataError, match=r"unknown data set 'imagenet'; valid names:\n.*imagenet64(.|\n)*photo-patches"):
        make_dataset("imagenet")
    with pytest.raises(DataError, match=r"'digits'.*unexpected keyword"):
        make_dataset("digits", colour=True)
    assert sorted(data.DATASETS) == sorted(["imagenet64", "imagenet64-folder", "image-folder", "cifar10", "mnist",
                                            "fashion-mnist", "digits", "photo-patches", "glyphs", "toy-gmm"])


# ------------------------------------------------------------------------------ errors


def test_data_errors_are_one_hierarchy_of_value_errors():
    """DataUnavailable (files missing or unreadable) is a DataError (bad input), a ValueError:
    gcg.cli.run prints either as one line."""
    import gcg

    assert issubclass(DataUnavailable, DataError) and issubclass(DataError, ValueError)
    assert gcg.DataError is DataError and data.DataUnavailable is DataUnavailable


def test_a_missing_data_set_is_one_line_on_the_command_line(tmp_path, capsys):
    from gcg import features

    argv = ["--dataset", "imagenet64", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "n.pt")]
    assert features.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gcg.features: error: data directory {tmp_path / 'nope'} does not exist")
    assert err.rstrip().endswith(f"unzip them into {tmp_path / 'nope'}.")  # the fix


# ------------------------------------------------------------------------------ loader


def _indexed(n, flip=False):
    """Image i is filled with the value i, so a batch tells which examples it holds."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    images[:, :, :, 0] = -1 - images[:, :, :, 0]  # left column marks the orientation
    return TensorImageDataset(images, torch.arange(n) % 3, random_flip=flip)


def _ids(batch):
    return batch[0][:, 0, 0].max(-1).values.long().tolist()  # row 0 is [-1-i, i], or flipped


def _take(loader, k):
    return [next(loader) for _ in range(k)]


def test_loader_shards_are_disjoint_and_cover_the_data():
    for n, world in [(24, 4), (23, 2)]:
        shards = [make_loader(_indexed(n), 1, seed=3, rank=r, world_size=world) for r in range(world)]
        per_epoch = n // world
        seen = [sum((_ids(b) for b in _take(s, per_epoch)), []) for s in shards]
        flat = sum(seen, [])
        assert len(flat) == len(set(flat)) == n - n % world
        assert all(len(s) == per_epoch for s in seen)


def test_loader_ranks_together_form_the_single_process_global_batch():
    single = _take(make_loader(_indexed(40), 8, seed=7), 10)
    ranks = [_take(make_loader(_indexed(40), 4, seed=7, rank=r, world_size=2), 10) for r in range(2)]
    for step in range(10):
        assert sorted(_ids(ranks[0][step]) + _ids(ranks[1][step])) == sorted(_ids(single[step]))
        assert _ids(ranks[1][step]) == _ids(single[step])[1::2]


def test_loader_reproducible_and_reshuffled_every_epoch():
    a = _take(make_loader(_indexed(12), 4, seed=1), 9)
    b = _take(make_loader(_indexed(12), 4, seed=1), 9)
    c = _take(make_loader(_indexed(12), 4, seed=2), 3)
    assert [_ids(x) for x in a] == [_ids(x) for x in b]
    epochs = [sum((_ids(x) for x in a[3 * e:3 * e + 3]), []) for e in range(3)]
    assert all(sorted(e) == list(range(12)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != sum((_ids(x) for x in c), [])
    ordered = _take(make_loader(_indexed(12), 4, shuffle=False), 3)
    assert sum((_ids(x) for x in ordered), []) == list(range(12))


def test_loader_resume_at_step_k_gives_the_same_batches_and_augmentations():
    ds = _indexed(10, flip=True)
    loader = make_loader(ds, 3, seed=4)
    straight = _take(loader, 11)
    assert loader.step == 11 and loader.epoch == 3 and len(loader) == 3
    flips = [bool(x[0, 0, 0] >= 0) for b in straight for x in b[0]]
    assert any(flips) and not all(flips)
    for k in (0, 2, 3, 7):
        resumed = _take(make_loader(ds, 3, seed=4, start_step=k), 11 - k)
        for x, y in zip(resumed, straight[k:]):
            assert torch.equal(x[0], y[0]) and torch.equal(x[1], y[1])


def test_loader_workers_match_single_process_and_drop_last_false():
    ds = PhotoPatches(8, photos=("coffee",), patches_per_class=12)
    inline = _take(make_loader(ds, 4, seed=9), 4)
    workers = _take(make_loader(ds, 4, seed=9, num_workers=2), 4)
    for x, y in zip(inline, workers):
        assert torch.equal(x[0], y[0])
    ragged = _take(make_loader(_indexed(10), 4, drop_last=False), 3)
    assert [len(b[1]) for b in ragged] == [4, 4, 2]


def test_loader_argument_errors():
    with pytest.raises(DataError, match="fewer than batch_size 8.*lower the batch size"):
        make_loader(_indexed(10), 8, world_size=2)
    with pytest.raises(DataError, match=r"rank must lie in \[0, world_size\)"):
        make_loader(_indexed(10), 2, rank=2, world_size=2)


def test_training_passes_data_errors_through(tmp_path):
    """`gcg.training.build.make_data` keeps gcg.data's classes: misconfigured stays a plain DataError,
    missing files stay DataUnavailable (the CLI prints both as one line)."""
    from gcg.training.build import make_data
    from gcg.training.config import TrainConfig

    with pytest.raises(DataError, match="pass data_dir") as info:
        make_data(TrainConfig(dataset="imagenet64", image_size=64))
    assert not isinstance(info.value, DataUnavailable)
    with pytest.raises(DataUnavailable, match="does not exist"):
        make_data(TrainConfig(dataset="imagenet64", image_size=64, data_dir=str(tmp_path / "missing")))
