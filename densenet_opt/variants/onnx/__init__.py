"""ONNX Runtime variants: ``onnx`` (fp32), ``onnx_fp16`` and ``onnx_int8``.

The model is exported once (export.py) and cached on disk with the fp16 and int8 models
derived from it (quantize.py); an engine (engine.py) is an InferenceSession around one of
them, timed across the same boundary as every engine: host batch in, host float32 logits
out. providers.py chooses the execution provider and holds the session settings;
builders.py wires them into the three variants; graph_ops.py counts the ops of the
optimized CPU graphs.

Options (``--variant-options``): ``provider`` (auto, tensorrt, cuda, cpu) and ``threads``,
as ``onnx.<option>`` for all three variants or ``onnx_int8.<option>`` (likewise
onnx_fp16) for one, which wins. engine_info records the provider the session really
uses: onnxruntime falls back when TensorRT or CUDA fails to start, and a forced or int8
TensorRT session that fell back is not run.

- onnx: fp32 on any provider; TF32 is off on the CUDA provider so the numbers stay fp32.
- onnx_fp16: the float16 model (inputs and outputs stay float32, cast on the device at
  each end) on the CUDA or TensorRT provider; skipped on the CPU, whose provider has no
  fast float16 path on x86: it wraps most kernels in casts and runs slower than fp32
  (docs/results/amd-epyc_x86v4-vnni-bf16_2c.md#measurements-behind-the-design).
- onnx_int8: static QDQ int8 (quantize.py). On a CUDA machine with the TensorRT provider
  it runs on TensorRT's int8 path (explicit quantization); without TensorRT it runs on
  the CPU provider, and engine_info says so: the CUDA provider has no int8 convolutions,
  so it would only dequantize back to float.
"""

from densenet_opt.variants.onnx.builders import VARIANTS

__all__ = ["VARIANTS"]
