"""Top-k accuracy against labels, agreement with the fp32 reference, and MLPerf's accuracy rule."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from scipy import stats

ACCURACY = "imagenet_accuracy"
AGREEMENT = "agreement_with_fp32"
# Synthetic weights on synthetic images: top-k against the pseudo-class each image was drawn
# from, which the synthetic head was fitted to (synthetic.py). Not ImageNet accuracy.
SYNTHETIC_ACCURACY = "synthetic_label_accuracy"


# MLPerf Inference's accuracy rule for image classification: a submission's top-1 must be at
# least 99% of the fp32 reference model's, on the same images (MLPerf Inference rules,
# "Benchmarks": ResNet-50 "99% of FP32 (76.46%)"; the closed division's quality target).
MLPERF_TOP1_OF_FP32 = 99.0
RULE_CONFIDENCE = 0.95  # of the interval shown beside the rule's figure
RULE_RESAMPLES = 2000
RULE_SEED = 20261207


class NonFiniteLogits(Exception):
    """An engine produced NaN or Inf: a failure of that variant, never averaged in."""


def in_top_k(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """Per sample: is the target among the k highest logits? A tie does not count as a hit.

    ``logits``: float [N, C]; ``targets``: int64 [N] class indices in [0, C); ``k`` >= 1.
    Returns bool [N]: True when fewer than k *other* classes score greater than or equal
    to the target's logit. Without ties this is exactly whether the target is in
    ``torch.topk(logits, k).indices``; with all logits equal it is False for every k < C.

    Why a tie is a miss: torchvision's reference scripts (references/classification/utils.py,
    ``accuracy``) use ``torch.topk``, whose order among equal values is unspecified, so a
    tied target would be a hit or a miss depending on the kernel. Counting a tie as a miss
    keeps the figure independent of that order, and keeps top-1 accuracy against the fp32
    reference's argmax at or below the argmax agreement (an int8 engine's rounded logits
    tie often). A NaN target logit is a miss. Raises RuntimeError (from ``gather``) for a
    target outside [0, C).
    """
    target_logit = logits.gather(1, targets.view(-1, 1))
    at_or_above = logits >= target_logit
    at_or_above.scatter_(1, targets.view(-1, 1), False)  # count only the other classes
    return (at_or_above.sum(dim=1) < k) & ~target_logit.view(-1).isnan()


class ImageStream(Protocol):
    """Images in order as chunks of any sizes (e.g. data.EvalStream): ``len()`` images in
    all, each chunk float32 [n,3,H,W]."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[torch.Tensor]: ...


def predict(
    engine: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor | ImageStream, batch_size: int
) -> torch.Tensor:
    """Logits float32 [N, C] for N images given as one float32 [N,3,H,W] tensor or as an
    ImageStream, in engine calls of exactly ``batch_size`` images (the last one padded by
    repeating its last image), so that engines built for a static batch size see only that
    size. A stream is consumed as it comes: at most one batch plus one chunk of images is
    held here, and the stream is closed when this returns or raises. Batches may be views of
    ``images``: engines must not write into their input.

    Raises NonFiniteLogits when any logit is NaN or Inf, ValueError when a stream yields
    another number of images than its len(); whatever the engine raises passes through.
    """
    total = len(images)
    chunks = images.split(batch_size) if isinstance(images, torch.Tensor) else images
    logits: torch.Tensor | None = None
    done = 0
    batches = _exact_batches(iter(chunks), batch_size)
    try:
        for batch, real in batches:
            out = engine(batch)[:real].float()
            if logits is None:  # preallocated: no list of outputs plus their concatenation
                logits = torch.empty((total, *out.shape[1:]), dtype=torch.float32)
            if done + real > total:
                raise ValueError(f"the image stream yielded more than its {total} images")
            logits[done : done + real] = out
            done += real
    finally:
        batches.close()
    if done != total or logits is None:
        raise ValueError(f"the image stream yielded {done} images, not its {total}")
    if not torch.isfinite(logits).all():
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise NonFiniteLogits(f"{bad} of {len(logits)} samples have NaN or Inf logits")
    return logits


def _exact_batches(chunks: Iterator[torch.Tensor], batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """(batch of exactly batch_size images, how many of them are real) from chunks of any
    sizes; only the last batch is padded, by repeating its last image. A batch inside one
    chunk is a view of it; one spanning chunks is filled into one buffer, reused from batch to
    batch (a fresh 19 MB tensor per batch of 32 let glibc's heap grow with N), so at most one
    batch plus one chunk is held; a consumer must be done with a batch before the next. Closes ``chunks`` (when it can be) on the way out."""
    buffer: torch.Tensor | None = None
    filled = 0
    try:
        for chunk in chunks:
            start = 0
            while start < len(chunk):
                if filled == 0 and len(chunk) - start >= batch_size:
                    yield chunk[start : start + batch_size], batch_size
                    start += batch_size
                    continue
                if buffer is None:
                    buffer = chunk.new_empty((batch_size, *chunk.shape[1:]))
                take = min(batch_size - filled, len(chunk) - start)
                buffer[filled : filled + take] = chunk[start : start + take]
                filled, start = filled + take, start + take
                if filled == batch_size:
                    yield buffer, batch_size
                    filled = 0  # the consumer copies its logits out before asking for more
        if filled:
            buffer[filled:] = buffer[filled - 1]
            yield buffer, filled
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class Fidelity:
    """accuracy_top_1/5 are % of samples; their meaning is given by ``kind``."""

    kind: str
    top1: float
    top5: float
    agreement_top_1: float  # % of samples whose top-1 class equals the reference's
    # ||logits - reference|| / ||reference|| over all samples; for a reference of all-zero
    # logits (a collapsed model): 0 where the logits are zero too, else None (undefined).
    relative_error: float | None
    # MLPerf's rule: top-1 as % of the fp32 reference's top-1 on the same images, with its
    # interval (Top1OfFp32); None where not measured (a row of an older version).
    top1_of_fp32: Top1OfFp32 | None = None


def fidelity(
    logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor | None, kind: str = ACCURACY
) -> Fidelity:
    """``logits`` and ``reference``: float32 [N,1000]; ``labels``: int64 [N] or None.
    With labels: top-k accuracy against them, of ``kind`` (ACCURACY or SYNTHETIC_ACCURACY).
    Without: the reference's top-1 class stands in for the label, so top-1/top-5 become
    agreement with the fp32 model (kind AGREEMENT)."""
    reference_top1 = reference.argmax(dim=1)
    targets = labels if labels is not None else reference_top1
    agreement = top1_agreement(logits, reference_top1)
    hits = in_top_k(logits, targets, 1)
    return Fidelity(
        kind=kind if labels is not None else AGREEMENT,
        top1=hits.float().mean().item() * 100,
        top5=in_top_k(logits, targets, 5).float().mean().item() * 100,
        agreement_top_1=agreement,
        relative_error=relative_error(logits, reference),
        top1_of_fp32=top1_of_fp32(hits, in_top_k(reference, targets, 1)),
    )


@dataclass(frozen=True)
class Top1OfFp32:
    """MLPerf's accuracy figure: an engine's top-1 as a percentage of the fp32 reference's
    top-1 on the same ``images`` (``pct``; 100 = as accurate), with the two-sided
    ``confidence`` interval ``low``-``high`` of a paired percentile bootstrap over the
    images. Without labels the reference's own top-1 class is the label, so ``pct`` is the
    top-1 agreement (the reference scores 100%)."""

    pct: float
    low: float
    high: float
    images: int
    confidence: float = RULE_CONFIDENCE

    def meets(self, minimum: float = MLPERF_TOP1_OF_FP32) -> bool:
        """MLPerf's rule as MLPerf applies it: the measured figure (not the interval) is at
        least ``minimum`` % of the fp32 reference's top-1."""
        return self.pct >= minimum

    def text(self) -> str:
        """"99.52% of fp32 top-1 (95% CI 98.70-100.31, 2000 images)"."""
        return (f"{self.pct:.2f}% of fp32 top-1 ({self.confidence:.0%} CI {self.low:.2f}-{self.high:.2f}, "
                f"{self.images} images)")


def top1_of_fp32(hits: torch.Tensor, reference_hits: torch.Tensor, *, confidence: float = RULE_CONFIDENCE,
                 resamples: int = RULE_RESAMPLES) -> Top1OfFp32 | None:
    """MLPerf's figure from per-image top-1 hits: ``hits`` and ``reference_hits`` are bool
    [N] (in_top_k with k=1) of the engine and of the fp32 reference on the same N images.
    ``pct`` = 100 * hits.mean() / reference_hits.mean(). The interval resamples images
    with their pair of hits (scipy.stats.bootstrap, paired, percentile method, fixed seed):
    most images are hit or missed by both, so the interval is far narrower than that of
    either top-1 alone (at 83% top-1, 256 images give a standard error of 2.3 points for
    one top-1, Wilson). None when the reference hits no image (no scale) or N is 0. Raises
    ValueError when the two have different lengths."""
    if hits.shape != reference_hits.shape:
        raise ValueError(f"{len(hits)} hits for {len(reference_hits)} reference hits")
    engine, reference = hits.numpy().astype(np.float64), reference_hits.numpy().astype(np.float64)
    if len(engine) == 0 or reference.sum() == 0:
        return None
    pct = float(100.0 * engine.mean() / reference.mean())
    if len(engine) < 2 or np.array_equal(engine, reference):
        return Top1OfFp32(pct, pct, pct, len(engine), confidence)

    def ratio(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        scale = b.mean(axis=axis)
        return 100.0 * a.mean(axis=axis) / np.where(scale == 0, np.nan, scale)

    with warnings.catch_warnings():  # few images: some resamples repeat one value (the percentiles stay defined)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((engine, reference), ratio, paired=True, vectorized=True, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile",
                                 batch=max(1, 4_000_000 // len(engine)), rng=np.random.default_rng(RULE_SEED))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return Top1OfFp32(pct, min(low, pct), max(high, pct), len(engine), confidence)


def top1_agreement(logits: torch.Tensor | np.ndarray, reference_classes: torch.Tensor | np.ndarray) -> float:
    """Top-1 agreement, % (0-100): the share of rows of ``logits`` (float [N, C], a torch
    tensor or a numpy array) whose argmax class equals ``reference_classes`` (int [N]: the
    fp32 reference's top-1 classes). The one definition the sweep, the searches and the
    distillation use."""
    chosen = np.asarray(logits.argmax(dim=1) if isinstance(logits, torch.Tensor) else np.asarray(logits).argmax(axis=1))
    reference = np.asarray(reference_classes)
    if chosen.shape != reference.shape:
        raise ValueError(f"{chosen.shape[0]} rows of logits for {reference.shape[0]} reference classes")
    return float((chosen == reference).mean() * 100.0)


# What an accuracy-aware int8 search (onnx_int8, int8, openvino_int8) accepts: its
# ``accuracy_rule`` option's values (variants/search_rule.py resolves "auto").
TOP1_OF_FP32_RULE = "top1_of_fp32"  # MLPerf's rule: top-1 against the labels, % of the fp32 model's
AGREEMENT_RULE = "agreement"  # top-1 agreement with the fp32 model, %
SEARCH_RULES = (TOP1_OF_FP32_RULE, AGREEMENT_RULE)


@dataclass(frozen=True)
class SearchRule:
    """The accuracy a search's candidate must keep on its N held-out images, and its score.

    ``name`` TOP1_OF_FP32_RULE: the candidate's top-1 against the images' labels as % of the
    fp32 reference's top-1 on the same images (MLPerf's rule at ``target`` 99; the figure
    Top1OfFp32 reports for the evaluated images, without the interval). AGREEMENT_RULE: the
    % of images whose top-1 class is the fp32 reference's (needs no labels). Both are one
    comparison per image: the candidate's argmax against ``classes`` (int64 [N]: the labels,
    or the reference's argmax), divided by ``reference_rate``, the fraction of images the
    reference itself gets right by the same comparison (1 for agreement). Build with ``of``."""

    name: str
    target: float  # %
    classes: np.ndarray
    reference_rate: float

    @classmethod
    def of(cls, name: str, target: float, reference_top1: np.ndarray, labels: np.ndarray | None = None) -> SearchRule:
        """The rule ``name`` (SEARCH_RULES) at ``target`` % for held-out images whose fp32
        argmax classes are ``reference_top1`` (int [N]) and whose labels are ``labels``
        (int [N]; needed by TOP1_OF_FP32_RULE only). Raises ValueError for another name, for
        TOP1_OF_FP32_RULE without labels or with labels of another length, and when the
        reference gets none of the images right (the rule has no scale: use agreement)."""
        reference = np.asarray(reference_top1, dtype=np.int64)
        if name == AGREEMENT_RULE:
            return cls(name, float(target), reference, 1.0)
        if name != TOP1_OF_FP32_RULE:
            raise ValueError(f"accuracy rule {name!r} is not one of {', '.join(SEARCH_RULES)}")
        if labels is None or len(labels) != len(reference):
            got = "no labels" if labels is None else f"{len(labels)} labels"
            raise ValueError(f"the {TOP1_OF_FP32_RULE} rule needs a label for each of the {len(reference)} "
                             f"held-out images, got {got}")
        classes = np.asarray(labels, dtype=np.int64)
        rate = float((reference == classes).mean()) if len(reference) else 0.0
        if rate == 0:
            raise ValueError(f"the fp32 model gets none of the {len(reference)} held-out images right against "
                             f"their labels, so the {TOP1_OF_FP32_RULE} rule has no scale: use the "
                             f"{AGREEMENT_RULE} rule")
        return cls(name, float(target), classes, rate)

    def score(self, logits: torch.Tensor | np.ndarray) -> float:
        """The rule's figure, %, of ``logits`` (float [N, C], the held-out images in order)."""
        return top1_agreement(logits, self.classes) / self.reference_rate

    def score_of_matches(self, matches: float) -> float:
        """The figure, %, of a candidate whose argmax matches ``classes`` on the fraction
        ``matches`` of the images (what NNCF's validation function returns)."""
        return 100.0 * matches / self.reference_rate

    def meets(self, score: float) -> bool:
        """Whether ``score`` (%) reaches the target."""
        return score >= self.target

    @property
    def metric(self) -> str:
        """The column a search's table names the figure by: rule_metric(name)."""
        return rule_metric(self.name)

    def text(self) -> str:
        """"top-1 >= 99% of the fp32 model's (MLPerf's rule)" or "agreement >= 99%"."""
        return rule_text(self.name, self.target)


def rule_metric(name: str) -> str:
    """The column name of a search rule's figure: Row's ``top1_of_fp32_pct`` or ``agreement_top_1``."""
    return "top1_of_fp32_pct" if name == TOP1_OF_FP32_RULE else "agreement_top_1"


def rule_text(name: str, target: float) -> str:
    """A search rule in words, with its target (%)."""
    if name == TOP1_OF_FP32_RULE:
        return f"top-1 >= {target:g}% of the fp32 model's (MLPerf's rule)"
    return f"top-1 agreement with fp32 >= {target:g}%"


def score_text(name: str, score: float) -> str:
    """A search's figure in words: "top-1 99.21% of fp32's" or "agreement 98.05%"."""
    return f"top-1 {score:.2f}% of fp32's" if name == TOP1_OF_FP32_RULE else f"agreement {score:.2f}%"


# engine_info's note where relative_error is undefined.
UNDEFINED_RELATIVE_ERROR = "undefined: the fp32 reference's logits are all zero (a collapsed model) and these are not"


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float | None:
    """||logits - reference|| / ||reference|| (float32 [N,1000] each, Frobenius norms). A
    reference of all-zero logits (weights that collapsed: every image the same zero output)
    has no scale: 0.0 when ``logits`` are zero too (identical), None otherwise."""
    difference = torch.linalg.vector_norm(logits - reference).item()
    scale = torch.linalg.vector_norm(reference).item()
    if scale == 0:
        return 0.0 if difference == 0 else None
    return difference / scale
