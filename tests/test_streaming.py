"""Accuracy over a streamed evaluation set: same images and labels as decoding them all,
exact engine batches, a corrupt image as one sentence, and memory that does not grow with N."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from densenet_opt import data
from densenet_opt.accuracy import fidelity, predict
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.sweep import preflight
from densenet_opt.workbench import MAX_REFERENCE_BATCH, Workbench

WNIDS = ("n01440764", "n01443537", "n01484850")  # torchvision classes 0, 1, 2


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """3 classes x 3 JPEGs of different sizes and colours, ImageFolder layout."""
    root = tmp_path / "val"
    for c, wnid in enumerate(WNIDS):
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            size = (260 + 40 * i, 240 + 30 * c)
            Image.new("RGB", size, (40 * c + 20, 70 * i + 10, 90)).save(root / wnid / f"img_{i}.JPEG")
    return root


def _tiny_engine(batch_size: int | None = None) -> torch.nn.Module:
    """[B,3,224,224] -> [B,1000] logits in microseconds; asserts a static batch size if given."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 1000)
    ).eval()

    def engine(batch: torch.Tensor) -> torch.Tensor:
        assert batch_size is None or len(batch) == batch_size, len(batch)
        with torch.inference_mode():
            return net(batch)

    return engine


@pytest.mark.parametrize("workers", [0, 2])
def test_a_synthetic_stream_gives_the_images_load_eval_set_decodes(workers: int) -> None:
    stream = data.open_eval_stream(None, 21, skip=3, num_workers=workers)
    decoded = data.load_eval_set(None, 21, skip=3)
    assert len(stream) == 21 and stream.source == decoded.source
    assert torch.equal(stream.labels, decoded.labels) and stream.label_kind == decoded.label_kind
    assert stream.labels.tolist() == list(range(3, 24))
    chunks = list(stream)
    assert [len(c) for c in chunks] == [16, 5] and chunks[0].dtype == torch.float32
    if workers == 0:
        assert torch.equal(torch.cat(chunks), decoded.images)
    else:  # rendered with one BLAS thread per worker: OpenBLAS's sums may round differently
        torch.testing.assert_close(torch.cat(chunks), decoded.images, rtol=0, atol=1e-5)
    assert torch.equal(stream.head(4), decoded.images[:4])


@pytest.mark.parametrize("workers", [0, 2])
def test_an_imagenet_stream_gives_the_same_images_labels_and_order(image_folder: Path, workers: int) -> None:
    stream = data.open_eval_stream(image_folder, 7, skip=1, num_workers=workers)
    decoded = data.load_eval_set(image_folder, 7, skip=1)
    assert stream.source == decoded.source and torch.equal(stream.labels, decoded.labels)
    assert stream.labels.tolist() == [1, 2, 0, 1, 2, 0, 1]  # class round-robin after skipping one
    assert torch.equal(torch.cat(list(stream)), decoded.images)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_one_sentence_naming_it_also_from_a_worker(image_folder: Path, workers: int) -> None:
    bad = image_folder / WNIDS[1] / "img_2.JPEG"
    bad.write_bytes(b"not a jpeg")
    stream = data.open_eval_stream(image_folder, 9, num_workers=workers)
    with pytest.raises(UserError) as caught:
        predict(_tiny_engine(), stream, 4)
    message = str(caught.value)
    assert message.startswith(f"{bad} is not a readable image") and message.endswith("delete or replace it.")
    assert "\n" not in message and "worker" not in message


@pytest.mark.parametrize("torch_message", [
    "DataLoader worker (pid 4242) is killed by signal: Bus error. It is possible that dataloader's workers are out of "
    "shared memory. Please try to raise your shared memory limit.",
    "Caught RuntimeError in DataLoader worker process 0. RuntimeError: unable to write to file </torch_4242_1_0>: "
    "No space left on device (28)",
])
def test_workers_out_of_shared_memory_is_one_sentence_with_the_remedy(image_folder: Path, monkeypatch, torch_message: str) -> None:
    """Docker's default 64 MB /dev/shm with the default workers: torch's worker dies with a
    bus error, or cannot write its tensor there, and a 140-line traceback followed; now one
    sentence names both remedies."""

    class ShmExhausted:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __iter__(self):
            raise RuntimeError(torch_message)

    monkeypatch.setattr(torch.utils.data, "DataLoader", ShmExhausted)
    stream = data.open_eval_stream(image_folder, 9, num_workers=2)
    with pytest.raises(UserError) as caught:
        list(stream)
    message = str(caught.value)
    assert message.startswith("the data loader's workers ran out of shared memory")
    assert message.endswith("pass --data-workers 0, or give the machine more (in Docker: docker run --shm-size=2g or --ipc=host)")
    assert "\n" not in message


@pytest.mark.parametrize("batch_size", [1, 3, 16, 20, 64])
def test_predict_over_a_stream_equals_predict_over_the_tensor(batch_size: int) -> None:
    stream = data.open_eval_stream(None, 37, num_workers=0)
    images = torch.cat(list(stream))
    engine = _tiny_engine(batch_size)  # every call exactly batch_size, the last one padded
    streamed = predict(engine, stream, batch_size)
    assert streamed.shape == (37, 1000) and streamed.dtype == torch.float32
    torch.testing.assert_close(streamed, predict(engine, images, batch_size), rtol=0, atol=1e-6)


def test_predict_closes_the_stream_when_the_engine_fails() -> None:
    closed = []

    class Stream:
        def __len__(self) -> int:
            return 64

        def __iter__(self):
            try:
                for _ in range(4):
                    yield torch.zeros(16, 3, 2, 2)
            finally:
                closed.append(True)

    def engine(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(RuntimeError, match="allocate"):
        predict(engine, Stream(), 8)
    assert closed == [True]


def test_a_stream_shorter_than_its_length_is_an_error() -> None:
    class Short:
        def __len__(self) -> int:
            return 10

        def __iter__(self):
            yield torch.zeros(6, 3, 2, 2)

    with pytest.raises(ValueError, match="yielded 6 images, not its 10"):
        predict(lambda batch: batch.flatten(1), Short(), 4)


# Peak RSS as measure.memory reads it (VmHWM: this process's own high-water mark; ru_maxrss
# would start at the spawning process's, which exec passes on after a vfork).
_PEAK_SCRIPT = """
import json, resource, sys, torch
from densenet_opt import data
from densenet_opt.accuracy import fidelity, predict
from densenet_opt.measure.memory import peak_rss_bytes
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                          torch.nn.Linear(8, 1000)).eval()
def engine(batch):
    with torch.inference_mode():
        return net(batch)
n = int(sys.argv[1])
stream = data.open_eval_stream(None, n, num_workers=2)
logits = predict(engine, stream, 32)
# As in Sweep: the engine's and the reference's logits both kept (one pass is rendered here,
# to keep the test short: a second pass would allocate the same again, not more).
result = fidelity(logits, logits.clone(), None)
print(json.dumps({"self_kib": peak_rss_bytes() // 1024, "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "workers_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "agreement": result.agreement_top_1}))
"""


def _peak_rss_of_streaming_evaluation(count: int) -> dict:
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(count)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_of_a_streamed_evaluation_does_not_grow_with_n() -> None:
    """4096 decoded images would be 2.3 GiB (602 KB each); streamed, only the logits and
    fidelity's temporaries grow (2 x 4 KB an image kept, 30 MB more at 4096 than at 256)."""
    small, large = _peak_rss_of_streaming_evaluation(256), _peak_rss_of_streaming_evaluation(4096)
    assert small["agreement"] == large["agreement"] == 100.0
    grown_mib = (large["self_kib"] - small["self_kib"]) / 1024
    workers_grown_mib = (large["workers_kib"] - small["workers_kib"]) / 1024
    print(f"peak RSS: {small['self_kib'] / 1024:.0f} MiB at N=256, {large['self_kib'] / 1024:.0f} MiB at N=4096; "
          f"workers {small['workers_kib'] / 1024:.0f} / {large['workers_kib'] / 1024:.0f} MiB")
    assert grown_mib < 100, (small, large)
    assert workers_grown_mib < 100, (small, large)


@pytest.mark.slow
def test_the_reference_runs_at_a_bounded_batch_and_halves_it_on_out_of_memory(tmp_path: Path, monkeypatch) -> None:
    def workbench(sizes: str) -> Workbench:
        return Workbench(options_from_mapping({"batch_sizes": sizes, "variants": "baseline", "device": "cpu",
                                               "output_dir": str(tmp_path), "num_samples": "4",
                                               "data_workers": "0"}), progress=lambda message: None)

    assert workbench("1,4").reference_batch_size == 4
    assert workbench("1,256").reference_batch_size == MAX_REFERENCE_BATCH == 32

    tried = []

    def predict(engine, images, batch_size):  # a host whose allocator refuses batches above 8
        tried.append(batch_size)
        if batch_size > 8:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return torch.zeros(len(images), 1000)

    monkeypatch.setattr("densenet_opt.workbench.predict", predict)
    large = workbench("1,256")
    monkeypatch.setattr(Workbench, "reference_model", lambda self: torch.nn.Identity())
    assert large.reference_logits.shape == (4, 1000)
    assert tried == [32, 16, 8]


@pytest.mark.slow
def test_the_sweep_streams_its_evaluation_set(tmp_path: Path) -> None:
    workbench = Workbench(options_from_mapping({"batch_sizes": "4", "variants": "baseline", "device": "cpu", "num_samples": "6",
                                                "data_workers": "0", "output_dir": str(tmp_path)}), progress=lambda m: None)
    assert isinstance(workbench.eval_set, data.EvalStream) and len(workbench.eval_set) == 6
    assert workbench.eval_set.num_workers == 0
    batch = workbench.input_batch(8)  # the first images, repeated when the set is smaller
    assert batch.shape == (8, 3, 224, 224)
    assert torch.equal(batch[6:], batch[:2]) and torch.equal(batch[:6], data.load_eval_set(None, 6).images)
    engine = _tiny_engine(4)
    logits = predict(engine, workbench.eval_set, 4)
    assert fidelity(logits, logits, None).agreement_top_1 == 100.0


def test_data_workers_default_to_at_most_four() -> None:
    assert 1 <= data.default_num_workers() <= 4
    assert options_from_mapping({"data_workers": "auto"}).data_workers is None
    assert options_from_mapping({"data_workers": "0"}).data_workers == 0
    with pytest.raises(UserError, match="--data-workers must be at least 0"):
        options_from_mapping({"data_workers": "-1"})
    options = options_from_mapping({"data_workers": "3"})
    assert type(options).from_dict(options.to_dict()) == options  # how child processes get them


def test_the_full_validation_set_passes_validation(tmp_path: Path) -> None:
    """--num-samples 50000 with a folder of all 50,000 val images (empty files: listing and
    validation never decode)."""
    root = tmp_path / "val"
    for wnid in data.imagenet_wnids():
        (root / wnid).mkdir(parents=True)
        for i in range(50):
            (root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG").touch()
    options = options_from_mapping({"imagenet_val": str(root), "num_samples": "50000", "variants": "baseline",
                                    "device": "cpu", "output_dir": str(tmp_path / "out")})
    preflight(options)
    stream = data.open_eval_stream(root, 50000, num_workers=0)
    assert len(stream) == 50000 and torch.equal(torch.bincount(stream.labels), torch.full((1000,), 50))
    with pytest.raises(UserError, match="Asked for 50001 samples but .* has only 50000 usable images"):
        preflight(options_from_mapping({"imagenet_val": str(root), "num_samples": "50001", "variants": "baseline",
                                        "device": "cpu", "output_dir": str(tmp_path / "out")}))


def test_too_few_images_to_calibrate_is_found_before_anything_is_built(tmp_path: Path) -> None:
    """--calibration-samples beyond what the folder has after the evaluated images: found by
    the preflight for a variant that calibrates (named with the options to change), not when
    onnx_int8 builds after the variants before it have run; a sweep that does not calibrate
    needs no more than its evaluated images."""
    root = tmp_path / "val"
    for wnid in data.imagenet_wnids()[:10]:
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            (root / wnid / f"ILSVRC2012_val_{i:08d}.JPEG").touch()

    def options(variants: str, calibration: str = "128"):
        return options_from_mapping({"imagenet_val": str(root), "num_samples": "20", "calibration_samples": calibration,
                                     "variants": variants, "device": "cpu", "output_dir": str(tmp_path / "out")})

    preflight(options("baseline,onnx"))
    preflight(options("baseline,onnx_int8", calibration="10"))  # 20 + 10 of 30
    for variants in ("baseline,onnx_int8", "pruned_structured+onnx", "int8"):
        with pytest.raises(UserError) as error:
            preflight(options(variants))
        assert str(error.value) == (
            f"{variants.split(',')[-1]} calibrates on 128 images beyond the --num-samples 20 evaluated ones, but {root} "
            "has 30 usable images: lower --calibration-samples or --num-samples, or point --imagenet-val at a larger folder")


@pytest.mark.slow
def test_resume_names_the_option_a_row_was_measured_without(tmp_path: Path) -> None:
    """What --resume compares (resume.resume_mismatch): a row measured with this run's inputs
    resumes; one of another weights file, sample count, data set, calibration or options is
    measured again, naming the option; a row of an older version (no inputs) too."""
    import dataclasses

    from densenet_opt import report
    from densenet_opt.resume import resume_mismatch, resume_plan

    options = options_from_mapping({"num_samples": "4", "weights": "synthetic", "device": "cpu",
                                    "output_dir": str(tmp_path / "out"), "variants": "baseline,onnx_int8"})
    workbench = Workbench(options)
    row = report.Row(optimization_technique="onnx_int8", batch_size=1, device="cpu", num_samples=4,
                     data=workbench.eval_set.source, inputs=workbench.inputs_of("onnx_int8"))
    assert resume_mismatch(workbench, row) is None
    assert resume_plan(workbench, {("baseline", 1)}) == (set(), {})  # only this run's configs are looked at
    other_weights = row.inputs.replace(f"weights={workbench.weights.key}", "weights=file-0123456789abcdef")
    cases = {
        "--weights": dataclasses.replace(row, inputs=other_weights),
        "--calibration-samples": dataclasses.replace(row, inputs=row.inputs.replace("calibration=128", "calibration=16")),
        "--variant-options": dataclasses.replace(row, inputs=row.inputs + "onnx_int8.float_nodes=0"),
        "--num-samples": dataclasses.replace(row, num_samples=8),
        "--imagenet-val": dataclasses.replace(row, data="imagenet-val /data/val (4 samples)"),
        "older version": dataclasses.replace(row, inputs=None),
    }
    assert {option: resume_mismatch(workbench, case) for option, case in cases.items()} == {option: option for option in cases}
    assert "calibration=none" in workbench.inputs_of("baseline")  # a variant that does not calibrate
