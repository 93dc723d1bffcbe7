"""DenseNet-121 from one of three weight sources: torchvision's weights, a file, synthetic."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torchvision.models import DenseNet121_Weights, densenet121

from densenet_opt.cache import file_sha256, tensor_digest
from densenet_opt.errors import UserError

TORCHVISION = "torchvision"
SYNTHETIC = "synthetic"
AUTO = "auto"
TORCHVISION_WEIGHTS = DenseNet121_Weights.IMAGENET1K_V1

# Old torchvision checkpoints (the ones torchvision still downloads) name dense-layer
# parameters 'norm.1.weight'; today's modules call them 'norm1.weight'.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


@dataclass(frozen=True)
class Weights:
    state_dict: Mapping[str, torch.Tensor]
    source: str  # "torchvision", "synthetic" or the file path, for people
    key: str  # identifies these exact weights (their bytes, whichever way named) in cache keys
    trained: bool  # True when the weights are a trained network's, so labels mean something


def torchvision_weights_path() -> Path:
    filename = Path(urlparse(TORCHVISION_WEIGHTS.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve_weights(
    spec: str,
    *,
    cache_dir: Path,
    allow_pickle: bool = False,
    progress: Callable[[str], None] = print,
) -> Weights:
    """``spec`` is auto, torchvision, synthetic or a path to a weights file."""
    if spec == AUTO:
        if torchvision_weights_path().exists():
            spec = TORCHVISION
        else:
            progress(
                f"NOTICE: torchvision's DenseNet-121 weights are not in the local torch hub cache "
                f"({torchvision_weights_path()}); using synthetic weights: accuracy columns are "
                "scored against synthetic pseudo-classes (on synthetic images) or are agreement with the fp32 "
                "reference, never ImageNet accuracy"
            )
            spec = SYNTHETIC
    if spec == SYNTHETIC:
        from densenet_opt.synthetic import RECIPE_VERSION, load_or_build_synthetic_state_dict

        state_dict = load_or_build_synthetic_state_dict(seed=0, cache_dir=cache_dir, progress=progress)
        return Weights(state_dict, SYNTHETIC, f"synthetic-seed0-v{RECIPE_VERSION}-{state_dict_digest(state_dict)}", trained=False)
    if spec == TORCHVISION:
        path = torchvision_weights_path()
        if not path.exists():
            raise UserError(
                f"torchvision's DenseNet-121 weights are not in the local torch hub cache ({path}): "
                "copy densenet121-a639ec97.pth there from a machine with internet, or pass "
                "--weights synthetic or --weights PATH"
            )
        # The hub file's bytes, not its name: another file under that name (other DenseNet-121
        # weights copied there) must not reuse artifacts built from the first.
        return Weights(load_state_dict_file(path), TORCHVISION, f"torchvision-{TORCHVISION_WEIGHTS.name}-{file_sha256(path)[:16]}", True)
    path = Path(spec)
    state_dict = load_state_dict_file(path, allow_pickle=allow_pickle)
    return Weights(state_dict, str(path), f"file-{file_sha256(path)[:16]}", trained=True)


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits identifying a state_dict's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{tensor_digest(tensor)};".encode())
    return digest.hexdigest()[:16]


def load_state_dict_file(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state_dict or a checkpoint holding one; never runs code unless allowed."""
    if not path.is_file():
        raise UserError(
            f"weights file {path} does not exist: pass an existing file, or --weights synthetic / torchvision"
        )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        if allow_pickle:
            raise UserError(f"weights file {path} cannot be read ({error}): is it truncated?") from error
        raise UserError(
            f"weights file {path} holds objects that only full unpickling can load, and unpickling "
            "can run arbitrary code: re-save it as a plain state_dict, or pass --allow-unsafe-weights "
            "if you trust the file"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        why = str(error).strip() or ("it is empty" if path.is_file() and path.stat().st_size == 0 else type(error).__name__)
        raise UserError(
            f"weights file {path} is not a readable PyTorch file ({why}): is it truncated or of another format?"
        ) from error
    return _unwrap_state_dict(loaded, path)


def _unwrap_state_dict(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, torch.nn.Module):
        loaded = loaded.state_dict()
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(
            f"weights file {path} holds no state_dict (a mapping of names to tensors), nor a checkpoint "
            "with one under 'state_dict' or 'model'"
        )
    state_dict = {}
    for key, value in loaded.items():
        key = key.removeprefix("module.")  # saved from DataParallel / DistributedDataParallel
        match = _OLD_DENSE_LAYER_KEY.match(key)
        state_dict[match.group(1) + match.group(2) if match else key] = value
    return state_dict


def build_model(weights: Weights) -> torch.nn.Module:
    """An fp32 DenseNet-121 in eval mode on the CPU, with ``weights`` loaded."""
    model = densenet121(weights=None)
    check_compatible(model.state_dict(), weights)
    model.load_state_dict(weights.state_dict)
    return model.eval()


def check_compatible(expected: Mapping[str, torch.Tensor], weights: Weights) -> None:
    # Checkpoints from before BatchNorm counted batches lack num_batches_tracked; torch fills it in.
    missing = [k for k in expected if k not in weights.state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights.state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(weights.state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights.state_dict and weights.state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
            for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape))
            if items
        ]
        raise UserError(
            f"weights {weights.source} are not a DenseNet-121 state_dict: {'; '.join(problems)}; "
            "pass weights saved from torchvision.models.densenet121"
        )
