"""densenet_opt.data on tiny image folders built here (no ImageNet, no network)."""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from densenet_opt import data
from densenet_opt.accuracy import ACCURACY, fidelity
from densenet_opt.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalSet,
    eval_transform,
    load_eval_set,
    load_imagenet_subset,
)
from densenet_opt.errors import UserError

# Created in this (unsorted) order so that a mapping by creation order would be caught.
WNIDS = ["n02102040", "n01440764", "n03000684"]
SORTED_WNIDS = sorted(WNIDS)
# Their torchvision class indices (positions in the sorted 1000 ILSVRC2012 wnids),
# pinned here rather than computed from the list under test.
CLASS_INDEX = {"n01440764": 0, "n02102040": 217, "n03000684": 491}
# Per-class image counts (unequal, to exercise the round-robin tail).
COUNTS = {"n01440764": 2, "n02102040": 3, "n03000684": 4}
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
            mode = {(0, "n01440764"): "L", (1, "n02102040"): "CMYK"}.get((k, wnid), "RGB")
            _write_image(path, seed, SIZES[seed % len(SIZES)], mode)
            seed += 1
            paths.append(path)
        files[wnid] = sorted(paths)
    (root / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    (root / "n03000684" / "notes.txt").write_text("not an image")  # non-images are ignored
    return root, files


def _round_robin_paths(files: dict[str, list[Path]]) -> list[tuple[Path, int]]:
    out = []
    for rnd in range(max(len(v) for v in files.values())):
        for wnid in SORTED_WNIDS:
            if rnd < len(files[wnid]):
                out.append((files[wnid][rnd], CLASS_INDEX[wnid]))
    return out


# --- ImageFolder layout --------------------------------------------------------


def test_image_folder_shapes_labels_and_pixels(image_folder):
    root, files = image_folder
    ev = load_imagenet_subset(root, 9)
    assert isinstance(ev, EvalSet)
    assert ev.images.shape == (9, 3, 224, 224) and ev.images.dtype == torch.float32
    assert ev.labels is not None and ev.labels.dtype == torch.int64
    expected = _round_robin_paths(files)
    assert ev.labels.tolist() == [label for _, label in expected] == [0, 217, 491, 0, 217, 491, 217, 491, 491]
    # Each row is exactly the standard transform of the file the order predicts.
    for row, (path, _) in zip(ev.images, expected):
        torch.testing.assert_close(row, _reference(path))
    assert str(root) in ev.source and "9 samples" in ev.source


def test_grayscale_and_cmyk_become_rgb(image_folder):
    root, files = image_folder
    ev = load_imagenet_subset(root, 9)
    gray = files["n01440764"][0]
    with Image.open(gray) as g, Image.open(files["n02102040"][1]) as c:
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
    (root / "n01440764").mkdir(parents=True)
    # PNG keeps the colour exact; resize/crop of a solid image keeps it too.
    Image.new("RGB", (320, 240), (255, 0, 128)).save(root / "n01440764" / "a.png")
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
    assert sorted(ev.labels.tolist()) == [0, 217, 491]


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


def test_a_few_classes_load_without_any_warning(image_folder):
    root, _ = image_folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_imagenet_subset(root, 3).labels.tolist() == [0, 217, 491]


def test_progress_callback(image_folder, monkeypatch):
    root, _ = image_folder
    monkeypatch.setattr(data, "PROGRESS_EVERY", 2)
    messages: list[str] = []
    load_imagenet_subset(root, 5, progress=messages.append)
    assert [m.split()[1] for m in messages] == ["2/5", "4/5", "5/5"]


# --- Flat ILSVRC2012 val layout -------------------------------------------------

# Image i (1-based) of the flat val folder -> its wnid.
FLAT_WNIDS = ["n03000684", "n01440764", "n02102040", "n01440764", "n03000684", "n02102040"]


def _flat_val(tmp_path: Path) -> Path:
    val = tmp_path / "val"
    for i, _ in enumerate(FLAT_WNIDS, start=1):
        mode = "L" if i == 2 else "RGB"
        _write_image(val / f"ILSVRC2012_val_{i:08d}.JPEG", 100 + i, SIZES[i % len(SIZES)], mode)
    return val


def _expected_flat_labels(order: list[int]) -> list[int]:
    return [CLASS_INDEX[FLAT_WNIDS[i - 1]] for i in order]


# Round-robin over classes 0, 217, 491 with files sorted: 0={2,4}, 217={3,6}, 491={1,5}.
FLAT_ORDER = [2, 3, 1, 4, 6, 5]


def _write_lines(path: Path, lines: list[str], spreadsheet: bool = False) -> None:
    """spreadsheet=True writes what a spreadsheet's "CSV UTF-8" does: a byte-order mark and CRLF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if spreadsheet:
        path.write_bytes(b"\xef\xbb\xbf" + "".join(f"{line}\r\n" for line in lines).encode())
    else:
        path.write_text("".join(f"{line}\n" for line in lines))


def _write_kaggle_csv(path: Path, wnids: list[str] = FLAT_WNIDS, spreadsheet: bool = False) -> None:
    lines = ["ImageId,PredictionString"]
    for i, wnid in enumerate(wnids, start=1):
        lines.append(f"ILSVRC2012_val_{i:08d},{wnid} 10 20 30 40 {wnid} 1 2 3 4 ")
    _write_lines(path, lines, spreadsheet)


def test_flat_with_kaggle_csv_autodetected_in_parent(tmp_path):
    val = _flat_val(tmp_path)
    _write_kaggle_csv(tmp_path / "LOC_val_solution.csv")
    ev = load_imagenet_subset(val, 6)
    assert ev.labels.tolist() == _expected_flat_labels(FLAT_ORDER) == [0, 217, 491, 0, 217, 491]
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


# Devkit ILSVRC2012_IDs are deliberately not in sorted-wnid order, and one
# non-leaf synset (num_children > 0) must be ignored.
DEVKIT_SYNSETS = [(1, "n03000684", 0), (2, "n01440764", 0), (3, "n02102040", 0), (4, "n00001740", 3)]


def _write_devkit(
    devkit: Path,
    synsets: list[tuple[int, str, int]] = DEVKIT_SYNSETS,
    wnids: list[str] = FLAT_WNIDS,
    spreadsheet: bool = False,
) -> None:
    """meta.mat listing `synsets` (ILSVRC2012_ID, wnid, num_children) and a ground truth for flat images `wnids`."""
    from scipy.io import savemat

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    records = np.array(
        [(np.uint16(i), wnid, f"class {wnid}", np.uint16(c)) for i, wnid, c in synsets], dtype=dtype
    )
    (devkit / "data").mkdir(parents=True)
    savemat(devkit / "data" / "meta.mat", {"synsets": records.reshape(-1, 1)})
    id_of = {wnid: i for i, wnid, _ in synsets}
    _write_lines(devkit / "data" / "ILSVRC2012_validation_ground_truth.txt", [str(id_of[w]) for w in wnids], spreadsheet)


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
    # A meta.mat of 3 leaf synsets maps through the canonical list, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_imagenet_subset(val, 6).labels.tolist() == expected == [0, 217, 491, 0, 217, 491]


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


# --- Canonical class indices for any subset of the 1000 classes ---------------------

# Ten ILSVRC2012 classes -> torchvision class index, pinned (not computed from the list under test).
TEN_CLASSES = {
    "n01440764": 0,
    "n02102040": 217,
    "n02979186": 482,
    "n03000684": 491,
    "n03028079": 497,
    "n03394916": 566,
    "n03417042": 569,
    "n03425413": 571,
    "n03445777": 574,
    "n03888257": 701,
}
TEN_LABELS = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
# Flat val image i (1-based) -> its wnid: not in class order, so a mapping by position is caught.
TEN_FLAT_WNIDS = ["n03417042", "n02102040", "n03888257", "n01440764", "n03028079",
                  "n02979186", "n03445777", "n03000684", "n03425413", "n03394916"]


def _assert_one_sentence(exc: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message and message.endswith(".") and ". " not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_canonical_wnid_list():
    wnids = data.imagenet_wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141" and wnids[217] == "n02102040"
    assert {wnid: data.imagenet_class_index(wnid, "test") for wnid in TEN_CLASSES} == TEN_CLASSES


@pytest.fixture
def ten_class_folder(tmp_path: Path) -> Path:
    """ImageFolder with ten of the 1000 synset folders, one image each."""
    root = tmp_path / "ten"
    for seed, wnid in enumerate(TEN_FLAT_WNIDS):
        _write_image(root / wnid / f"{wnid}_1.JPEG", 200 + seed, (64, 48))
    return root


def test_image_folder_subset_gets_canonical_labels(ten_class_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = load_imagenet_subset(ten_class_folder, 10)
    assert ev.labels.tolist() == [TEN_CLASSES[w] for w in sorted(TEN_CLASSES)] == TEN_LABELS
    for row, wnid in zip(ev.images, sorted(TEN_CLASSES)):
        torch.testing.assert_close(row, _reference(ten_class_folder / wnid / f"{wnid}_1.JPEG"))


@pytest.mark.parametrize("layout", ["kaggle", "devkit"])
def test_flat_subset_gets_canonical_labels(tmp_path, layout):
    """A ground truth that lists only the ten images present (and, for the devkit, a meta.mat of only their ten
    classes, ILSVRC2012_IDs in non-sorted order) labels them as the full set would."""
    if layout == "devkit":
        pytest.importorskip("scipy", reason="scipy is not installed: the devkit meta.mat path cannot be tested")
        synsets = [(k, wnid, 0) for k, wnid in enumerate(reversed(TEN_FLAT_WNIDS), start=1)]
        _write_devkit(tmp_path / "ILSVRC2012_devkit_t12", synsets, TEN_FLAT_WNIDS)
    else:
        _write_kaggle_csv(tmp_path / "LOC_val_solution.csv", TEN_FLAT_WNIDS)
    val = tmp_path / "val"
    for i in range(1, len(TEN_FLAT_WNIDS) + 1):
        _write_image(val / f"ILSVRC2012_val_{i:08d}.JPEG", 300 + i, (48, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = load_imagenet_subset(val, 10)
    assert ev.labels.tolist() == TEN_LABELS
    for row, wnid in zip(ev.images, sorted(TEN_CLASSES)):
        i = TEN_FLAT_WNIDS.index(wnid) + 1
        torch.testing.assert_close(row, _reference(val / f"ILSVRC2012_val_{i:08d}.JPEG"))


def test_accuracy_on_a_class_subset(ten_class_folder):
    # Trained weights that always pick class 217 (n02102040) are right on exactly one of the ten images.
    labels = load_imagenet_subset(ten_class_folder, 10).labels
    logits = torch.zeros(10, 1000)
    logits[:, 217] = 1.0
    result = fidelity(logits, logits.clone(), labels)
    assert result.kind == ACCURACY and result.top1 == pytest.approx(10.0)


def test_unknown_wnid_folder_is_one_sentence(tmp_path):
    _write_image(tmp_path / "n01440764" / "a.JPEG", 1, (64, 64))
    _write_image(tmp_path / "n99999999" / "b.JPEG", 2, (64, 64))
    with pytest.raises(UserError) as exc:
        load_imagenet_subset(tmp_path, 1)
    _assert_one_sentence(exc, str(tmp_path / "n99999999"), "wnid n99999999", "not one of the 1000", "remove that folder")


def test_unknown_wnid_in_kaggle_csv_is_one_sentence(tmp_path):
    val = _flat_val(tmp_path)
    csv_path = tmp_path / "LOC_val_solution.csv"
    _write_kaggle_csv(csv_path, FLAT_WNIDS[:2] + ["n99999999"] + FLAT_WNIDS[3:])
    with pytest.raises(UserError) as exc:
        load_imagenet_subset(val, 1)
    _assert_one_sentence(exc, str(csv_path), "ILSVRC2012_val_00000003", "wnid n99999999", "not one of the 1000")


def test_unknown_wnid_in_devkit_meta_is_one_sentence(tmp_path):
    pytest.importorskip("scipy", reason="scipy is not installed: the devkit meta.mat path cannot be tested")
    val = _flat_val(tmp_path)
    devkit = tmp_path / "ILSVRC2012_devkit_t12"
    _write_devkit(devkit, DEVKIT_SYNSETS + [(5, "n99999999", 0)])
    with pytest.raises(UserError) as exc:
        load_imagenet_subset(val, 1)
    _assert_one_sentence(exc, str(devkit / "data" / "meta.mat"), "wnid n99999999", "not one of the 1000")


# --- Ground truth saved by a spreadsheet: byte-order mark, CRLF -------------------------


def test_kaggle_csv_with_bom_and_crlf(tmp_path):
    val = _flat_val(tmp_path)
    _write_kaggle_csv(tmp_path / "LOC_val_solution.csv", spreadsheet=True)
    assert (tmp_path / "LOC_val_solution.csv").read_bytes().startswith(b"\xef\xbb\xbfImageId,")
    assert load_imagenet_subset(val, 6).labels.tolist() == _expected_flat_labels(FLAT_ORDER)


def test_devkit_ground_truth_with_bom_and_crlf(tmp_path):
    pytest.importorskip("scipy", reason="scipy is not installed: the devkit meta.mat path cannot be tested")
    val = _flat_val(tmp_path)
    _write_devkit(tmp_path / "ILSVRC2012_devkit_t12", spreadsheet=True)
    assert load_imagenet_subset(val, 6).labels.tolist() == _expected_flat_labels(FLAT_ORDER)


def test_ground_truth_that_is_not_utf8_is_one_sentence(tmp_path):
    val = _flat_val(tmp_path)
    csv_path = tmp_path / "LOC_val_solution.csv"
    csv_path.write_text("ImageId,PredictionString\n", encoding="utf-16")
    with pytest.raises(UserError) as exc:
        load_imagenet_subset(val, 1)
    _assert_one_sentence(exc, str(csv_path), "is not UTF-8 text")


# --- User errors ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_names_the_file(image_folder, kind):
    root, files = image_folder
    bad = files["n01440764"][0]  # first in the round-robin order
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
    (tmp_path / "n01440764").mkdir()
    with pytest.raises(UserError, match="contain no images"):
        load_imagenet_subset(tmp_path, 1)


def test_loose_images_without_ground_truth(tmp_path):
    val = _flat_val(tmp_path)
    with pytest.raises(UserError, match="no ground-truth file"):
        load_imagenet_subset(val, 1)


def test_non_wnid_folders(tmp_path):
    for name in ("n01440764", "train", "val"):
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
    assert ev.images.shape == (3, 3, 224, 224) and ev.label_kind == "synthetic_pseudo_classes"
    assert ev.source == "synthetic seed=7 (3 samples, skip 5)"


@pytest.mark.skipif(
    importlib.util.find_spec("densenet_opt.synthetic") is None, reason="densenet_opt/synthetic.py not written yet"
)
def test_load_eval_set_synthetic_real():
    a = load_eval_set(None, 2, seed=0)
    b = load_eval_set(None, 2, seed=0)
    c = load_eval_set(None, 2, skip=2, seed=0)
    assert a.images.shape == (2, 3, 224, 224) and a.images.dtype == torch.float32
    assert a.source == "synthetic seed=0 (2 samples)"
    assert a.label_kind == "synthetic_pseudo_classes"
    assert a.labels.tolist() == [0, 1] and c.labels.tolist() == [2, 3]  # image i's pseudo-class: i % 1000
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
