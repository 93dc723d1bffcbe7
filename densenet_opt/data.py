"""Evaluation images: a deterministic ImageNet-val subset, or synthetic images.

Two on-disk layouts are accepted because users have one or the other:

* ImageFolder: one folder per synset (``n01440764/*.JPEG``), as torchvision's
  ImageFolder and most "val prep" scripts leave it.
* Flat ILSVRC2012 val (``ILSVRC2012_val_00000001.JPEG`` ...) plus a ground
  truth: Kaggle's ``LOC_val_solution.csv`` or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (+ ``meta.mat``).

Labels are torchvision class indices: the position of the wnid in the sorted
list of the 1000 ImageNet wnids.  All decoding happens here, before any timed
region, and the result is one stacked tensor.
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from densenet_opt.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGENET_NUM_CLASSES = 1000
PROGRESS_EVERY = 256

# Same list torchvision's ImageFolder accepts.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

WNID_RE = re.compile(r"^n\d{8}$")
FLAT_VAL_RE = re.compile(r"^ILSVRC2012_val_(\d{8})$")

KAGGLE_SOLUTION = "LOC_val_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
DEVKIT_DIR = "ILSVRC2012_devkit_t12"

EXPECTED_LAYOUT = (
    "a folder of ImageNet synset folders (n01440764/*.JPEG ...), or the flat ILSVRC2012 val folder "
    f"(ILSVRC2012_val_00000001.JPEG ...) with {KAGGLE_SOLUTION} or the devkit's {DEVKIT_GROUND_TRUTH}"
)


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor  # float32 [N,3,224,224], normalised
    labels: torch.Tensor | None  # int64 [N] torchvision class indices; None for synthetic images
    source: str  # human-readable description for reports


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def eval_transform() -> Callable:
    """torchvision's standard ImageNet eval preprocessing for a PIL RGB image."""
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )


def load_eval_set(
    imagenet_val: Path | None,
    num_samples: int,
    *,
    skip: int = 0,
    seed: int = 0,
    ground_truth: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalSet:
    """ImageNet-val subset when a path is given, otherwise synthetic images."""
    if imagenet_val is not None:
        return load_imagenet_subset(
            Path(imagenet_val), num_samples, skip=skip, ground_truth=ground_truth, progress=progress
        )
    _check_counts(num_samples, skip)
    # Imported lazily: synthetic.py is optional for callers that only use real data.
    from densenet_opt.synthetic import synthetic_images

    images, _pseudo_labels = synthetic_images(num_samples, seed=seed, offset=skip)
    # Accuracy on synthetic images is agreement with the fp32 reference, so no labels.
    source = f"synthetic seed={seed} ({num_samples} samples" + (f", skip {skip})" if skip else ")")
    return EvalSet(images=images, labels=None, source=source)


def load_imagenet_subset(
    root: Path,
    num_samples: int = 1024,
    *,
    skip: int = 0,
    ground_truth: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> EvalSet:
    """Decode samples [skip, skip+num_samples) of a deterministic class-round-robin order."""
    root = Path(root).expanduser()
    chosen = select_samples(root, num_samples, skip=skip, ground_truth=ground_truth)
    images = _decode(chosen, progress, root)
    labels = torch.tensor([s.label for s in chosen], dtype=torch.int64)
    source = f"imagenet-val {root} ({num_samples} samples" + (f", skip {skip})" if skip else ")")
    return EvalSet(images=images, labels=labels, source=source)


def select_samples(
    root: Path, num_samples: int, *, skip: int = 0, ground_truth: Path | None = None
) -> list[Sample]:
    """Samples [skip, skip+num_samples) of the deterministic order, without decoding any:
    cheap enough to check a data set before a long run starts."""
    _check_counts(num_samples, skip)
    root = Path(root).expanduser()
    samples = _round_robin(_list_samples(root, ground_truth))
    if skip + num_samples > len(samples):
        after_skip = f" after skipping {skip}" if skip else ""
        raise UserError(
            f"Asked for {num_samples} samples{after_skip} but {root} has only {len(samples)} usable images: "
            "lower num_samples (or skip) or point at a larger ImageNet val folder."
        )
    return samples[skip : skip + num_samples]


def _check_counts(num_samples: int, skip: int) -> None:
    if num_samples < 1:
        raise UserError(f"num_samples must be at least 1 (got {num_samples}): pass a positive sample count.")
    if skip < 0:
        raise UserError(f"skip must be 0 or more (got {skip}): pass a non-negative skip.")


# --- Listing -----------------------------------------------------------------


def _visible(entries: list[Path]) -> list[Path]:
    return [p for p in entries if not p.name.startswith(".")]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _list_samples(root: Path, ground_truth: Path | None) -> list[Sample]:
    if not root.exists():
        raise UserError(f"ImageNet val folder {root} does not exist: pass {EXPECTED_LAYOUT}.")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder: pass {EXPECTED_LAYOUT}.")
    entries = sorted(_visible(list(root.iterdir())))
    if not entries:
        raise UserError(f"ImageNet val folder {root} is empty: pass {EXPECTED_LAYOUT}.")
    loose_images = [p for p in entries if _is_image(p)]
    subdirs = [p for p in entries if p.is_dir()]

    # Loose images decide the layout: a devkit folder unpacked inside the flat
    # val folder must not make it look like ImageFolder.
    if ground_truth is not None or loose_images:
        gt = Path(ground_truth).expanduser() if ground_truth is not None else _find_ground_truth(root)
        if gt is None:
            raise UserError(
                f"{root} holds loose images but no ground-truth file was found next to it: "
                f"pass ground_truth (the path of {KAGGLE_SOLUTION}, {DEVKIT_GROUND_TRUTH} or the devkit folder) "
                "or arrange the images as one n01440764-style folder per class."
            )
        return _flat_samples(loose_images, gt, root)
    if subdirs:
        return _image_folder_samples(root, subdirs)
    raise UserError(f"{root} contains no images or class folders: pass {EXPECTED_LAYOUT}.")


def _image_folder_samples(root: Path, subdirs: list[Path]) -> list[Sample]:
    bad = [d.name for d in subdirs if not WNID_RE.match(d.name)]
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise UserError(
            f"{root} has folders that are not ImageNet synset ids ({shown}): pass {EXPECTED_LAYOUT}."
        )
    wnids = sorted(d.name for d in subdirs)
    _warn_if_partial(len(wnids), f"{root} has {len(wnids)} synset folders")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    samples = []
    for d in subdirs:
        for path in sorted(_visible(list(d.iterdir()))):
            if _is_image(path):
                samples.append(Sample(path, index[d.name]))
    if not samples:
        raise UserError(f"The synset folders in {root} contain no images: pass {EXPECTED_LAYOUT}.")
    return samples


def _warn_if_partial(num_classes: int, what: str) -> None:
    if num_classes != IMAGENET_NUM_CLASSES:
        warnings.warn(
            f"{what}, not {IMAGENET_NUM_CLASSES}: labels index the sorted wnids found, "
            "so they match torchvision class indices only for the full 1000-class set.",
            stacklevel=3,
        )


def _round_robin(samples: list[Sample]) -> list[Sample]:
    """One sample per class per round, classes in index order, files in name order.

    This spreads any prefix of the order over as many classes as possible, so a
    small num_samples still measures accuracy over many classes.
    """
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    queues = [sorted(by_class[c], key=lambda s: s.path.name) for c in sorted(by_class)]
    ordered = []
    for rnd in range(max(len(q) for q in queues)):
        ordered.extend(q[rnd] for q in queues if rnd < len(q))
    return ordered


# --- Flat ILSVRC2012 val + ground truth ---------------------------------------


def _find_ground_truth(root: Path) -> Path | None:
    places = [root, root.parent]
    # Kaggle: <challenge>/LOC_val_solution.csv beside <challenge>/ILSVRC/Data/CLS-LOC/val.
    if root.parent.name == "CLS-LOC" and len(root.parents) > 3:
        places.append(root.parents[3])
    names = [
        KAGGLE_SOLUTION,  # preferred: needs no scipy
        DEVKIT_GROUND_TRUTH,
        f"data/{DEVKIT_GROUND_TRUTH}",
        f"{DEVKIT_DIR}/data/{DEVKIT_GROUND_TRUTH}",
    ]
    for place in places:
        for name in names:
            if (place / name).is_file():
                return place / name
    return None


def _flat_samples(images: list[Path], ground_truth: Path, root: Path) -> list[Sample]:
    if not images:
        raise UserError(
            f"{root} has no loose images although a ground-truth file was given: "
            f"pass the flat val folder that holds the ILSVRC2012_val_*.JPEG files."
        )
    labels_by_stem = _read_ground_truth(ground_truth)
    samples = []
    for path in images:
        label = labels_by_stem.get(path.stem)
        if label is None:
            raise UserError(
                f"{path} has no entry in {ground_truth}: remove it or pass the ground truth that covers it."
            )
        samples.append(Sample(path, label))
    return samples


def _read_ground_truth(gt: Path) -> dict[str, int]:
    """Image stem -> torchvision class index."""
    if gt.is_dir():
        for name in (DEVKIT_GROUND_TRUTH, f"data/{DEVKIT_GROUND_TRUTH}", KAGGLE_SOLUTION):
            if (gt / name).is_file():
                return _read_ground_truth(gt / name)
        raise UserError(
            f"{gt} holds neither {KAGGLE_SOLUTION} nor the devkit's data/{DEVKIT_GROUND_TRUTH}: "
            "pass the ground-truth file itself."
        )
    if not gt.is_file():
        raise UserError(f"Ground-truth file {gt} does not exist: pass {KAGGLE_SOLUTION} or {DEVKIT_GROUND_TRUTH}.")
    if gt.suffix.lower() == ".csv":
        return _read_kaggle_solution(gt)
    return _read_devkit_ground_truth(gt)


def _read_kaggle_solution(path: Path) -> dict[str, int]:
    wnid_by_stem: dict[str, str] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise UserError(
                f"{path} lacks the ImageId,PredictionString columns: pass Kaggle's {KAGGLE_SOLUTION} unchanged."
            )
        for row in reader:
            tokens = (row["PredictionString"] or "").split()
            if not tokens or not WNID_RE.match(tokens[0]):
                raise UserError(
                    f"{path} row {row['ImageId']!r} does not start its PredictionString with a wnid: "
                    f"pass Kaggle's {KAGGLE_SOLUTION} unchanged."
                )
            wnid_by_stem[row["ImageId"]] = tokens[0]
    if not wnid_by_stem:
        raise UserError(f"{path} has no rows: pass Kaggle's {KAGGLE_SOLUTION} unchanged.")
    # The full solution file names all 1000 classes, so its sorted wnids are torchvision's.
    wnids = sorted(set(wnid_by_stem.values()))
    _warn_if_partial(len(wnids), f"{path} names {len(wnids)} classes")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    return {stem: index[wnid] for stem, wnid in wnid_by_stem.items()}


def _read_devkit_ground_truth(path: Path) -> dict[str, int]:
    meta = _find_meta(path)
    wnid_by_id = _read_meta(meta)
    # ILSVRC2012_IDs follow the devkit's own order, not torchvision's sorted wnids.
    wnids = sorted(wnid_by_id.values())
    _warn_if_partial(len(wnids), f"{meta} lists {len(wnids)} leaf synsets")
    index = {wnid: i for i, wnid in enumerate(wnids)}
    labels: dict[str, int] = {}
    for line_no, line in enumerate(path.read_text().split(), start=1):
        try:
            ilsvrc_id = int(line)
        except ValueError:
            raise UserError(
                f"{path} line {line_no} is not an ILSVRC2012_ID: pass the devkit's {DEVKIT_GROUND_TRUTH} unchanged."
            ) from None
        if ilsvrc_id not in wnid_by_id:
            raise UserError(
                f"{path} line {line_no} names ILSVRC2012_ID {ilsvrc_id}, which {meta} does not list: "
                "pass the meta.mat from the same devkit."
            )
        # Line i (1-based) is the label of ILSVRC2012_val_<i, 8 digits>.
        labels[f"ILSVRC2012_val_{line_no:08d}"] = index[wnid_by_id[ilsvrc_id]]
    if not labels:
        raise UserError(f"{path} is empty: pass the devkit's {DEVKIT_GROUND_TRUTH} unchanged.")
    return labels


def _find_meta(ground_truth: Path) -> Path:
    for place in (ground_truth.parent, ground_truth.parent / "data"):
        if (place / DEVKIT_META).is_file():
            return place / DEVKIT_META
    raise UserError(
        f"No {DEVKIT_META} next to {ground_truth}: keep the devkit's data/ folder together "
        f"(it maps ILSVRC2012_IDs to wnids) or use Kaggle's {KAGGLE_SOLUTION} instead."
    )


def _read_meta(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid for the leaf synsets (the 1000 classes)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UserError(
            f"Reading the devkit's {meta} needs scipy: pip install scipy, "
            f"or use Kaggle's {KAGGLE_SOLUTION} or an ImageFolder layout instead."
        ) from None
    import numpy as np

    try:
        synsets = np.atleast_1d(loadmat(str(meta), squeeze_me=True)["synsets"])
        fields = synsets.dtype.names or ()
        ids = [int(x) for x in synsets["ILSVRC2012_ID"]]
        wnids = [str(x) for x in synsets["WNID"]]
        # Non-leaf synsets (num_children > 0) are WordNet ancestors, not classes.
        children = [int(x) for x in synsets["num_children"]] if "num_children" in fields else [0] * len(ids)
    except Exception as exc:  # loadmat raises many types for a foreign file
        raise UserError(
            f"{meta} is not the devkit's meta.mat ({exc}): pass the meta.mat from ILSVRC2012_devkit_t12/data."
        ) from None
    return {i: w for i, w, c in zip(ids, wnids, children) if c == 0}


# --- Decoding -----------------------------------------------------------------


def _decode(samples: list[Sample], progress: Callable[[str], None] | None, root: Path) -> torch.Tensor:
    transform = eval_transform()
    # Preallocated so peak memory is one copy of the batch, not a list plus a stack.
    out = torch.empty((len(samples), 3, 224, 224), dtype=torch.float32)
    for i, sample in enumerate(samples):
        out[i] = transform(_open_rgb(sample.path))
        done = i + 1
        if progress is not None and (done % PROGRESS_EVERY == 0 or done == len(samples)):
            progress(f"decoded {done}/{len(samples)} images from {root}")
    return out


def _open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            # ImageNet val has grayscale and CMYK JPEGs; the model wants RGB.
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UserError(f"{path} is not a readable image ({exc}): delete or replace it.") from None
