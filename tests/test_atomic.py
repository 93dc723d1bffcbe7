"""A full disk (or quota, or a read-only place) while writing any of the suite's files.

Every writer goes through densenet_opt.atomic.write_atomic: the failure is one sentence
naming the file and what to do, no temporary or partial file is left, and the file that
was there before is intact. A full disk is simulated without root (tests/full_disk.py):
files opened for writing under the folder take half of their first write, then fail
with ENOSPC.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from pytest_benchmark.storage.file import FileStorage
from pytest_benchmark.utils import get_machine_id

from densenet_opt import atomic, baselines, benchmark_session, cache, render, report, synthetic
from densenet_opt.render import markdown, plots
from densenet_opt.errors import UserError
from densenet_opt.variants import BuildContext, inductor
from densenet_opt.variants.onnx import export as onnx_export

from full_disk import full_open

NO_SPACE = "no space is left on the device; free space there or pass another"


def fill(monkeypatch, folder: Path, only: str | None = None) -> None:
    """From now on, writes under ``folder`` (to files named ``only``, if given) hit a full disk."""

    def matches(path: str) -> bool:
        return path.startswith(str(folder)) and (only is None or Path(path).name == only)

    fake = full_open(builtins.open, matches)
    monkeypatch.setattr(builtins, "open", fake)
    monkeypatch.setattr(io, "open", fake)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders anywhere under ``folder`` (ours are hidden: .NAME.XXXX)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def assert_one_sentence(error: pytest.ExceptionInfo, path: Path, option: str) -> None:
    message = str(error.value)
    assert message == f"cannot write {path}: {NO_SPACE} {option}", message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------------------


def test_a_full_disk_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out" / "results.txt"
    target.parent.mkdir()
    target.write_text("old")
    fill(monkeypatch, tmp_path)
    with pytest.raises(UserError) as error:
        atomic.write_text(target, "new " * 1000, option="--output-dir")
    assert_one_sentence(error, target, "--output-dir")
    assert target.read_text() == "old" and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space is left on the device; free space there or pass another --cache-dir"),
        (errno.EDQUOT, "the disk quota is exceeded; free space there or pass another --cache-dir"),
        (errno.EROFS, "the file system is read-only; pass a writable --cache-dir"),
        (errno.EACCES, "permission is denied; pass a writable --cache-dir"),
    ],
)
def test_each_kind_of_unwritable_place_is_one_sentence(tmp_path: Path, code: int, words: str) -> None:
    target = tmp_path / "model.pt"

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(code, os.strerror(code), str(tmp))

    with pytest.raises(UserError, match="^cannot write") as error:
        atomic.write_atomic(target, write, option="--cache-dir")
    assert str(error.value) == f"cannot write {target}: {words}"
    assert not target.exists() and leftovers(tmp_path) == []


def test_other_failures_propagate_unchanged_and_clean_up(tmp_path: Path) -> None:
    target = tmp_path / "model.pt"
    for failure in (ValueError("a bug"), KeyboardInterrupt()):
        def write(tmp: Path, failure=failure) -> None:
            tmp.write_bytes(b"half")
            raise failure

        with pytest.raises(type(failure)):
            atomic.write_atomic(target, write, option="--cache-dir")
        assert not target.exists() and leftovers(tmp_path) == []


def test_a_failure_that_gives_no_errno_on_a_full_disk_is_a_full_disk(tmp_path: Path, monkeypatch) -> None:
    """torch.save to a path (C++ writer) says only "file write failed"; a compiler says it in words."""
    target = tmp_path / "weights.pt"

    def torch_like(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(atomic, "free_bytes", lambda path: 0)
    with pytest.raises(UserError) as error:
        atomic.write_atomic(target, torch_like, option="--cache-dir")
    assert_one_sentence(error, target, "--cache-dir")
    monkeypatch.setattr(atomic, "free_bytes", lambda path: 10 << 30)
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):  # plenty of space: not ours to explain
        atomic.write_atomic(target, torch_like, option="--cache-dir")

    def compiler_like(tmp: Path) -> None:
        raise RuntimeError("C++ compile error: fatal error: error writing to /tmp/cc1.s: No space left on device")

    with pytest.raises(UserError, match="no space is left on the device"):
        atomic.write_atomic(target, compiler_like, option="--cache-dir")
    assert leftovers(tmp_path) == []


def test_a_failure_elsewhere_names_the_file_that_failed(tmp_path: Path) -> None:
    """The inductor cache in /tmp filling up, say, while our package is built."""
    elsewhere = "/tmp/torchinductor_x/abc.cpp"

    def write(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), elsewhere)

    with pytest.raises(UserError, match=f"^cannot write {elsewhere}: no space"):
        atomic.write_atomic(tmp_path / "package.pt2", write, option="--cache-dir")


# ---------------------------------------------------------------------------------------
# Every writer of the suite
# ---------------------------------------------------------------------------------------


def _row(size: int) -> report.Row:
    return report.Row(model_name="Densenet121", optimization_technique="baseline", batch_size=size, device="cpu",
                      latency_ms_per_batch=10.0 * size, throughput_samples_per_sec=100.0, ram_usage_mb=1.0,
                      vram_usage_mb=0.0, status=report.OK)


def test_results_csv(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / report.RESULTS_FILE
    report.upsert_row(path, _row(1))
    before = path.read_bytes()
    fill(monkeypatch, tmp_path, only=report.RESULTS_FILE)
    with pytest.raises(UserError) as error:
        report.upsert_row(path, _row(2))
    assert_one_sentence(error, path, "--output-dir")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("name", [markdown.SUMMARY_FILE, plots.LATENCY_PLOT, plots.MEMORY_PLOT])
def test_summary_and_plots(tmp_path: Path, monkeypatch, name: str) -> None:
    for size in (1, 2):
        report.upsert_row(tmp_path / report.RESULTS_FILE, _row(size))
    render.summarize(tmp_path)
    before = (tmp_path / name).read_bytes()
    fill(monkeypatch, tmp_path, only=name)
    with pytest.raises(UserError) as error:
        render.summarize(tmp_path)
    assert_one_sentence(error, tmp_path / name, "--output-dir")
    assert (tmp_path / name).read_bytes() == before and leftovers(tmp_path) == []


def test_speedups_json(tmp_path: Path, monkeypatch) -> None:
    rows = [report.Row(optimization_technique=v, batch_size=1, latency_ms_per_batch=ms, device="cpu",
                       device_name="test cpu") for v, ms in (("baseline", 60.0), ("onnx", 20.0))]
    path = baselines.speedups_file("cpu", tmp_path)
    baselines.save_speedups(rows, "cpu", path)
    before = path.read_bytes()
    fill(monkeypatch, tmp_path)
    with pytest.raises(UserError) as error:
        baselines.save_speedups(rows, "cpu", path)
    assert_one_sentence(error, path, "--baseline-dir")
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_benchmark_json_and_stored_run_of_pytest_benchmark(tmp_path: Path, monkeypatch) -> None:
    """What pytest-benchmark's session writes, routed through write_atomic as conftest.py does."""
    logger = SimpleNamespace(info=lambda *args, **kwargs: None)
    storage = FileStorage(tmp_path / "baseline", logger, default_machine_id=get_machine_id())
    json_path = tmp_path / "out" / "benchmark.json"
    json_path.parent.mkdir()
    session = SimpleNamespace(json=json_path, storage=storage, logger=logger, save_json=None)
    benchmark_session.route_benchmark_writes(session)
    document = {"machine_info": {}, "benchmarks": [{"name": "test_inference[baseline-bs1]", "stats": {"mean": 1.0}}]}
    session.save_json(document)
    storage.save(document, "cpu")
    stored = tmp_path / "baseline" / get_machine_id() / "0001_cpu.json"
    assert json.loads(json_path.read_text()) == json.loads(stored.read_text()) == document
    before = json_path.read_bytes()

    fill(monkeypatch, tmp_path)
    with pytest.raises(UserError) as error:
        session.save_json(document)
    assert_one_sentence(error, json_path, "--output-dir")
    with pytest.raises(UserError) as error:
        storage.save(document, "cpu")
    assert_one_sentence(error, stored.with_name("0002_cpu.json"), "--baseline-dir")
    assert json_path.read_bytes() == before and leftovers(tmp_path) == []
    assert [p.name for p in stored.parent.iterdir()] == ["0001_cpu.json"]


@pytest.mark.slow
def test_cached_weights_and_sidecars(tmp_path: Path, monkeypatch) -> None:
    """torch.save (synthetic weights, pruned models) goes through a Python file, so the
    full disk's errno reaches us through torch's RuntimeError."""
    monkeypatch.setattr(synthetic, "build_synthetic_state_dict", lambda seed=0, progress=print: {"w": torch.ones(1000)})
    fill(monkeypatch, tmp_path)
    path = synthetic.cache_path(0, tmp_path)
    with pytest.raises(UserError) as error:
        synthetic.load_or_build_synthetic_state_dict(seed=0, cache_dir=tmp_path, progress=lambda message: None)
    assert_one_sentence(error, path, "--cache-dir")
    assert leftovers(tmp_path) == [] and not path.exists()

    monkeypatch.undo()  # a disk with room again, then full for the sidecar only
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 100)
    fill(monkeypatch, tmp_path, only=cache.sidecar(data).name)
    with pytest.raises(UserError) as error:
        cache.write_sidecar(data, {})
    assert_one_sentence(error, cache.sidecar(data), "--cache-dir")
    assert leftovers(tmp_path) == []


def _tiny_onnx(path: Path) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(path))


def test_exported_onnx_model(tmp_path: Path, monkeypatch) -> None:
    fill(monkeypatch, tmp_path)
    with pytest.raises(UserError) as error:
        onnx_export.cached_artifact(tmp_path, "test", {"k": 1}, _tiny_onnx, progress=lambda message: None, what="x")
    folder = tmp_path / "onnx" / f"densenet121-test-{cache.key_digest({'k': 1})}"
    assert_one_sentence(error, folder, "--cache-dir")
    assert leftovers(tmp_path) == [] and not folder.exists()


def test_aotinductor_package(tmp_path: Path, monkeypatch) -> None:
    def compile_and_package(program, *, package_path: str, inductor_configs) -> str:
        Path(package_path).write_bytes(b"package" * 1000)
        return package_path

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    monkeypatch.setattr(inductor, "check_cpp_compiler", lambda: None)
    fill(monkeypatch, tmp_path)
    ctx = BuildContext(device=torch.device("cpu"), batch_size=1, reference_model=lambda: None,
                       calibration_images=lambda n: None, calibration_samples=1, weights_key="test",
                       cache_dir=tmp_path, progress=lambda message: None)
    with pytest.raises(UserError, match=f"^cannot write {tmp_path / inductor.CACHE_SUBDIR}/v-.*\\.pt2: {NO_SPACE} --cache-dir$"):
        inductor.load_or_compile(ctx, "v", inductor.BatchShape(1), {}, lambda: "program", {})
    assert leftovers(tmp_path) == [] and not list((tmp_path / inductor.CACHE_SUBDIR).iterdir())


# ---------------------------------------------------------------------------------------
# A whole sweep: pytest-benchmark's --benchmark-json on a full disk
# ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("fault_plugin_on_path")  # the shim imports tests/full_disk.py
def test_a_sweep_whose_benchmark_json_hits_a_full_disk_says_so_in_one_sentence(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "benchmark.json").write_text('{"old": true}')
    shim = ("import sys, full_disk; full_disk.install(lambda path: path.endswith('/benchmark.json')); "
            "from densenet_opt.cli import main; sys.exit(main(sys.argv[1:]))")
    command = [sys.executable, "-c", shim, "sweep", "--variants", "baseline", "--batch-sizes", "1", "--num-samples", "4",
               "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic", "--output-dir", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    shown = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    assert f"Exit: densenet-opt: cannot write {out / 'benchmark.json'}: {NO_SPACE} --output-dir\n" in result.stderr, shown
    assert (out / "benchmark.json").read_text() == '{"old": true}'
    assert [row.status for row in report.read_rows(out / report.RESULTS_FILE)] == [report.OK]
    assert leftovers(out) == []
