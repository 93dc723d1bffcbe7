"""Synthetic images, the synthetic-weights recipe and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from densenet_opt import synthetic
from densenet_opt.synthetic import (
    RECIPE_VERSION,
    load_or_build_synthetic_state_dict,
    synthetic_images,
)

HELD_OUT = 256  # evaluation images at offset 0, disjoint from the recipe's fit/BN offsets


# --- images -----------------------------------------------------------------------------


def test_images_shape_dtype_labels() -> None:
    images, labels = synthetic_images(3, seed=0, offset=998)
    assert images.shape == (3, 3, 224, 224)
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert labels.tolist() == [998, 999, 0]
    assert torch.isfinite(images).all()
    # ImageNet-normalised [0, 1] pixels land roughly in [-2.2, 2.7].
    assert images.min() >= -2.2 and images.max() <= 2.7


def test_images_are_deterministic_and_independent_of_count() -> None:
    a, la = synthetic_images(6, seed=3)
    b, lb = synthetic_images(6, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)
    sliced, sliced_labels = synthetic_images(4, seed=3, offset=2)
    assert torch.equal(sliced, a[2:]) and torch.equal(sliced_labels, la[2:])


def test_images_differ_across_seeds_indices_and_instances() -> None:
    a, _ = synthetic_images(2, seed=0)
    b, _ = synthetic_images(2, seed=1)
    assert not torch.equal(a[0], b[0])
    assert not torch.equal(a[0], a[1])
    # Same pseudo-class (index and index + 1000) but a different instance.
    same_class, labels = synthetic_images(1, seed=0, offset=1000)
    assert labels.item() == 0
    assert not torch.equal(same_class[0], a[0])
    # ... which still looks more like its own class than like another class.
    assert (same_class[0] - a[0]).abs().mean() < (a[1] - a[0]).abs().mean()


def test_empty_and_invalid_counts() -> None:
    images, labels = synthetic_images(0)
    assert images.shape == (0, 3, 224, 224) and labels.shape == (0,)
    with pytest.raises(ValueError):
        synthetic_images(-1)


# --- cache (recipe replaced by a tiny stand-in so these stay fast) --------------------------


@pytest.fixture
def tiny_recipe(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace the recipe with a tiny deterministic state dict; returns a list of built seeds."""
    builds: list[int] = []

    def fake_build(seed: int = 0, progress=print) -> dict[str, torch.Tensor]:
        builds.append(seed)
        gen = torch.Generator().manual_seed(seed)
        return {"w": torch.randn(4, 3, generator=gen), "n": torch.tensor(seed)}

    monkeypatch.setattr(synthetic, "build_synthetic_state_dict", fake_build)
    return builds


@pytest.mark.slow
def test_cache_builds_once_then_loads(tmp_path: Path, tiny_recipe: list[int]) -> None:
    messages: list[str] = []
    first = load_or_build_synthetic_state_dict(seed=5, cache_dir=tmp_path, progress=messages.append)
    second = load_or_build_synthetic_state_dict(seed=5, cache_dir=tmp_path, progress=messages.append)
    assert tiny_recipe == [5]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    path = synthetic.cache_path(5, tmp_path)
    assert f"seed5-v{RECIPE_VERSION}-torch" in path.name
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["size"] == path.stat().st_size and len(meta["sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_cache_is_keyed_by_seed(tmp_path: Path, tiny_recipe: list[int]) -> None:
    load_or_build_synthetic_state_dict(seed=1, cache_dir=tmp_path, progress=lambda _: None)
    load_or_build_synthetic_state_dict(seed=2, cache_dir=tmp_path, progress=lambda _: None)
    assert tiny_recipe == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_sidecar", "garbage_sidecar"])
def test_damaged_cache_is_reported_and_rebuilt(tmp_path: Path, tiny_recipe: list[int], damage: str) -> None:
    load_or_build_synthetic_state_dict(seed=0, cache_dir=tmp_path, progress=lambda _: None)
    path = synthetic.cache_path(0, tmp_path)
    sidecar = path.with_name(path.name + ".json")
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "drop_sidecar":
        sidecar.unlink()
    else:
        sidecar.write_text("{not json")

    messages: list[str] = []
    state = load_or_build_synthetic_state_dict(seed=0, cache_dir=tmp_path, progress=messages.append)
    assert tiny_recipe == [0, 0]
    assert any("rebuilding" in m for m in messages), messages
    assert torch.equal(state["n"], torch.tensor(0))
    # The rebuilt file is whole again and loads without another rebuild.
    load_or_build_synthetic_state_dict(seed=0, cache_dir=tmp_path, progress=lambda _: None)
    assert tiny_recipe == [0, 0]


@pytest.mark.slow
def test_cache_dir_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_recipe: list[int]) -> None:
    monkeypatch.setenv("DENSENET_OPT_CACHE", str(tmp_path / "env-cache"))
    load_or_build_synthetic_state_dict(seed=0, progress=lambda _: None)
    assert synthetic.cache_path(0, tmp_path / "env-cache").exists()


# --- the real recipe -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_state(artifact_cache: Path) -> dict[str, torch.Tensor]:
    """The real recipe's state dict (seed 0).

    The recipe takes a minute or more, so it goes through conftest.py's ``artifact_cache``:
    with DENSENET_OPT_CACHE set (as CI does) it is paid at most once across runs and test files.
    """
    return load_or_build_synthetic_state_dict(seed=0, cache_dir=artifact_cache)


@pytest.fixture(scope="module")
def held_out_logits(synthetic_state: dict[str, torch.Tensor]) -> torch.Tensor:
    """fp32 logits on held-out images (offset 0, never used by the recipe)."""
    from torchvision.models import densenet121

    model = densenet121(weights=None)
    model.load_state_dict(synthetic_state)
    model = model.eval().to(memory_format=torch.channels_last)  # faster on CPU
    logits = []
    with torch.inference_mode():
        for start in range(0, HELD_OUT, 64):
            images, _ = synthetic_images(64, seed=0, offset=start)
            logits.append(model(images.contiguous(memory_format=torch.channels_last)))
    return torch.cat(logits)


@pytest.mark.slow
def test_state_dict_matches_torchvision_densenet121(
    synthetic_state: dict[str, torch.Tensor], densenet_state_dict: dict[str, torch.Tensor]
) -> None:
    assert synthetic_state.keys() == densenet_state_dict.keys()
    for key, value in densenet_state_dict.items():
        got = synthetic_state[key]
        assert got.shape == value.shape and got.dtype == value.dtype, key
        assert torch.isfinite(got.float()).all(), key


@pytest.mark.slow
def test_held_out_predictions_are_spread_and_confident(held_out_logits: torch.Tensor) -> None:
    """Pins what makes fp32-vs-variant agreement meaningful.

    Measured (recipe v2, 256 images): 248 distinct, 2 on one class, median softmax 0.93,
    median margin 4.05 logits; the thresholds leave room for BLAS/platform differences.
    """
    top1 = held_out_logits.argmax(dim=1)
    top2 = held_out_logits.topk(2, dim=1).values
    distinct = top1.unique().numel()
    most_on_one = int(top1.bincount().max())
    median_softmax = held_out_logits.softmax(dim=1).max(dim=1).values.median().item()
    median_margin = (top2[:, 0] - top2[:, 1]).median().item()
    summary = f"distinct={distinct} most_on_one={most_on_one} softmax={median_softmax:.3f} margin={median_margin:.2f}"
    assert distinct >= 200, summary
    assert most_on_one <= 8, summary
    assert median_softmax >= 0.7, summary
    assert median_margin >= 2.0, summary
