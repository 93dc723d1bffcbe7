"""The input the model expects: one source for the image shape and the ImageNet normalisation.

Everything comes from the evaluation transforms torchvision ships with the weights
(``DenseNet121_Weights.IMAGENET1K_V1.transforms()``: bilinear resize of the shorter side to
256 with antialiasing, centre crop 224, scale to [0, 1], ImageNet mean/std), so the
decoded images, the synthetic images and every exported or compiled model agree on
the shape and the normalisation the weights were trained with.
"""

from __future__ import annotations

import torch
from torchvision.models import DenseNet121_Weights

# Also model.TORCHVISION_WEIGHTS; not imported from there, since model imports synthetic,
# which imports this module.
WEIGHTS = DenseNet121_Weights.IMAGENET1K_V1


def eval_transform() -> torch.nn.Module:
    """torchvision's evaluation preset for the weights (an ImageClassification module):
    a PIL RGB image (or a uint8 tensor [3,H,W]) in, a float32 [3,224,224] normalised
    tensor out."""
    return WEIGHTS.transforms()


_PRESET = eval_transform()
CROP_SIZE: int = _PRESET.crop_size[0]
# One image as the model takes it: (channels, height, width).
IMAGE_SHAPE: tuple[int, int, int] = (3, CROP_SIZE, CROP_SIZE)
# Per-channel (R, G, B) mean and standard deviation of ImageNet, on the [0, 1] scale.
IMAGENET_MEAN: tuple[float, float, float] = tuple(_PRESET.mean)
IMAGENET_STD: tuple[float, float, float] = tuple(_PRESET.std)
