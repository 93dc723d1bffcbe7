"""Evaluation images: a deterministic ImageNet-val subset, or synthetic images.

Two on-disk layouts are accepted because users have one or the other:

* ImageFolder: one folder per synset (``n01440764/*.JPEG``), as torchvision's
  ImageFolder and most "val prep" scripts leave it.
* Flat ILSVRC2012 val (``ILSVRC2012_val_00000001.JPEG`` ...) plus a ground
  truth: Kaggle's ``LOC_val_solution.csv`` or the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` (+ ``meta.mat``).

Labels are torchvision class indices: the position of the wnid in the sorted
list of the 1000 ILSVRC2012 wnids, shipped as ``imagenet_wnids.txt``.  Every
layout maps its wnids through that canonical list, so a subset of the classes
(a few synset folders, or a ground truth listing only the images present) keeps
the labels the full set would give; a wnid outside the list is a UserError.
Ground-truth files may start with a UTF-8 byte-order mark and use CRLF line
ends.  All decoding happens here, before any timed region: load_eval_set decodes
a small set into one stacked tensor (timed batches, calibration), open_eval_stream
gives the evaluation set as a stream that workers decode in chunks while accuracy
is measured, so memory does not grow with the number of images.
"""

from __future__ import annotations

import csv
import functools
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image

from densenet_opt.errors import UserError
from densenet_opt.preprocessing import IMAGE_SHAPE, IMAGENET_MEAN, IMAGENET_STD, eval_transform  # noqa: F401 - data's API

IMAGENET_NUM_CLASSES = 1000
# The 1000 ILSVRC2012 wnids, sorted, one a line: torchvision's class order.
# Taken from timm 1.0.31 (timm/data/_info/imagenet_synsets.txt, Apache-2.0).
IMAGENET_WNIDS_FILE = "imagenet_wnids.txt"
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


# What EvalSet.labels / EvalStream.labels are.
IMAGENET_LABELS = "imagenet"  # torchvision's class indices of real ImageNet images
SYNTHETIC_LABELS = "synthetic_pseudo_classes"  # the pseudo-class each synthetic image was drawn from


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor  # float32 [N,3,224,224], normalised
    labels: torch.Tensor  # int64 [N]: class indices, of the kind label_kind says
    source: str  # human-readable description for reports
    label_kind: str = IMAGENET_LABELS  # IMAGENET_LABELS or SYNTHETIC_LABELS


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


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

    images, labels = synthetic_images(num_samples, seed=seed, offset=skip)
    source = _source(f"synthetic seed={seed}", num_samples, skip)
    return EvalSet(images=images, labels=labels, source=source, label_kind=SYNTHETIC_LABELS)


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
    source = _source(f"imagenet-val {root}", num_samples, skip)
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


def count_samples(root: Path, ground_truth: Path | None = None) -> int:
    """How many usable images the data set at ``root`` has (without decoding any)."""
    return len(_list_samples(Path(root).expanduser(), ground_truth))


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
    samples = []
    for d in sorted(subdirs):
        # Any subset of the synset folders keeps the full set's labels.
        label = imagenet_class_index(d.name, f"folder {d}", "remove that folder or point at ImageNet-1k val images")
        for path in sorted(_visible(list(d.iterdir()))):
            if _is_image(path):
                samples.append(Sample(path, label))
    if not samples:
        raise UserError(f"The synset folders in {root} contain no images: pass {EXPECTED_LAYOUT}.")
    return samples


# --- Canonical class indices ---------------------------------------------------


@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC2012 wnids, sorted: wnid ``imagenet_wnids()[i]`` is torchvision class i.

    Raises UserError if the package's imagenet_wnids.txt is missing or damaged.
    """
    try:
        text = resources.files(__package__).joinpath(IMAGENET_WNIDS_FILE).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UserError(
            f"The class list {IMAGENET_WNIDS_FILE} is missing from the densenet_opt package ({exc}): "
            "reinstall densenet-opt."
        ) from None
    wnids = tuple(text.split())
    if len(set(wnids)) != IMAGENET_NUM_CLASSES or list(wnids) != sorted(wnids):
        raise UserError(
            f"The class list {IMAGENET_WNIDS_FILE} in the densenet_opt package is not the {IMAGENET_NUM_CLASSES} "
            "sorted ILSVRC2012 wnids: reinstall densenet-opt."
        )
    return wnids


@functools.cache
def _class_index_by_wnid() -> dict[str, int]:
    return {wnid: i for i, wnid in enumerate(imagenet_wnids())}


def imagenet_class_index(
    wnid: str, where: object, fix: str = "pass ImageNet-1k (ILSVRC2012) validation data"
) -> int:
    """torchvision class index (0..999) of an ILSVRC2012 wnid such as ``n01440764``.

    ``where`` (the file or folder the wnid came from) and ``fix`` (what to do)
    word the UserError raised when the wnid is not one of the 1000 classes.
    """
    index = _class_index_by_wnid().get(wnid)
    if index is None:
        raise UserError(
            f"{where} names wnid {wnid}, which is not one of the {IMAGENET_NUM_CLASSES} ILSVRC2012 classes: {fix}."
        )
    return index


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
    labels: dict[str, int] = {}
    # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark (and
    # newline="" lets csv take CRLF line ends as they are).
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
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
                labels[row["ImageId"]] = imagenet_class_index(
                    tokens[0], f"{path} row {row['ImageId']!r}", f"pass Kaggle's {KAGGLE_SOLUTION} unchanged"
                )
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: pass Kaggle's {KAGGLE_SOLUTION} unchanged.") from None
    if not labels:
        raise UserError(f"{path} has no rows: pass Kaggle's {KAGGLE_SOLUTION} unchanged.")
    return labels


def _read_devkit_ground_truth(path: Path) -> dict[str, int]:
    meta = _find_meta(path)
    wnid_by_id = _read_meta(meta)
    # ILSVRC2012_IDs follow the devkit's own order, not torchvision's sorted wnids.
    index_by_id = {
        ilsvrc_id: imagenet_class_index(wnid, meta, "pass the meta.mat from ILSVRC2012_devkit_t12/data")
        for ilsvrc_id, wnid in wnid_by_id.items()
    }
    labels: dict[str, int] = {}
    try:
        # utf-8-sig and split(): a byte-order mark and CRLF line ends are tolerated.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: pass the devkit's {DEVKIT_GROUND_TRUTH} unchanged.") from None
    for line_no, line in enumerate(text.split(), start=1):
        try:
            ilsvrc_id = int(line)
        except ValueError:
            raise UserError(
                f"{path} line {line_no} is not an ILSVRC2012_ID: pass the devkit's {DEVKIT_GROUND_TRUTH} unchanged."
            ) from None
        if ilsvrc_id not in index_by_id:
            raise UserError(
                f"{path} line {line_no} names ILSVRC2012_ID {ilsvrc_id}, which {meta} does not list: "
                "pass the meta.mat from the same devkit."
            )
        # Line i (1-based) is the label of ILSVRC2012_val_<i, 8 digits>.
        labels[f"ILSVRC2012_val_{line_no:08d}"] = index_by_id[ilsvrc_id]
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
    out = torch.empty((len(samples), *IMAGE_SHAPE), dtype=torch.float32)
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


# --- Streaming ----------------------------------------------------------------
#
# Accuracy over the full validation set cannot hold the images: 602 KB each decoded, 30 GB
# for 50,000. The evaluation set is therefore a stream: workers decode it in order, a
# bounded number of chunks at a time, and only the logits (4 KB an image) are kept.

# Images per chunk a worker decodes and hands over. The engine's batches are assembled from
# chunks (accuracy.predict), so this bounds what is in flight, not the engine's batch size.
STREAM_CHUNK = 16
# Chunks each worker decodes ahead (DataLoader's prefetch_factor): in flight at most
# workers x PREFETCH_CHUNKS x STREAM_CHUNK images (4 x 2 x 16 x 602 KB = 77 MB).
PREFETCH_CHUNKS = 2
MAX_DEFAULT_WORKERS = 4


def shared_memory_shortage(shm: Path = Path("/dev/shm")) -> str:
    """The sentence for data loader workers that ran out of shared memory (Docker's default
    /dev/shm is 64 MB), with its size where it can be read."""
    try:
        stats = os.statvfs(shm)
        size = f" ({stats.f_blocks * stats.f_frsize / 2**20:.0f} MiB)"
    except OSError:
        size = ""
    return (f"the data loader's workers ran out of shared memory{size}: pass --data-workers 0, or give the "
            "machine more (in Docker: docker run --shm-size=2g or --ipc=host)")


def default_num_workers() -> int:
    """min(4, CPUs this process may run on): decoding JPEGs keeps about 4 workers busy
    feeding an accelerator, and more would only compete with the engine for the CPU."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


class _DecodeFailure:
    """A UserError's message, carried out of a DataLoader worker as a value: raised there,
    it would come back wrapped in a multi-line "Caught UserError in DataLoader worker"."""

    def __init__(self, message: str) -> None:
        self.message = message


class ImageFiles(torch.utils.data.Dataset):
    """Item i: sample i's image decoded with eval_transform(), float32 [3,224,224], or a
    _DecodeFailure naming the file when it cannot be read."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self._transform: Callable | None = None  # built in the worker that uses it

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> torch.Tensor | _DecodeFailure:
        if self._transform is None:
            self._transform = eval_transform()
        try:
            return self._transform(_open_rgb(self.samples[index].path))
        except UserError as error:
            return _DecodeFailure(str(error))


class SyntheticImages(torch.utils.data.Dataset):
    """Item i: synthetic image offset + i, float32 [3,224,224], normalised, rendered when
    asked for (the same values as synthetic_images(count, seed, offset)[0][i])."""

    def __init__(self, count: int, seed: int = 0, offset: int = 0) -> None:
        self.count, self.seed, self.offset = count, seed, offset

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(f"synthetic image {index} of {self.count}")
        from densenet_opt.synthetic import synthetic_images

        images, _ = synthetic_images(1, seed=self.seed, offset=self.offset + index)
        return images[0]


# OpenBLAS's thread-count setters under the names its builds export (numpy's wheels bundle
# scipy-openblas with a 64-bit-integer suffix; distribution builds use the plain name).
_OPENBLAS_SET_THREADS = (
    "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)


def _one_blas_thread(worker_id: int) -> None:
    """DataLoader worker_init_fn: numpy's OpenBLAS down to one thread in this worker.

    The workers already run side by side (and DataLoader sets torch to one thread in each);
    OpenBLAS would start a thread per core in every worker, and its spinning threads made
    rendering a synthetic image 12x slower (54 ms instead of 4.5 ms on 2 busy cores).
    Does nothing where the libraries cannot be found (no /proc, no OpenBLAS)."""
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _OPENBLAS_SET_THREADS:
            setter = getattr(library, name, None)
            if setter is not None:
                setter(1)
                break


def _collate(items: list) -> torch.Tensor | _DecodeFailure:
    for item in items:
        if isinstance(item, _DecodeFailure):
            return item
    return torch.utils.data.default_collate(items)


@dataclass(frozen=True)
class EvalStream:
    """The evaluation set without its pixels in memory: ``len()`` images, decoded on demand.

    Iterating yields float32 [<=STREAM_CHUNK, 3, 224, 224] chunks in the deterministic sample
    order, decoded by ``num_workers`` processes (0: in this process) with at most
    PREFETCH_CHUNKS chunks per worker ahead; every iteration decodes the images again.
    Raises UserError naming the file (one sentence) when an image cannot be read.
    """

    dataset: torch.utils.data.Dataset  # item i: float32 [3,224,224], normalised
    labels: torch.Tensor  # int64 [N]: class indices, of the kind label_kind says
    source: str  # human-readable description for reports, as EvalSet.source
    num_workers: int = 0
    chunk_size: int = STREAM_CHUNK
    label_kind: str = IMAGENET_LABELS  # IMAGENET_LABELS or SYNTHETIC_LABELS

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[torch.Tensor]:
        workers = min(self.num_workers, -(-len(self) // self.chunk_size))  # no idle workers
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.chunk_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            prefetch_factor=PREFETCH_CHUNKS if workers else None,
            worker_init_fn=_one_blas_thread if workers else None,
        )
        chunks = None
        try:
            while True:
                try:
                    chunks = iter(loader) if chunks is None else chunks  # starts the workers
                    chunk = next(chunks)
                except StopIteration:
                    return
                except RuntimeError as error:
                    text = str(error).lower()
                    # torch's worker messages: a bus error "out of shared memory", or a full
                    # /dev/shm ("unable to write to file </torch_...>: No space left on device").
                    if workers and ("shared memory" in text or ("/torch_" in text and "no space left" in text)):
                        raise UserError(shared_memory_shortage()) from None
                    raise
                if isinstance(chunk, _DecodeFailure):
                    raise UserError(chunk.message)
                yield chunk
        finally:
            del chunks  # stops the workers now, also when the consumer stops early

    def head(self, count: int) -> torch.Tensor:
        """The first ``count`` images (1 <= count <= len(self)), decoded in this process:
        float32 [count,3,224,224]. Raises UserError for an unreadable image."""
        if not 1 <= count <= len(self):
            raise ValueError(f"head({count}) of an evaluation stream of {len(self)} images")
        out = torch.empty((count, *IMAGE_SHAPE), dtype=torch.float32)
        for i in range(count):
            item = self.dataset[i]
            if isinstance(item, _DecodeFailure):
                raise UserError(item.message)
            out[i] = item
        return out


def open_eval_stream(
    imagenet_val: Path | None,
    num_samples: int,
    *,
    skip: int = 0,
    seed: int = 0,
    ground_truth: Path | None = None,
    num_workers: int | None = None,
) -> EvalStream:
    """The images load_eval_set would decode, with the same labels and source, as a stream:
    samples [skip, skip+num_samples) of the ImageNet-val order when a path is given (listed
    now, decoded when iterated), otherwise synthetic images. ``num_workers`` None means
    default_num_workers(). Raises UserError for bad counts or data (as select_samples)."""
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {workers}")
    if imagenet_val is not None:
        root = Path(imagenet_val).expanduser()
        chosen = select_samples(root, num_samples, skip=skip, ground_truth=ground_truth)
        labels = torch.tensor([s.label for s in chosen], dtype=torch.int64)
        source = _source(f"imagenet-val {root}", num_samples, skip)
        return EvalStream(ImageFiles(chosen), labels, source, workers)
    _check_counts(num_samples, skip)
    from densenet_opt.synthetic import pseudo_labels

    return EvalStream(
        SyntheticImages(num_samples, seed, skip), pseudo_labels(num_samples, skip),
        _source(f"synthetic seed={seed}", num_samples, skip), workers, label_kind=SYNTHETIC_LABELS,
    )


def _source(what: str, num_samples: int, skip: int) -> str:
    return f"{what} ({num_samples} samples" + (f", skip {skip})" if skip else ")")
