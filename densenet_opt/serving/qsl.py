"""The query sample library (QSL): the evaluation images, decoded before any test starts.

LoadGen asks the QSL to load a performance set of sample indices into RAM before a test
and to unload it after (``LoadSamplesToRam`` / ``UnloadSamplesFromRam``, LoadGen
``query_sample_library.h``); here every image is already decoded (data.load_eval_set,
as the sweep decodes its timed batch), so loading only records which indices LoadGen
chose, and nothing is decoded while a test runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from densenet_opt import data


class QuerySampleLibrary:
    """The images LoadGen's sample indices refer to: float32 [N,3,224,224], normalised.

    ``loaded``: the indices LoadGen last asked to load (the performance set).
    """

    def __init__(self, images: torch.Tensor, source: str = "") -> None:
        if images.ndim != 4 or images.dtype != torch.float32 or len(images) == 0:
            raise ValueError(f"the query sample library needs float32 [N,C,H,W] images, got {images.dtype} {tuple(images.shape)}")
        self.images = images.contiguous()
        self.source = source
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def load_samples_to_ram(self, indices: list[int]) -> None:
        """LoadGen's callback: the images are decoded already; remember the set."""
        self.loaded = list(indices)

    def unload_samples_from_ram(self, indices: list[int]) -> None:
        """LoadGen's callback: nothing to free (the images stay for the next test)."""
        self.loaded = []

    def batch(self, indices: list[int], size: int) -> tuple[torch.Tensor, int]:
        """The images of ``indices`` as float32 [size,3,224,224], padded to ``size`` by
        repeating the last image (an engine built for a static batch accepts no other),
        and the number of padded rows. ValueError if more indices than ``size``."""
        if not 1 <= len(indices) <= size:
            raise ValueError(f"{len(indices)} samples do not fit a batch of {size}")
        padded = size - len(indices)
        rows = list(indices) + [indices[-1]] * padded
        return self.images.index_select(0, torch.tensor(rows, dtype=torch.int64)), padded


def load_library(imagenet_val: Path | None, num_samples: int, ground_truth: Path | None = None) -> QuerySampleLibrary:
    """``num_samples`` evaluation images (ImageNet-val when a path is given, else synthetic),
    decoded now in this process (data.load_eval_set); UserError for bad data or counts."""
    images = data.load_eval_set(imagenet_val, num_samples, ground_truth=ground_truth)
    return QuerySampleLibrary(images.images, images.source)
