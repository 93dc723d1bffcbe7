"""Offline stand-ins for ImageNet data and pretrained DenseNet-121 weights.

No pretrained weights can be downloaded here, and plain random weights make fidelity
figures meaningless: their logits barely depend on the input, so every variant "agrees"
with fp32 on the same one or two classes. This module builds weights whose fp32 logits
are input-dependent and confident on structured synthetic images:

1. a seeded ``densenet121(weights=None)``;
2. BatchNorm statistics recalibrated on structured synthetic images (random init
   statistics assume unit-variance inputs, which is wrong past the first few layers);
3. the classifier refit as a cosine nearest-prototype classifier in whitened pooled-feature
   space, one prototype per pseudo-class.

The numbers say nothing about real ImageNet accuracy; they only make top-1 agreement
between an optimised variant and fp32 sensitive to numeric regressions.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from densenet_opt import atomic, cache  # model imports this module lazily: no cycle
from densenet_opt.cache import default_cache_dir
from densenet_opt.preprocessing import IMAGE_SHAPE, IMAGENET_MEAN, IMAGENET_STD

# Bump whenever anything below changes the produced weights: it is part of the cache key.
RECIPE_VERSION: int = 2  # v1: an early draft (jitter 1.0, ridge 1.0) that may sit in caches

NUM_CLASSES = 1000
IMAGE_SIZE = IMAGE_SHAPE[-1]

# Fitting uses images far from the offsets callers evaluate on (0..N), so evaluation
# images are held out from both the BatchNorm statistics and the prototypes.
FIT_OFFSET = 1_000_000
BN_OFFSET = 2_000_000
BN_IMAGES = 128
# With momentum=None every batch weighs the same, so BN batches are equal-sized.
BN_BATCH = 64
FORWARD_BATCH = 50
# Ridge on the whitening, in units of the mean eigenvalue. Smaller sharpens the prototypes
# (lam 0.1: median softmax 0.998, margin 8), larger blurs them (lam 10: 0.55, 2.1); 2.0
# lands near the confidence of a trained ImageNet model while leaving a tail of ~5% of
# images within 0.5 logits of a flip, which is what makes agreement sensitive.
WHITEN_LAMBDA = 2.0
TARGET_LOGIT_STD = 2.0

# Distinct stream tags so the class palette and the instance jitter never share a stream.
_CLASS_STREAM = 0xC1A55
_INSTANCE_STREAM = 0x1D57

_SHAPES_PER_CLASS = 3
_PALETTE_SIZE = 5
_COARSE_GRID = 6
_FINE_GRID = 14
# Scales every per-instance perturbation: how far an image strays from its class look.
# Measured on 256 held-out images with a whitening ridge of 1.0: jitter 1.0 leaves the
# median top-1/top-2 margin near 2 logits with 15% of images under 0.5; 0.5 pushes it to
# 8.5 with under 1% near a decision boundary, so agreement would miss small numeric errors.
_JITTER = 0.7


# ---------------------------------------------------------------------------------------
# Synthetic images
# ---------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], shape [H, W] each."""
    axis = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE * 2.0 - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    return xx, yy


@lru_cache(maxsize=None)
def _upsample_matrix(cells: int) -> np.ndarray:
    """[IMAGE_SIZE, cells] smooth (cosine-weighted) interpolation matrix.

    Upsampling a small random grid with it gives a low-pass noise field as two small
    matrix products instead of a per-pixel loop.
    """
    pos = (np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5) / IMAGE_SIZE * (cells - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, cells - 2)
    frac = pos - lo
    smooth = 0.5 - 0.5 * np.cos(np.pi * frac)  # C1-continuous, no visible grid seams
    mat = np.zeros((IMAGE_SIZE, cells), dtype=np.float64)
    rows = np.arange(IMAGE_SIZE)
    mat[rows, lo] = 1.0 - smooth
    mat[rows, lo + 1] = smooth
    return mat.astype(np.float32)


def _noise_field(grid: np.ndarray) -> np.ndarray:
    """Upsample a [3, n, n] grid to a [3, H, W] smooth field."""
    up = _upsample_matrix(grid.shape[-1])
    return up @ grid.astype(np.float32) @ up.T


def _class_params(seed: int, label: int) -> dict[str, np.ndarray]:
    """Everything that makes one pseudo-class look like itself."""
    rng = np.random.default_rng([seed, _CLASS_STREAM, label])
    return {
        "palette": rng.uniform(0.0, 1.0, size=(_PALETTE_SIZE, 3)),
        "grad_angle": rng.uniform(0.0, 2 * np.pi, size=()),
        "coarse": rng.normal(0.0, 1.0, size=(3, _COARSE_GRID, _COARSE_GRID)),
        "noise_amp": rng.uniform(0.08, 0.25, size=()),
        "stripe_freq": rng.uniform(2.0, 14.0, size=()),
        "stripe_angle": rng.uniform(0.0, np.pi, size=()),
        "stripe_amp": rng.uniform(0.15, 0.5, size=()),
        "stripe_sharp": rng.uniform(0.0, 1.0, size=()),
        "shape_kind": rng.integers(0, 3, size=_SHAPES_PER_CLASS),
        "shape_pos": rng.uniform(-0.6, 0.6, size=(_SHAPES_PER_CLASS, 2)),
        "shape_size": rng.uniform(0.12, 0.35, size=_SHAPES_PER_CLASS),
        "shape_color": rng.integers(0, _PALETTE_SIZE, size=_SHAPES_PER_CLASS),
    }


def _render(seed: int, index: int) -> tuple[np.ndarray, int]:
    """One [3, H, W] image in [0, 1] and its pseudo-label, a pure function of (seed, index)."""
    label = index % NUM_CLASSES
    cls = _class_params(seed, label)
    rng = np.random.default_rng([seed, _INSTANCE_STREAM, index])
    xx, yy = _grid()
    # Scalars are Python floats (float(), math.*) so numpy keeps the float32 arrays float32:
    # under NEP 50 a numpy float64 scalar would promote them to float64 and double the cost.

    palette = np.clip(cls["palette"] + rng.normal(0.0, _JITTER * 0.06, size=cls["palette"].shape), 0.0, 1.0)
    palette = palette.astype(np.float32)[:, :, None, None]

    # Background: a two-colour linear gradient along a jittered class angle.
    angle = float(cls["grad_angle"] + rng.normal(0.0, _JITTER * 0.25))
    t = (math.cos(angle) * 0.5) * xx + (math.sin(angle) * 0.5) * yy + 0.5
    img = palette[0] + (palette[1] - palette[0]) * t

    # Low-pass noise: the class's coarse field plus per-instance coarse and fine detail.
    coarse = cls["coarse"] + rng.normal(0.0, _JITTER * 0.5, size=cls["coarse"].shape)
    fine = rng.normal(0.0, _JITTER * 0.5, size=(3, _FINE_GRID, _FINE_GRID))
    img += float(cls["noise_amp"]) * (_noise_field(coarse) + _noise_field(fine))

    # Stripes: class frequency/orientation, instance phase and jitter; sharpness blends a
    # sine into a square-ish wave so classes differ in edge content, not just frequency.
    freq = float(cls["stripe_freq"] * np.exp(rng.normal(0.0, _JITTER * 0.08)))
    s_angle = float(cls["stripe_angle"] + rng.normal(0.0, _JITTER * 0.12))
    phase = float(rng.uniform(0.0, 2 * np.pi))
    wave = np.sin((math.pi * freq * math.cos(s_angle)) * xx + (math.pi * freq * math.sin(s_angle)) * yy + phase)
    gain = float(1.0 + 6.0 * cls["stripe_sharp"])
    stripe = np.tanh(gain * wave)
    stripe *= float(0.5 * cls["stripe_amp"] / math.tanh(gain))
    stripe += float(0.5 * cls["stripe_amp"])
    img += (palette[2] - img) * stripe

    # Shapes: soft-edged discs, squares and rings at jittered class positions.
    edge = 0.015
    for k in range(_SHAPES_PER_CLASS):
        cx, cy = (float(v) for v in cls["shape_pos"][k] + rng.normal(0.0, _JITTER * 0.12, size=2))
        size = float(cls["shape_size"][k] * np.exp(rng.normal(0.0, _JITTER * 0.1)))
        dx, dy = xx - cx, yy - cy
        kind = int(cls["shape_kind"][k])
        if kind == 0:  # disc
            dist = np.sqrt(dx * dx + dy * dy) - size
        elif kind == 1:  # square, randomly rotated per instance
            rot = float(rng.uniform(0.0, np.pi / 2))
            c, s = math.cos(rot), math.sin(rot)
            dist = np.maximum(np.abs(c * dx + s * dy), np.abs(c * dy - s * dx)) - size
        else:  # ring
            dist = np.abs(np.sqrt(dx * dx + dy * dy) - size) - 0.3 * size
        alpha = np.clip(0.5 - dist * (1.0 / (2 * edge)), 0.0, 1.0)
        color = palette[2 + int(cls["shape_color"][k]) % (_PALETTE_SIZE - 2)]
        img += (color - img) * alpha

    # Global brightness/contrast jitter, like exposure differences between photos.
    contrast = float(np.exp(rng.normal(0.0, _JITTER * 0.1)))
    brightness = float(rng.normal(0.0, _JITTER * 0.04))
    img = img * contrast + (0.5 + brightness - 0.5 * contrast)
    np.clip(img, 0.0, 1.0, out=img)
    assert img.dtype == np.float32
    return img, label


def pseudo_labels(count: int, offset: int = 0) -> torch.Tensor:
    """int64 [count]: the pseudo-class of synthetic images offset .. offset+count-1 (as
    synthetic_images gives them, without rendering), (offset + i) % 1000."""
    return (torch.arange(count, dtype=torch.int64) + offset) % NUM_CLASSES


def synthetic_images(count: int, seed: int = 0, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, pseudo_labels): float32 [count,3,224,224], ImageNet mean/std normalised, int64 [count].

    Image i is a pure function of (seed, offset + i), independent of count, so disjoint
    ranges (offset) give disjoint samples. Pseudo-label is (offset + i) % 1000.
    """
    if count < 0 or offset < 0 or seed < 0:
        raise ValueError(f"count, seed and offset must be >= 0, got count={count}, seed={seed}, offset={offset}")
    images = np.empty((count, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    labels = np.empty(count, dtype=np.int64)
    for i in range(count):
        images[i], labels[i] = _render(seed, offset + i)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    images -= mean
    images /= std
    return torch.from_numpy(images), torch.from_numpy(labels)


# ---------------------------------------------------------------------------------------
# Weights recipe
# ---------------------------------------------------------------------------------------


def _recalibrate_batchnorm(model: nn.Module, seed: int, progress: Callable[[str], None]) -> None:
    """Replace random-init running statistics with cumulative averages over synthetic images."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: every batch weighs the same
    model.train()
    with torch.no_grad():
        for start in range(0, BN_IMAGES, BN_BATCH):
            n = min(BN_BATCH, BN_IMAGES - start)
            images, _ = synthetic_images(n, seed=seed, offset=BN_OFFSET + start)
            model(images.contiguous(memory_format=torch.channels_last))
            progress(f"synthetic weights: BN recalibration {start + n}/{BN_IMAGES}")
    for m, momentum in zip(bns, saved_momentum):
        m.momentum = momentum
    model.eval()


def _pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The 1024-d input of torchvision DenseNet's classifier."""
    feats = torch.relu(model.features(images))
    return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(feats, 1), 1)


def _fit_features(model: nn.Module, seed: int, progress: Callable[[str], None]) -> torch.Tensor:
    """Pooled features of one fit image per pseudo-class, row c = class c."""
    out = torch.empty(NUM_CLASSES, model.classifier.in_features, dtype=torch.float64)
    with torch.inference_mode():
        for start in range(0, NUM_CLASSES, FORWARD_BATCH):
            n = min(FORWARD_BATCH, NUM_CLASSES - start)
            # FIT_OFFSET is a multiple of NUM_CLASSES, so image FIT_OFFSET + c has label c.
            images, labels = synthetic_images(n, seed=seed, offset=FIT_OFFSET + start)
            assert int(labels[0]) == start
            images = images.contiguous(memory_format=torch.channels_last)
            out[start : start + n] = _pooled_features(model, images).double()
            if (start + n) % 200 == 0 or start + n == NUM_CLASSES:
                progress(f"synthetic weights: features {start + n}/{NUM_CLASSES}")
    return out


def _prototype_head(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine nearest-prototype classifier in whitened feature space as (weight, bias).

    Random-init features are dominated by a few shared directions; whitening spreads the
    class differences over all dimensions so each prototype is distinct. The ridge keeps
    the near-null directions of a 1000-sample covariance from being amplified into noise.
    """
    mu = features.mean(dim=0)
    centred = features - mu
    cov = centred.T @ centred / (features.shape[0] - 1)
    eigval, eigvec = torch.linalg.eigh(cov)
    eigval = eigval.clamp_min(0.0)
    ridge = WHITEN_LAMBDA * eigval.mean()
    whiten = eigvec @ torch.diag((eigval + ridge).rsqrt()) @ eigvec.T
    prototypes = torch.nn.functional.normalize(centred @ whiten, dim=1)  # whiten is symmetric
    weight = prototypes @ whiten
    logits = centred @ weight.T
    weight = weight * (TARGET_LOGIT_STD / logits.std())
    bias = -(weight @ mu)
    return weight.float(), bias.float()


def build_synthetic_state_dict(seed: int = 0, progress: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Run the recipe; returns a torchvision densenet121 state_dict."""
    from torchvision.models import densenet121

    started = time.perf_counter()
    progress(f"synthetic weights: building (seed={seed}, recipe v{RECIPE_VERSION}); takes 1-2 minutes on 2 idle cores")
    # Forking the RNG keeps the caller's global torch RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = densenet121(weights=None)
    # oneDNN's NHWC convolutions run DenseNet about 1.5-2x faster than NCHW on CPU; the
    # layout changes results only at rounding level and the state dict keys not at all.
    model = model.to(memory_format=torch.channels_last)
    _recalibrate_batchnorm(model, seed, progress)
    features = _fit_features(model, seed, progress)
    weight, bias = _prototype_head(features)
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
        model.classifier.bias.copy_(bias)
    progress(f"synthetic weights: done in {time.perf_counter() - started:.1f} s")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------


def _torch_major_minor() -> str:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return f"{major}.{minor}"


def cache_path(seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Where the state dict for (seed, RECIPE_VERSION, torch major.minor) is cached."""
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return directory / f"densenet121-synthetic-seed{seed}-v{RECIPE_VERSION}-torch{_torch_major_minor()}.pt"


def _load_cached(path: Path) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The cached state dict, or (None, reason) when it is absent or fails its checks."""
    meta, reason = cache.check_cached(path)
    if meta is None:
        return None, reason
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file means rebuild
        return None, f"torch.load failed ({exc.__class__.__name__}: {exc})"
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None, "file does not hold a state dict of tensors"
    return state, "ok"


def load_or_build_synthetic_state_dict(
    seed: int = 0, cache_dir: Path | None = None, progress: Callable[[str], None] = print
) -> dict[str, torch.Tensor]:
    """Cached synthetic state dict for (seed, RECIPE_VERSION, torch major.minor); builds it once.

    A missing, truncated or corrupt cache file (checked against the size and sha256 in its
    JSON sidecar) is reported through ``progress`` and rebuilt. Raises UserError when the
    cache cannot be written (disk full, read-only); nothing partial is left there.
    """
    path = cache_path(seed, cache_dir)
    state, reason = _load_cached(path)
    if state is not None:
        return state
    if reason != cache.NOT_CACHED:
        progress(f"synthetic weights: cache {path} unusable: {reason}; rebuilding")
    state = build_synthetic_state_dict(seed=seed, progress=progress)
    atomic.write_atomic(path, lambda tmp: cache.torch_save(state, tmp), option=cache.CACHE_OPTION)
    cache.write_sidecar(path, {"seed": seed, "recipe_version": RECIPE_VERSION, "torch": torch.__version__})
    progress(f"synthetic weights: cached at {path}")
    return state
