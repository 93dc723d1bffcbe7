"""densenet_opt.data on tiny image folders built here (no ImageNet, no network)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenet_opt import data
from densenet_opt.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalSet,
    eval_transform,
    load_eval_set,
    load_imagenet_subset,
)
from densenet_opt.errors import UserError

# Tiny test sets are never 1000 classes; the warning has its own test.
pytestmark = pytest.mark.filterwarnings("ignore:.*not 1000:UserWarning")

# Created in this (unsorted) order so that a mapping by creation order would be caught.
WNIDS = ["n02000000", "n01000000", "n03000000"]
SORTED_WNIDS = sorted(WNIDS)
# Per-class image counts (unequal, to exercise the round-robin tail).
COUNTS = {"n01000000": 2, "n02000000": 3, "n03000000": 4}
SIZES = [(300, 260), (180, 400), (256, 256), (500, 333)]


def _write_image(path: Path, seed: int, size: tuple[int, int], mode: str = "RGB") -> None:
    """A unique noise image, so decoded samples can be told apart."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="JPEG", quality=90)


def _reference(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return eval_transform()(img.convert("RGB"))


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, list[Path]]]:
    """3 synset folders with 2/3/4 JPEGs of mixed sizes, one grayscale and one CMYK."""
    root = tmp_path / "val"
    files: dict[str, list[Path]] = {}
    seed = 0
    for wnid in WNIDS:
        paths = []
        # Names written in reverse so sorting within a class is exercised.
        for k in reversed(range(COUNTS[wnid])):
            path = root / wnid / f"img_{k}.JPEG"
            mode = {(0, "n01000000"): "L", (1, "n02000000"): "CMYK"}.get((k, wnid), "RGB")
            _write_image(path, seed, SIZES[seed % len(SIZES)], mode)
            seed += 1
            paths.append(path)
        files[wnid] = sorted(paths)
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (root / "n03000000" / "notes.txt").write_text("not an image")  # non-images are ignored
    return root, files


def _round_robin_paths(files: dict[str, list[Path]]) -> list[tuple[Path, int]]:
    out = []
    for rnd in range(max(len(v) for v in files.values())):
        for label, wnid in enumerate(SORTED_WNIDS):
            if rnd < len(files[wnid]):
                out.append((files[wnid][rnd], label))
    return out


# --- ImageFolder layout --------------------------------------------------------


def test_image_folder_shapes_labels_and_pixels(image_folder):
    root, files = image_folder
    ev = load_imagenet_subset(root, 9)
    assert isinstance(ev, EvalSet)
    assert ev.images.shape == (9, 3, 224, 224) and ev.images.dtype == torch.float32
    assert ev.labels is not None and ev.labels.dtype == torch.int64
    expected = _round_robin_paths(files)
    assert ev.labels.tolist() == [label for _, label in expected] == [0, 1, 2, 0, 1, 2, 1, 2, 2]
    # Each row is exactly the standard transform of the file the order predicts.
    for row, (path, _) in zip(ev.images, expected):
        torch.testing.assert_close(row, _reference(path))
    assert str(root) in ev.source and "9 samples" in ev.source


def test_grayscale_and_cmyk_become_rgb(image_folder):
    root, files = image_folder
    ev = load_imagenet_subset(root, 9)
    gray = files["n01000000"][0]
    with Image.open(gray) as g, Image.open(files["n02000000"][1]) as c:
        assert (g.mode, c.mode) == ("L", "CMYK")
    row = [p for p, _ in _round_robin_paths(files)].index(gray)
    # A grayscale image in RGB has equal channels before normalisation.
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    unnorm = ev.images[row] * std + mean
    torch.testing.assert_close(unnorm[0], unnorm[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(unnorm[1], unnorm[2], atol=1e-5, rtol=0)


def test_normalisation_of_solid_colour(tmp_path):
    root = tmp_path / "val"
    (root / "n01000000").mkdir(parents=True)
    # PNG keeps the colour exact; resize/crop of a solid image keeps it too.
    Image.new("RGB", (320, 240), (255, 0, 128)).save(root / "n01000000" / "a.png")
    ev = load_imagenet_subset(root, 1)
    rgb = torch.tensor([1.0, 0.0, 128 / 255])
    expected = (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(ev.images[0].mean(dim=(1, 2)), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(ev.images[0].std(dim=(1, 2)), torch.zeros(3), atol=1e-4, rtol=0)


def test_deterministic(image_folder):
    root, _ = image_folder
    a = load_imagenet_subset(root, 5)
    b = load_imagenet_subset(root, 5)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_first_k_samples_cover_k_classes(image_folder):
    root, _ = image_folder
    ev = load_imagenet_subset(root, 3)
    assert sorted(ev.labels.tolist()) == [0, 1, 2]


def test_skip_gives_disjoint_continuation(image_folder):
    root, _ = image_folder
    full = load_imagenet_subset(root, 9)
    head = load_imagenet_subset(root, 4)
    tail = load_imagenet_subset(root, 5, skip=4)
    assert torch.equal(torch.cat([head.images, tail.images]), full.images)
    assert torch.equal(torch.cat([head.labels, tail.labels]), full.labels)
    for a in head.images:
        assert not any(torch.equal(a, b) for b in tail.images)
    assert "skip 4" in tail.source


def test_warns_when_not_1000_classes(image_folder):
    root, _ = image_folder
    with pytest.warns(UserWarning, match="3 synset folders, not 1000"):
        load_imagenet_subset(root, 1)


def test_progress_callback(image_folder, monkeypatch):
    root, _ = image_folder
    monkeypatch.setattr(data, "PROGRESS_EVERY", 2)
    messages: list[str] = []
    load_imagenet_subset(root, 5, progress=messages.append)
    assert [m.split()[1] for m in messages] == ["2/5", "4/5", "5/5"]


# --- Flat ILSVRC2012 val layout -------------------------------------------------

# Image i (1-based) of the flat val folder -> its wnid.
FLAT_WNIDS = ["n03000000", "n01000000", "n02000000", "n01000000", "n03000000", "n02000000"]


def _flat_val(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    for i, _ in enumerate(FLAT_WNIDS, start=1):
        mode = "L" if i == 2 else "RGB"
        _write_image(val / f"ILSVRC2012_val_{i:08d}.JPEG", 100 + i, SIZES[i % len(SIZES)], mode)
    return val


def _expected_flat_labels(order: list[int]) -> list[int]:
    return [SORTED_WNIDS.index(FLAT_WNIDS[i - 1]) for i in order]


# Round-robin over classes 0,1,2 with files sorted: class0={2,4}, class1={3,6}, class2={1,5}.
FLAT_ORDER = [2, 3, 1, 4, 6, 5]


def _write_kaggle_csv(path: Path) -> None:
    lines = ["ImageId,PredictionString"]
    for i, wnid in enumerate(FLAT_WNIDS, start=1):
        lines.append(f"ILSVRC2012_val_{i:08d},{wnid} 10 20 30 40 {wnid} 1 2 3 4 ")
    path.write_text("\n".join(lines) + "\n")


def test_flat_with_kaggle_csv_autodetected_in_parent(tmp_path):
    val = _flat_val(tmp_path)
    _write_kaggle_csv(tmp_path / "LOC_val_solution.csv")
    ev = load_imagenet_subset(val, 6)
    assert ev.labels.tolist() == _expected_flat_labels(FLAT_ORDER) == [0, 1, 2, 0, 1, 2]
    for row, i in zip(ev.images, FLAT_ORDER):
        torch.testing.assert_close(row, _reference(val / f"ILSVRC2012_val_{i:08d}.JPEG"))


def test_flat_with_explicit_kaggle_csv_and_kaggle_tree(tmp_path):
    # Kaggle's tree: <root>/LOC_val_solution.csv beside <root>/ILSVRC/Data/CLS-LOC/val.
    kaggle = tmp_path / "imagenet-object-localization-challenge"
    val = _flat_val(kaggle / "ILSVRC" / "Data" / "CLS-LOC")
    _write_kaggle_csv(kaggle / "LOC_val_solution.csv")
    auto = load_imagenet_subset(val, 6)
    explicit = load_imagenet_subset(val, 6, ground_truth=kaggle / "LOC_val_solution.csv")
    assert auto.labels.tolist() == explicit.labels.tolist() == _expected_flat_labels(FLAT_ORDER)


def test_flat_image_missing_from_ground_truth(tmp_path):
    val = _flat_val(tmp_path)
    _write_image(val / "ILSVRC2012_val_00000099.JPEG", 7, (64, 64))
    _write_kaggle_csv(tmp_path / "LOC_val_solution.csv")
    with pytest.raises(UserError, match="ILSVRC2012_val_00000099.JPEG has no entry"):
        load_imagenet_subset(val, 1)


def _write_devkit(devkit: Path) -> None:
    from scipy.io import savemat

    # Devkit ILSVRC2012_IDs are deliberately not in sorted-wnid order, and one
    # non-leaf synset (num_children > 0) must be ignored.
    synsets = [(1, "n03000000", 0), (2, "n01000000", 0), (3, "n02000000", 0), (4, "n00001740", 3)]
    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    records = np.array(
        [(np.uint16(i), wnid, f"class {wnid}", np.uint16(c)) for i, wnid, c in synsets], dtype=dtype
    )
    (devkit / "data").mkdir(parents=True)
    savemat(devkit / "data" / "meta.mat", {"synsets": records.reshape(-1, 1)})
    id_of = {wnid: i for i, wnid, _ in synsets}
    (devkit / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text(
        "".join(f"{id_of[w]}\n" for w in FLAT_WNIDS)
    )


def test_flat_with_devkit_ground_truth(tmp_path):
    pytest.importorskip("scipy", reason="scipy is not installed: the devkit meta.mat path cannot be tested")
    val = _flat_val(tmp_path)
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    _write_devkit(devkit)
    expected = _expected_flat_labels(FLAT_ORDER)
    assert load_imagenet_subset(val, 6).labels.tolist() == expected  # auto-detected
    txt = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    assert load_imagenet_subset(val, 6, ground_truth=txt).labels.tolist() == expected
    assert load_imagenet_subset(val, 6, ground_truth=devkit).labels.tolist() == expected
    with pytest.warns(UserWarning, match="3 leaf synsets, not 1000"):
        load_imagenet_subset(val, 1)


def test_devkit_without_scipy_is_a_user_error(tmp_path, monkeypatch):
    val = _flat_val(tmp_path)
    data_dir = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data_dir.mkdir(parents=True)
    (data_dir / "meta.mat").write_bytes(b"unused")
    (data_dir / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n" * len(FLAT_WNIDS))
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(UserError, match="needs scipy"):
        load_imagenet_subset(val, 1)


def test_devkit_ground_truth_without_meta(tmp_path):
    val = _flat_val(tmp_path)
    gt = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    gt.write_text("1\n" * len(FLAT_WNIDS))
    with pytest.raises(UserError, match="No meta.mat next to"):
        load_imagenet_subset(val, 1)


# --- User errors ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(image_folder, kind):
    root, files = image_folder
    bad = files["n01000000"][0]  # first in the round-robin order
    if kind == "garbage":
        bad.write_bytes(b"this is not a jpeg")
    else:
        bad.write_bytes(bad.read_bytes()[:400])
    with pytest.raises(UserError, match=r"img_0\.JPEG is not a readable image .*delete or replace it"):
        load_imagenet_subset(root, 3)


def test_missing_dir(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_imagenet_subset(tmp_path / "nope", 1)


def test_empty_dir(tmp_path):
    with pytest.raises(UserError, match="is empty"):
        load_imagenet_subset(tmp_path, 1)


def test_class_folders_without_images(tmp_path):
    (tmp_path / "n01000000").mkdir()
    with pytest.raises(UserError, match="contain no images"):
        load_imagenet_subset(tmp_path, 1)


def test_loose_images_without_ground_truth(tmp_path):
    val = _flat_val(tmp_path)
    with pytest.raises(UserError, match="no ground-truth file"):
        load_imagenet_subset(val, 1)


def test_non_wnid_folders(tmp_path):
    for name in ("n01000000", "train", "val"):
        (tmp_path / name).mkdir()
    with pytest.raises(UserError, match=r"not ImageNet synset ids \(train, val\)"):
        load_imagenet_subset(tmp_path, 1)


def test_num_samples_too_large_names_both_numbers(image_folder):
    root, _ = image_folder
    with pytest.raises(UserError, match="Asked for 10 samples .* only 9 usable images"):
        load_imagenet_subset(root, 10)
    with pytest.raises(UserError, match="Asked for 6 samples after skipping 4 .* only 9"):
        load_imagenet_subset(root, 6, skip=4)


@pytest.mark.parametrize("num", [0, -3])
def test_num_samples_below_one(image_folder, num):
    root, _ = image_folder
    with pytest.raises(UserError, match="num_samples must be at least 1"):
        load_imagenet_subset(root, num)
    with pytest.raises(UserError, match="num_samples must be at least 1"):
        load_eval_set(None, num)


def test_negative_skip(image_folder):
    with pytest.raises(UserError, match="skip must be 0 or more"):
        load_imagenet_subset(image_folder[0], 1, skip=-1)


# --- load_eval_set -------------------------------------------------------------


def test_load_eval_set_with_path_uses_imagenet(image_folder):
    root, _ = image_folder
    ev = load_eval_set(root, 4, skip=2)
    direct = load_imagenet_subset(root, 4, skip=2)
    assert torch.equal(ev.images, direct.images) and torch.equal(ev.labels, direct.labels)


def test_load_eval_set_synthetic_contract(monkeypatch):
    calls = []

    def fake_synthetic_images(count, seed=0, offset=0):
        calls.append((count, seed, offset))
        return torch.zeros(count, 3, 224, 224), torch.arange(count)

    # Works whether or not densenet_opt/synthetic.py exists yet.
    fake = types.ModuleType("densenet_opt.synthetic")
    fake.synthetic_images = fake_synthetic_images
    monkeypatch.setitem(sys.modules, "densenet_opt.synthetic", fake)
    ev = load_eval_set(None, 3, skip=5, seed=7)
    assert calls == [(3, 7, 5)]
    assert ev.labels is None and ev.images.shape == (3, 3, 224, 224)
    assert ev.source == "synthetic seed=7 (3 samples, skip 5)"


@pytest.mark.skipif(
    importlib.util.find_spec("densenet_opt.synthetic") is None, reason="densenet_opt/synthetic.py not written yet"
)
def test_load_eval_set_synthetic_real():
    a = load_eval_set(None, 2, seed=0)
    b = load_eval_set(None, 2, seed=0)
    c = load_eval_set(None, 2, skip=2, seed=0)
    assert a.images.shape == (2, 3, 224, 224) and a.images.dtype == torch.float32
    assert a.labels is None and a.source == "synthetic seed=0 (2 samples)"
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
