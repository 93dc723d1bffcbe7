"""densenet_opt.preprocessing: the one source of the input shape and the ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from densenet_opt import data, preprocessing, synthetic
from densenet_opt.preprocessing import IMAGE_SHAPE, IMAGENET_MEAN, IMAGENET_STD, eval_transform


def previous_pipeline() -> v2.Compose:
    """The transform data.py built by hand before it took torchvision's preset."""
    return v2.Compose(
        [
            v2.Resize(256, antialias=True),
            v2.CenterCrop(224),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (224, 224), (97, 131)])
def test_the_preset_gives_the_tensors_of_the_previous_pipeline(size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    ours, before = eval_transform()(image), previous_pipeline()(image)
    assert ours.shape == before.shape == IMAGE_SHAPE and ours.dtype == torch.float32
    torch.testing.assert_close(ours, before, rtol=0, atol=1e-6)


def test_constants_come_from_the_weights_preset() -> None:
    preset = preprocessing.WEIGHTS.transforms()
    assert IMAGE_SHAPE == (3, *preset.crop_size * 2) == (3, 224, 224)
    assert (IMAGENET_MEAN, IMAGENET_STD) == (tuple(preset.mean), tuple(preset.std))
    assert data.IMAGENET_MEAN is IMAGENET_MEAN and data.eval_transform is eval_transform
    assert synthetic.IMAGENET_STD is IMAGENET_STD and synthetic.IMAGE_SIZE == IMAGE_SHAPE[-1]
