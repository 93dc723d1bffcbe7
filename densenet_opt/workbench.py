"""The workbench: what building and checking an engine needs, resolved once and shared.

Weights, the evaluation and calibration images, the fp32 reference model and its logits,
what the labels measure, FLOPs per image, and the BuildContext every variant's engine is
built from. The sweep's measurement (sweep.Sweep) holds one; the probe's fresh process,
profiling, the LoadGen and fleet commands, compare's workers and tools/ build engines or
read data through one and measure nothing. Everything is resolved on first use.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import time
from collections.abc import Callable
from functools import cached_property

import torch

from densenet_opt import data, model
from densenet_opt.accuracy import ACCURACY, SYNTHETIC_ACCURACY, Fidelity, fidelity, predict
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.faults import classify_fault
from densenet_opt.flops import count_flops
from densenet_opt.report import OUT_OF_MEMORY, printable_path_text
from densenet_opt.variants import BuildContext, Engine, get_variant, parse_variant_options
from densenet_opt.variants.torch_engine import TorchEngine

# Largest batch the fp32 reference logits are computed at (see Workbench.reference_batch_size).
MAX_REFERENCE_BATCH = 32


def calibration_shortage(options: SweepOptions, count: int, variant: str | None = None) -> str:
    """The sentence for a data set with fewer than ``count`` images beyond the evaluated ones."""
    have = data.count_samples(options.imagenet_val, options.ground_truth)
    who = f"{variant} calibrates on" if variant else "a variant's calibration (and any search) needs"
    return (f"{who} {count} images beyond the --num-samples {options.num_samples} evaluated ones, but "
            f"{printable_path_text(str(options.imagenet_val))} has {have} usable images: lower --calibration-samples or --num-samples, "
            "or point --imagenet-val at a larger folder")


class Workbench:
    """The weights, evaluation data, fp32 reference and build contexts of one set of
    options, each resolved once on first use, and the engines built from them."""

    def __init__(
        self, options: SweepOptions, progress: Callable[[str], None] = print,
        wrap_engine: Callable[[str, int, Engine], Engine] | None = None,
    ) -> None:
        """``wrap_engine(variant, batch_size, engine)`` may replace every engine built here
        (the pytest plugin passes its ``pytest_densenet_opt_engine`` hook)."""
        self.options = options
        self.device = torch.device(options.device)
        self.progress = progress
        self.wrap_engine = wrap_engine or (lambda variant, batch_size, engine: engine)
        # Seconds spent on what every config shares and the first one pays for: resolving
        # (or building) the weights and the fp32 reference logits. The clock leaves it out
        # of that config's time, which estimates the others (schedule.SweepClock).
        self.shared_setup_s = 0.0
        # Per variant: --variant-options on top of the user's (a search the time budget skipped).
        self._overrides: dict[str, dict[str, str]] = {}

    def override_options(self, variant: str, values: dict[str, str]) -> None:
        """Build ``variant`` with these --variant-options on top of the user's."""
        self._overrides.setdefault(variant, {}).update(values)

    def options_for(self, variant: str) -> SweepOptions:
        """The options ``variant`` is built and probed with: the user's, with its overrides."""
        extra = self._overrides.get(variant)
        if not extra:
            return self.options
        return dataclasses.replace(self.options, variant_options={**self.options.variant_options, **extra})

    @cached_property
    def weights(self) -> model.Weights:
        """The resolved weights (downloaded, loaded or built on first use; their time counts
        in ``shared_setup_s``). Raises UserError for a weights file that cannot be used."""
        started = time.perf_counter()
        try:
            return model.resolve_weights(
                self.options.weights,
                cache_dir=self.options.cache_dir,
                allow_pickle=self.options.allow_unsafe_weights,
                progress=self.progress,
            )
        finally:
            self.shared_setup_s += time.perf_counter() - started

    @cached_property
    def _reference(self) -> torch.nn.Module:
        return model.build_model(self.weights)

    def reference_model(self) -> torch.nn.Module:
        """A private fp32 copy on the CPU: variants may change it in place."""
        return copy.deepcopy(self._reference)

    @cached_property
    def eval_set(self) -> data.EvalStream:
        """The ``num_samples`` evaluation images as a stream (listed now, decoded by
        ``--data-workers`` processes each time accuracy is measured): memory does not grow
        with num_samples, except for the logits kept (4 KB an image)."""
        eval_set = data.open_eval_stream(
            self.options.imagenet_val, self.options.num_samples, ground_truth=self.options.ground_truth,
            num_workers=self.options.data_workers,
        )
        self.progress(f"evaluation data: {eval_set.source}, decoded by {eval_set.num_workers} worker(s) as it is used")
        return eval_set

    @property
    def accuracy_kind(self) -> str | None:
        """What the labels measure: ACCURACY for a trained network on ImageNet images,
        SYNTHETIC_ACCURACY for the synthetic weights on synthetic images (their head was
        fitted to those pseudo-classes: synthetic.py); None where labels mean nothing (a
        trained network on synthetic images, random weights on ImageNet): agreement only."""
        labels = self.eval_set.label_kind
        if self.weights.trained and labels == data.IMAGENET_LABELS:
            return ACCURACY
        if self.weights.source == model.SYNTHETIC and labels == data.SYNTHETIC_LABELS:
            return SYNTHETIC_ACCURACY
        return None

    @property
    def labels(self) -> torch.Tensor | None:
        """The evaluation images' labels, int64 [num_samples], where they measure something
        (``accuracy_kind``); None otherwise."""
        return self.eval_set.labels if self.accuracy_kind else None

    def calibration_images(self, count: int) -> torch.Tensor:
        """Images from the same source as the evaluated ones, but never the same images.
        Raises UserError naming the options to change when the data set has too few."""
        if self.options.imagenet_val is not None:
            try:
                data.select_samples(self.options.imagenet_val, count, skip=self.options.num_samples,
                                    ground_truth=self.options.ground_truth)
            except UserError:
                raise UserError(calibration_shortage(self.options, count)) from None
        return data.load_eval_set(
            self.options.imagenet_val, count, skip=self.options.num_samples, ground_truth=self.options.ground_truth
        ).images

    def calibration_labels(self, count: int) -> torch.Tensor | None:
        """The labels of ``calibration_images(count)``, int64 [count], where labels measure
        top-1 (``accuracy_kind``), else None; listed without decoding an image. Raises
        UserError as calibration_images does when the data set has too few."""
        if self.accuracy_kind is None:
            return None
        try:
            return data.open_eval_stream(self.options.imagenet_val, count, skip=self.options.num_samples,
                                         ground_truth=self.options.ground_truth, num_workers=0).labels
        except UserError:
            raise UserError(calibration_shortage(self.options, count)) from None

    def build_context(self, batch_size: int, variant: str | None = None) -> BuildContext:
        """What a variant builds its engine from at ``batch_size``: with ``variant``, its
        options include this workbench's overrides of it."""
        options = self.options if variant is None else self.options_for(variant)
        return BuildContext(
            device=self.device,
            batch_size=batch_size,
            reference_model=self.reference_model,
            calibration_images=self.calibration_images,
            calibration_samples=self.options.calibration_samples,
            weights_key=self.weights.key,
            cache_dir=self.options.cache_dir,
            options=parse_variant_options(options.variant_options),
            progress=self.progress,
            report_dir=self.options.output_dir,
            calibration_labels=self.calibration_labels,
        )

    def build_engine(self, variant: str, batch_size: int) -> Engine:
        """The engine of one config, passed through ``wrap_engine``; raises
        VariantUnavailable when the variant cannot run on this device."""
        engine = get_variant(variant).build_engine(self.build_context(batch_size, variant))
        return self.wrap_engine(variant, batch_size, engine)

    def inputs_of(self, variant: str) -> str:
        """The ``inputs`` column of ``variant``'s rows: the weights' key (their bytes), the
        calibration images (--calibration-samples, for a variant that calibrates) and the
        variant's own options (its parts' and shared prefixes' keys of --variant-options,
        with this workbench's overrides)."""
        parts = get_variant(variant).parts or (get_variant(variant),)
        names = {part.name for part in parts} | {part.shared_prefix for part in parts if part.shared_prefix}
        given = self.options_for(variant).variant_options
        own = ",".join(sorted(f"{key}={value}" for key, value in given.items() if key.partition(".")[0] in names))
        calibration = self.options.calibration_samples if get_variant(variant).calibrates else "none"
        return f"weights={self.weights.key};calibration={calibration};options={own}"

    def input_batch(self, batch_size: int) -> torch.Tensor:
        """The timed batch, float32 [batch_size,3,224,224]: the first images of the evaluation
        set (repeated if it is smaller), decoded and prepared outside any timed region;
        pinned on CUDA so the copy in is as fast as it can be."""
        count = min(batch_size, len(self.eval_set))
        images = self.eval_set.head(count)
        batch = images[torch.arange(batch_size) % count].contiguous()
        return batch.pin_memory() if self.device.type == "cuda" else batch

    @property
    def reference_batch_size(self) -> int:
        """The batch the fp32 reference starts at: the largest timed batch size, at most
        MAX_REFERENCE_BATCH (eager fp32 accepts any batch, so this is only a speed choice)."""
        return min(max(self.options.batch_sizes), MAX_REFERENCE_BATCH)

    @cached_property
    def reference_logits(self) -> torch.Tensor:
        """The fp32 model's logits, float32 [num_samples, 1000], over the same image stream
        the variants are evaluated on. Halves its batch on out of memory (down to 1): a batch
        size too large for this machine must cost only its own row, never the reference that
        every other config is compared with."""
        engine = TorchEngine(self.reference_model().to(self.device), self.device, model_size_bytes=0)
        batch_size = self.reference_batch_size
        started = time.perf_counter()
        try:
            while True:
                self.progress(f"fp32 reference logits on {len(self.eval_set)} images at batch {batch_size}")
                try:
                    return predict(engine, self.eval_set, batch_size)
                except Exception as error:
                    if batch_size == 1 or classify_fault(error) != OUT_OF_MEMORY:
                        raise
                    gc.collect()
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    batch_size //= 2
        finally:
            engine.close()
            self.shared_setup_s += time.perf_counter() - started

    @cached_property
    def reference_fidelity(self) -> Fidelity:
        """The fp32 reference's own accuracy: what accuracy drops are measured against."""
        return fidelity(self.reference_logits, self.reference_logits, self.labels, self.accuracy_kind or ACCURACY)

    @cached_property
    def reference_gflops_per_image(self) -> float:
        """GFLOPs of one image through the fp32 reference (FlopCounterMode's count / 1e9)."""
        return count_flops(self._reference) / 1e9

    def gflops_per_image(self, engine: Engine) -> float:
        """The variant's own count where its graph differs (structured pruning); otherwise the
        reference's, since FlopCounterMode cannot see int8, ONNX Runtime or compiled kernels
        and the same arithmetic at another precision is the same work."""
        return float(engine.info.get("gflops_per_image", self.reference_gflops_per_image))
