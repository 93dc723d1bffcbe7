"""An engine around a torch module: shared by every PyTorch-side variant."""

from __future__ import annotations

import io

import torch


def state_dict_bytes(module: torch.nn.Module) -> int:
    """Size of the state_dict as torch.save writes it to disk."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


class TorchEngine:
    """Host batch in, host float32 logits out.

    Copying the logits back with ``.cpu()`` waits for the device, so the timed call
    covers the whole inference on CUDA too.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        device: torch.device,
        *,
        model_size_bytes: int,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        info: dict[str, str] | None = None,
    ) -> None:
        self.module = module
        self.device = device
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model_size_bytes = model_size_bytes
        self.info = {"backend": "torch", "dtype": str(dtype).removeprefix("torch."), "threads": str(torch.get_num_threads()), **(info or {})}

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = batch.to(self.device, non_blocking=True).to(
                dtype=self.dtype, memory_format=self.memory_format
            )
            return self.module(x).float().cpu()

    def close(self) -> None:
        self.module = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
