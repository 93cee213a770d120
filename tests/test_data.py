"""Data layer: formats, odd sizes, splits, the decode cache, packs, the synthetic set, augmentation."""

import numpy as np
import pytest
import torch
from conftest import CLASSES, make_imagefolder, run_cli
from PIL import Image

from stpcli.data import synthetic
from stpcli.data.loader import InputStats, augment, epoch_generator, iterate_batches
from stpcli.data.pack import read_pack, write_pack
from stpcli.data.source import load_dataset
from stpcli.data.split import check_split, stratified_split
from stpcli.errors import StpError


def test_folder_decodes_png_jpeg_tiff_and_odd_sizes(dataset_dir, tmp_path):
    data = load_dataset(str(dataset_dir), 32, cache_dir=tmp_path)
    assert data.classes == CLASSES
    assert data.images.shape == (36, 3, 32, 32) and data.images.dtype == torch.uint8
    assert {n.rsplit(".", 1)[1] for n in data.names} == {"png", "jpg", "tif"}
    # decoding matches an independent PIL pipeline: shorter side to 32 then centre crop
    name = next(n for n in data.names if n.endswith(".tif"))
    with Image.open(dataset_dir / name) as img:
        w, h = img.size
        scale = 32 / min(w, h)
        resized = img.convert("RGB").resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
        left, top = (resized.width - 32) // 2, (resized.height - 32) // 2
        expected = np.asarray(resized.crop((left, top, left + 32, top + 32)))
    ours = data.images[data.names.index(name)].permute(1, 2, 0).numpy()
    assert np.abs(ours.astype(int) - expected.astype(int)).mean() < 8


def test_cache_gives_identical_tensors_and_tracks_file_changes(tmp_path):
    root = make_imagefolder(tmp_path / "d", per_class=4)
    cache = tmp_path / "cache"
    first = load_dataset(str(root), 32, cache_dir=cache)
    assert len(list(cache.iterdir())) == 1
    second = load_dataset(str(root), 32, cache_dir=cache)
    assert torch.equal(first.images, second.images) and first.names == second.names
    # a new file changes the fingerprint, so the cache is not reused
    make_imagefolder(tmp_path / "d", per_class=5)
    third = load_dataset(str(root), 32, cache_dir=cache)
    assert third.images.shape[0] == 15 and third.source["fingerprint"] != first.source["fingerprint"]


def test_bad_images_fail_or_are_skipped_with_a_count(tmp_path):
    root = make_imagefolder(tmp_path / "d", per_class=4)
    (root / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(StpError, match="does not decode"):
        load_dataset(str(root), 32, cache_dir=tmp_path / "c")
    data = load_dataset(str(root), 32, on_bad_image="skip", cache_dir=tmp_path / "c")
    assert data.skipped == [f"{CLASSES[0]}/broken.jpg"] and data.images.shape[0] == 12


def test_folder_errors(tmp_path):
    with pytest.raises(StpError, match="does not exist"):
        load_dataset(str(tmp_path / "nope"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StpError, match="no class folders"):
        load_dataset(str(tmp_path / "empty"), 32)
    root = make_imagefolder(tmp_path / "d", per_class=3)
    (root / "ghost").mkdir()
    with pytest.raises(StpError, match="has no images"):
        load_dataset(str(root), 32)


def test_split_is_stratified_deterministic_and_disjoint():
    names = [f"c{c}/{i}.png" for c in range(3) for i in range(20)]
    labels = [c for c in range(3) for _ in range(20)]
    a = stratified_split(names, labels, ["a", "b", "c"], 0.8, 0.25, seed=7)
    b = stratified_split(names, labels, ["a", "b", "c"], 0.8, 0.25, seed=7)
    c = stratified_split(names, labels, ["a", "b", "c"], 0.8, 0.25, seed=8)
    assert a == b and a["files"] != c["files"]
    files = a["files"]
    assert set(files["train"]).isdisjoint(files["test"]) and set(files["val"]).isdisjoint(files["test"])
    assert set(files["train"]).isdisjoint(files["val"])
    assert sorted(files["train"] + files["val"] + files["test"]) == sorted(names)
    for cls in range(3):
        assert sum(n.startswith(f"c{cls}/") for n in files["test"]) == 4  # 20 % of 20, per class
        assert sum(n.startswith(f"c{cls}/") for n in files["val"]) == 4  # 25 % of the 16 training images
    check_split(a)
    leaky = {**a, "files": {**files, "test": files["test"] + files["train"][:1]}}
    from stpcli.data.split import split_hash

    leaky["sha256"] = split_hash(leaky["files"])
    with pytest.raises(StpError, match="training image"):
        check_split(leaky)
    with pytest.raises(StpError, match="does not match its hash"):
        check_split({**a, "sha256": "0" * 64})
    for ratio in (0.0, 1.0, 1.5):
        with pytest.raises(StpError, match="train-ratio"):
            stratified_split(names, labels, ["a", "b", "c"], ratio, 0.1, 0)


def test_pack_round_trip_keeps_names_labels_fingerprint(tmp_path, dataset_dir):
    data = load_dataset(str(dataset_dir), 32, cache_dir=tmp_path / "c")
    out = tmp_path / "pack.safetensors"
    write_pack(data.images, data.labels, data.names, data.classes, data.source | {"skipped": []}, out, quality=95)
    images, labels, names, classes, source = read_pack(out, 32)
    assert names == data.names and classes == data.classes and torch.equal(labels, data.labels)
    assert (images.float() - data.images.float()).abs().mean() < 8  # JPEG q95 on noisy images
    loaded = load_dataset(str(out), 32)
    assert loaded.source["fingerprint"] == data.source["fingerprint"] and loaded.source["kind"] == "pack"
    with pytest.raises(StpError, match="packed at 32"):
        load_dataset(str(out), 64)


def test_info_describes_a_pack_and_the_stages_refuse_it_in_one_line(tmp_path, dataset_dir):
    out = tmp_path / "pack.safetensors"
    run_cli(["data", "pack", dataset_dir, "--image-size", "32", "--out", out])
    described = run_cli(["info", out]).output
    assert "an stp data pack: 36 images of 3 classes at 32 px" in described
    for command in (["convert", out, "--out", tmp_path / "x.safetensors"], ["evaluate", out]):
        refusal = run_cli(command, expect=2).output
        assert "is an stp data pack" in refusal and "pass it as --data" in refusal and "Traceback" not in refusal
    assert not (tmp_path / "x.safetensors").exists()


def test_synthetic_dataset_is_deterministic_and_balanced():
    a = synthetic.generate(32, per_class=5)
    b = synthetic.generate(32, per_class=5)
    assert torch.equal(a[0], b[0]) and a[2] == b[2]
    assert torch.bincount(a[1]).tolist() == [5] * len(synthetic.CLASSES)
    # classes differ on average (the task is learnable)
    means = torch.stack([a[0][a[1] == c].float().mean((0, 2, 3)) for c in range(len(synthetic.CLASSES))])
    assert torch.cdist(means, means).fill_diagonal_(1e9).min() > 1.0


def test_augmentation_is_seeded_and_preserves_shape():
    x = torch.rand(6, 3, 16, 16)
    a = augment(x, epoch_generator(3, 1, torch.device("cpu")))
    b = augment(x, epoch_generator(3, 1, torch.device("cpu")))
    c = augment(x, epoch_generator(3, 2, torch.device("cpu")))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_a_pure_90_degree_rotation_or_flip_is_exact():
    # with the crop at full size, each draw is one of the 8 symmetries of the square
    import stpcli.data.loader as loader

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    old = loader.CROP_SCALE
    loader.CROP_SCALE = (1.0, 1.0)
    try:
        loader_ratio = loader.CROP_RATIO
        loader.CROP_RATIO = (1.0, 1.0)
        out = augment(x, epoch_generator(0, 0, torch.device("cpu")))
    finally:
        loader.CROP_SCALE, loader.CROP_RATIO = old, loader_ratio
    symmetries = [torch.rot90(v, k, (1, 2)) for k in range(4) for v in (x[0], x[0].flip(2))]
    assert any(torch.allclose(out[0], s, atol=1e-4) for s in symmetries)


def test_batches_cover_the_data_once_and_shard_across_ranks():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.arange(10)
    stats = InputStats(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1))
    seen = torch.cat([y for _, y in iterate_batches(images, labels, 4, stats)])
    assert seen.tolist() == list(range(10))
    shards = [torch.cat([y for _, y in iterate_batches(images, labels, 4, stats, rank=r, world_size=2)])
              for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(10)) and set(shards[0].tolist()).isdisjoint(shards[1].tolist())
