"""Weight sources: torchvision's cache, a file (state_dict or checkpoint), synthetic; bad files."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torchvision.models import densenet121, resnet18

from densenet_opt import model
from densenet_opt.errors import UserError


def _logits(module: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return module.eval()(torch.ones(1, 3, 64, 64))


@pytest.mark.slow
def test_state_dict_file_round_trips(tmp_path: Path, densenet_state_dict) -> None:
    path = tmp_path / "weights.pt"
    torch.save(densenet_state_dict, path)
    weights = model.resolve_weights(str(path), cache_dir=tmp_path)
    assert weights.trained and weights.source == str(path) and weights.key.startswith("file-")
    reference = densenet121(weights=None)
    reference.load_state_dict(densenet_state_dict)
    assert torch.equal(_logits(model.build_model(weights)), _logits(reference))


@pytest.mark.slow
def test_checkpoint_with_dataparallel_prefix_and_old_keys(tmp_path: Path, densenet_state_dict) -> None:
    # The old torchvision naming ('norm.1.weight') and a DataParallel 'module.' prefix.
    old_style = {}
    for key, value in densenet_state_dict.items():
        if key.endswith("num_batches_tracked"):  # old checkpoints predate it
            continue
        for new, old in (("norm1.", "norm.1."), ("norm2.", "norm.2."), ("conv1.", "conv.1."), ("conv2.", "conv.2.")):
            if "denselayer" in key:
                key = key.replace(f".{new}", f".{old}")
        old_style[f"module.{key}"] = value
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": old_style}, path)
    loaded = model.load_state_dict_file(path)
    assert loaded.keys() == {k for k in densenet_state_dict if not k.endswith("num_batches_tracked")}
    weights = model.Weights(loaded, str(path), "test", trained=True)
    assert torch.equal(_logits(model.build_model(weights)), _logits(model.build_model(model.Weights(densenet_state_dict, "", "", True))))


@pytest.mark.slow
def test_wrong_architecture_names_the_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=r"not a DenseNet-121 state_dict: \d+ missing keys \(e.g. features.conv0.weight"):
        model.build_model(model.resolve_weights(str(path), cache_dir=tmp_path))


@pytest.mark.slow
def test_wrong_shape_is_reported(tmp_path: Path, densenet_state_dict) -> None:
    bad = dict(densenet_state_dict)
    bad["classifier.weight"] = torch.zeros(10, 1024)
    bad["classifier.bias"] = torch.zeros(10)
    path = tmp_path / "ten_classes.pt"
    torch.save(bad, path)
    with pytest.raises(UserError, match=r"2 shape mismatches \(e.g. classifier.weight \(10, 1024\) != \(1000, 1024\)"):
        model.build_model(model.resolve_weights(str(path), cache_dir=tmp_path))


@pytest.mark.slow
def test_missing_and_truncated_files(tmp_path: Path, densenet_state_dict) -> None:
    with pytest.raises(UserError, match="does not exist"):
        model.resolve_weights(str(tmp_path / "nope.pt"), cache_dir=tmp_path)
    path = tmp_path / "truncated.pt"
    torch.save(densenet_state_dict, path)
    path.write_bytes(path.read_bytes()[: 100_000])
    with pytest.raises(UserError, match="truncated"):
        model.resolve_weights(str(path), cache_dir=tmp_path)


class _PlantsMarker:
    """Unpickling this object would create a file: the attack weights_only stops."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as handle:
        pickle.dump({"features.conv0.weight": _PlantsMarker(marker)}, handle, protocol=2)  # torch.save's protocol
    with pytest.raises(UserError, match="can run arbitrary code.*--allow-unsafe-weights"):
        model.resolve_weights(str(path), cache_dir=tmp_path)
    assert not marker.exists()


@pytest.mark.slow
def test_torchvision_weights_from_the_local_hub_cache(tmp_path: Path, monkeypatch, densenet_state_dict) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(UserError, match="not in the local torch hub cache"):
        model.resolve_weights(model.TORCHVISION, cache_dir=tmp_path)
    path = model.torchvision_weights_path()
    assert path.is_relative_to(tmp_path) and path.name == "densenet121-a639ec97.pth"
    path.parent.mkdir(parents=True)
    torch.save(densenet_state_dict, path)
    weights = model.resolve_weights(model.AUTO, cache_dir=tmp_path)
    assert weights.source == model.TORCHVISION and weights.trained
    model.build_model(weights)


@pytest.mark.slow
def test_other_weights_under_the_hub_files_name_get_another_key(tmp_path: Path, monkeypatch, densenet_state_dict) -> None:
    """--weights torchvision (and auto) keyed every artifact by the file's constant name: other
    DenseNet-121 weights copied over the hub file then reused the first weights' ONNX export
    (agreement 0.0%, exit 0). The key follows the file's bytes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = model.torchvision_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(densenet_state_dict, path)
    first = model.resolve_weights(model.TORCHVISION, cache_dir=tmp_path)
    assert model.resolve_weights(model.AUTO, cache_dir=tmp_path).key == first.key  # same bytes, same key
    other = {name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in densenet_state_dict.items()}
    torch.save(other, path)
    assert model.resolve_weights(model.TORCHVISION, cache_dir=tmp_path).key != first.key
    assert model.state_dict_digest(other) != model.state_dict_digest(densenet_state_dict)


@pytest.mark.slow
def test_auto_falls_back_to_synthetic_with_a_notice(tmp_path: Path, monkeypatch, densenet_state_dict) -> None:
    import densenet_opt.synthetic as synthetic

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(synthetic, "load_or_build_synthetic_state_dict", lambda **kwargs: densenet_state_dict)
    notices: list[str] = []
    weights = model.resolve_weights(model.AUTO, cache_dir=tmp_path, progress=notices.append)
    assert weights.source == model.SYNTHETIC and not weights.trained
    assert len(notices) == 1 and "using synthetic weights" in notices[0] and "agreement" in notices[0]


def test_a_zero_byte_weights_file_says_it_is_empty(tmp_path: Path) -> None:
    """torch.load's error for an empty file has no text: the sentence says what it is, not "()"."""
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match=r"weights file .*empty\.pth is not a readable PyTorch file \(it is empty\): is it truncated"):
        model.load_state_dict_file(empty)
