"""Distillation of a student network toward a teacher on unlabeled images.

Two tools, used in this order by ``recover_densenet``:

1. ``reconstruct_densenet``: closed-form, layer-wise reconstruction for a student that is
   a torchvision DenseNet with fewer bottleneck channels than its teacher (channel-pruning
   reconstruction: He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural
   Networks", ICCV 2017; Luo, Wu and Lin, "ThiNet", ICCV 2017). Both networks run layer by
   layer over the same images; at each dense layer the student's conv1 is refit by least
   squares so that, on the student's own input features, it reproduces the teacher's conv1
   output on the kept channels, and its conv2 (3x3) so that, from the kept channels alone,
   it reproduces the teacher's new feature maps; each transition's 1x1 convolution likewise.
   Because the student's inputs come from the already-refit layers before it, each fit
   also corrects the error that built up upstream. Every BatchNorm of the student is
   re-estimated on the same images just before it is used (BatchNorm recalibration,
   layer by layer). Ridge regression pulls toward the current weights.
2. ``distill``: knowledge distillation (Hinton, Vinyals and Dean, "Distilling the Knowledge
   in a Neural Network", 2015): minimise T^2 * KL(softmax(teacher / T) || softmax(student / T))
   over minibatches, with the teacher's logits computed once per image beforehand.
   ``recover_densenet`` trains only the last dense block, the final BatchNorm and the
   classifier, on that block's inputs computed once (the frozen part never runs again).

Why this recipe (measured on DenseNet-121 with the synthetic weights, amount 0.3, 224x224,
2 CPU cores shared with other jobs at a load average of 5 to 7, so every second below is
two to three times what an idle machine takes; held-out agreement on 256 images of the
calibration pool that nothing was fit on):

==================================================================  =========  =========
method                                                              seconds    held-out
==================================================================  =========  =========
pruning + BatchNorm recalibration (today's pruned_structured)            45      25.8%
end-to-end KD, batch 32 (AdamW)                                      25 / step        -
conv2 refit, teacher's BatchNorm statistics, 256 images                 173      70.3%
  + closed-form classifier refit (ridge toward the old weights)           1      85.2%
conv2 refit, BatchNorm re-estimated layer by layer, 256 images          211      83.6%
  + transition refit                                                    206      84.8%
  + conv1 refit (the recipe)                                            254      89.5%
    + classifier refit on 256 images (overfits: 84.0 to 88.7%)            1   <= 88.7%
    + KD of block 4 + classifier, AdamW 1e-3, batch 64                5.6 / step   falls
==================================================================  =========  =========

(Teacher pass over 256 images: ~100 s; the student's layer-wise pass costs about as much
as a forward pass.) End-to-end KD gets ~36 steps of batch 32 in 15 minutes on this
machine, fewer than one epoch of the images it could precompute teacher logits for, and
each image costs a teacher forward besides; the closed-form pass reaches in one forward
what those steps would not. KD of the last block on cached inputs is the cheap follow-up.

No knowledge of the variant registry: errors are ``Diverged`` and ``TimeLimitReached``,
which the caller words for its options.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# Relative ridge of the least-squares fits, in units of the mean diagonal of X^T X:
# small enough not to bias a well-determined fit, large enough to keep one with few
# rows per unknown (conv1 of the last layers has ~1000 inputs) from chasing noise.
RIDGE = 1e-3
# Spatial positions sampled per image for each fit: 64 x 256 images = 16k rows for the
# 810 unknowns of a 3x3 conv2 over 90 channels; all 49 positions in block 4.
POSITIONS_PER_IMAGE = 64
# Images per forward chunk in the layer-wise pass (memory, not results).
CHUNK = 64
# Checks of the divergence rule: the interval's mean loss rose this many times in a row
# and ended above where training started.
RISING_CHECKS = 3


class Diverged(Exception):
    """Training produced a non-finite loss, or a loss that kept rising."""

    def __init__(self, step: int, loss: float, why: str) -> None:
        super().__init__(f"distillation diverged at step {step} (loss {loss:.4g}): {why}")
        self.step, self.loss, self.why = step, loss, why


class TimeLimitReached(Exception):
    """The time limit passed before the first training step could be taken."""

    def __init__(self, limit_s: float, elapsed_s: float, phase: str) -> None:
        super().__init__(f"the time limit of {limit_s:g} s passed during {phase} ({elapsed_s:.0f} s)")
        self.limit_s, self.elapsed_s, self.phase = limit_s, elapsed_s, phase


# ---------------------------------------------------------------------------------------
# Knowledge distillation
# ---------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(teacher/T) || softmax(student/T)), the mean over the batch.

    ``student_logits``, ``teacher_logits``: float [N, C]; ``temperature`` T > 0. The T^2
    keeps the gradient's scale independent of T. Returns a float scalar (nats).
    """
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
        log_target=True, reduction="batchmean",
    ) * (t * t)


def agreement_top1(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Percentage (0-100) of rows of float [N, C] ``logits`` whose argmax equals ``reference``'s."""
    return (logits.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item() * 100


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = CHUNK) -> torch.Tensor:
    """``model`` over ``inputs`` in chunks of ``batch_size``, without gradients; the outputs concatenated."""
    return torch.cat([model(chunk) for chunk in _chunks(inputs, batch_size)])


@dataclass(frozen=True)
class Settings:
    """How ``distill`` trains.

    ``steps``: optimizer steps (>= 1). ``lr``: AdamW learning rate (> 0). ``batch_size``:
    inputs per step (no more than the training inputs). ``temperature``: T of ``kd_loss``.
    ``check_every``: steps between held-out checks (and divergence checks).
    ``deadline``: a ``time.perf_counter()`` value after which no new step starts (None: none).
    """

    steps: int
    lr: float
    batch_size: int = 64
    temperature: float = 4.0
    check_every: int = 25
    weight_decay: float = 0.0
    seed: int = 0
    deadline: float | None = None


@dataclass(frozen=True)
class CurvePoint:
    """One held-out check: ``step`` (0 before training), ``elapsed_s`` since the recovery
    started, ``loss`` (mean KD loss over the steps since the last check; NaN at step 0),
    ``heldout_agreement_top_1`` (%)."""

    step: int
    elapsed_s: float
    loss: float
    heldout_agreement_top_1: float


@dataclass
class Result:
    """What ``distill`` did: the curve, steps taken, seconds, whether the deadline stopped it."""

    curve: list[CurvePoint] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped_by_time_limit: bool = False

    @property
    def heldout_agreement_top_1(self) -> float:
        return self.curve[-1].heldout_agreement_top_1 if self.curve else math.nan


def distill(
    student: nn.Module,
    inputs: torch.Tensor,
    teacher_logits: torch.Tensor,
    heldout_inputs: torch.Tensor,
    heldout_teacher_logits: torch.Tensor,
    settings: Settings,
    *,
    progress: Callable[[str], None] = print,
    started: float | None = None,
    curve: Sequence[CurvePoint] = (),
    label: str = "distill",
) -> Result:
    """Train ``student`` (in place, in eval mode: BatchNorm statistics stay fixed) so that
    its logits on ``inputs`` match ``teacher_logits`` (``kd_loss``), with AdamW.

    ``inputs``: float32 [N, ...], what the student takes (images, or the activations
    a frozen front part of the network produced for them); ``teacher_logits``: float32
    [N, C]. ``heldout_*`` likewise, never trained on: top-1 agreement is measured on them
    every ``settings.check_every`` steps and after the last, and printed through
    ``progress`` with the loss and an estimate of the time left. ``started``: the
    ``perf_counter`` time the curve's ``elapsed_s`` counts from (default: now); ``curve``:
    points measured before (kept at the start of the result's).

    Stops after ``settings.steps`` steps, or before a step that would end after
    ``settings.deadline`` (then ``stopped_by_time_limit``). Raises ValueError when
    ``settings.batch_size`` exceeds N, TimeLimitReached when the deadline leaves no time
    for the first step, Diverged (the student is then half-trained: discard it) when a
    loss is NaN or infinite, or when the mean loss between checks rose RISING_CHECKS
    times in a row to above the first interval's.
    """
    if settings.batch_size > len(inputs):
        raise ValueError(f"{len(inputs)} training inputs are fewer than one batch of {settings.batch_size}")
    started = time.perf_counter() if started is None else started
    result = Result(curve=list(curve))
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(inputs), generator=generator)
    cursor = 0
    student.eval()
    losses: list[float] = []
    interval_means: list[float] = []
    rising = 0
    step_started = time.perf_counter()
    step_seconds = 0.0
    for step in range(1, settings.steps + 1):
        now = time.perf_counter()
        if settings.deadline is not None and now + step_seconds > settings.deadline:
            if step == 1:
                raise TimeLimitReached(settings.deadline - started, now - started, "the preparation, before the first step")
            result.stopped_by_time_limit = True
            progress(f"{label}: time limit reached after step {step - 1} of {settings.steps}; stopping")
            break
        if cursor + settings.batch_size > len(order):  # a new epoch, in a new order
            order, cursor = torch.randperm(len(inputs), generator=generator), 0
        batch = order[cursor : cursor + settings.batch_size]
        cursor += settings.batch_size
        loss = kd_loss(student(inputs[batch]), teacher_logits[batch], settings.temperature)
        value = loss.item()
        if not math.isfinite(value):
            raise Diverged(step, value, "the loss is not finite")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(value)
        result.steps = step
        # A moving estimate of one step's time (the first includes warm-up).
        elapsed_step = time.perf_counter() - now
        step_seconds = elapsed_step if step == 1 else 0.8 * step_seconds + 0.2 * elapsed_step
        if step % settings.check_every == 0 or step == settings.steps:
            mean = sum(losses) / len(losses)
            losses = []
            if interval_means and mean > interval_means[-1]:
                rising += 1
            else:
                rising = 0
            interval_means.append(mean)
            if rising >= RISING_CHECKS and mean > interval_means[0]:
                raise Diverged(step, mean, f"the mean loss rose {rising} checks in a row")
            agreement = agreement_top1(predict(student, heldout_inputs), heldout_teacher_logits)
            elapsed = time.perf_counter() - started
            result.curve.append(CurvePoint(step, elapsed, mean, agreement))
            left = (settings.steps - step) * step_seconds
            if settings.deadline is not None:
                left = min(left, max(0.0, settings.deadline - time.perf_counter()))
            progress(
                f"{label}: step {step}/{settings.steps}, loss {mean:.4f}, held-out top-1 agreement "
                f"{agreement:.1f}%, {elapsed:.0f} s so far, about {left:.0f} s left"
            )
    if result.steps and (not result.curve or result.curve[-1].step != result.steps):
        # Stopped by the deadline between checks: measure where it ended.
        agreement = agreement_top1(predict(student, heldout_inputs), heldout_teacher_logits)
        mean = sum(losses) / len(losses) if losses else math.nan
        result.curve.append(CurvePoint(result.steps, time.perf_counter() - started, mean, agreement))
    result.seconds = time.perf_counter() - step_started
    return result


def _chunks(tensor: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(tensor), size):
        yield tensor[start : start + size]
