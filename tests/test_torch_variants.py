"""The PyTorch int8 / reduced-precision / compiled variants (quantization.py, precision.py,
compiled.py, inductor.py).

Engines are built through the session's Sweep, with its cache directory and calibration
count, so they share the AOTInductor packages of the benchmark sweep in the same run:
whichever builds first pays the compile (about a minute per variant on two cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from densenet_opt import cache
from densenet_opt.accuracy import fidelity, predict
from densenet_opt.budgets import budget_for, load_budgets
from densenet_opt.errors import UserError, VariantUnavailable
from densenet_opt.variants import BuildContext, Engine, get_variant, parse_variant_options
from densenet_opt.variants import inductor, precision
from densenet_opt.variants.compiled import compile_mode

VARIANTS = ("int8", "fp16", "bf16", "compiled", "cuda_graphs")
real_check_cpp_compiler = inductor.check_cpp_compiler
BUILD_BATCH = 3
SHAPE = inductor.BatchShape(BUILD_BATCH)


def context(device: str, tmp_path: Path, options: dict[str, str] | None = None, variant: str | None = None) -> BuildContext:
    """A context (for ``variant``, as its build sees it) whose model and images fail the
    test if anything reaches for them."""

    def unexpected(*_args):
        raise AssertionError("the build should have stopped before using the model or images")

    return BuildContext(
        device=torch.device(device), batch_size=BUILD_BATCH, reference_model=unexpected,
        calibration_images=unexpected, calibration_samples=4, weights_key="test",
        cache_dir=tmp_path, options=parse_variant_options(options or {}), progress=lambda message: None,
        variant=get_variant(variant) if variant else None,
    )


# ---------------------------------------------------------------------------------------
# Where a variant cannot run: one clear sentence, no build
# ---------------------------------------------------------------------------------------


def test_cuda_graphs_skip_on_cpu_says_it_needs_cuda(tmp_path: Path) -> None:
    with pytest.raises(VariantUnavailable, match="cuda only, not cpu"):
        get_variant("cuda_graphs").build_engine(context("cpu", tmp_path))


def test_int8_skip_on_cuda_says_it_is_cpu_only(tmp_path: Path) -> None:
    with pytest.raises(VariantUnavailable, match="cpu only, not cuda"):
        get_variant("int8").build_engine(context("cuda", tmp_path))


@pytest.mark.parametrize("name, missing", [("fp16", "AVX512-FP16 or AMX-FP16"), ("bf16", "AVX512-BF16 or AMX")])
def test_reduced_precision_without_native_cpu_support_skips(monkeypatch, tmp_path: Path, name: str, missing: str) -> None:
    monkeypatch.setattr(precision, "native_cpu_isa", lambda dtype: None)
    with pytest.raises(VariantUnavailable) as reason:
        get_variant(name).build_engine(context("cpu", tmp_path))
    message = str(reason.value)
    assert missing in message and "emulate" in message and "\n" not in message


def test_native_cpu_isa_follows_the_cpu_flags(monkeypatch) -> None:
    for amx, avx512_bf16, expected in [(True, False, "amx"), (False, True, "avx512_bf16"), (False, False, None)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda flag=avx512_bf16: flag)
        assert precision.native_cpu_isa(torch.bfloat16) == expected


def test_int8_without_torchao_names_the_install_command(monkeypatch, tmp_path: Path) -> None:
    # None in sys.modules makes the import fail as if torchao were not installed.
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e", None)
    with pytest.raises(VariantUnavailable) as reason:
        get_variant("int8").build_engine(context("cpu", tmp_path))
    message = str(reason.value)
    assert "pip install 'torchao>=" in message and "\n" not in message


# ---------------------------------------------------------------------------------------
# No working C++ compiler: the inductor variants are skipped in seconds, before exporting
# ---------------------------------------------------------------------------------------

NO_COMPILER = ("AOTInductor compiles its package with a C++ compiler, and the compiler /nonexistent/g++ "
               "(from CXX) does not exist: install g++ or point CXX at a working C++ compiler")


def test_without_a_cpp_compiler_the_check_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    started = time.perf_counter()
    with pytest.raises(VariantUnavailable) as reason:
        inductor.check_cpp_compiler()
    assert str(reason.value) == NO_COMPILER
    assert time.perf_counter() - started < 5


def test_a_compiler_that_cannot_build_a_trivial_program_is_named(monkeypatch) -> None:
    monkeypatch.setenv("CXX", "false")  # exists, compiles nothing
    with pytest.raises(VariantUnavailable, match=r"the compiler false failed on a trivial program \(exit 1\): install g\+\+"):
        inductor.check_cpp_compiler()


@pytest.mark.parametrize("name", ["compiled", "int8", "bf16"])
def test_an_inductor_variant_without_a_compiler_is_skipped_before_export(monkeypatch, tmp_path: Path, name: str) -> None:
    """The context fails the test if the build reaches for the model (the export): the skip
    comes before it, within seconds (int8 makes its calibration images first, for its key)."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    monkeypatch.setattr(precision, "native_cpu_isa", lambda dtype: "test")  # bf16 gets as far as the compiler
    ctx = replace(context("cpu", tmp_path), calibration_images=lambda count: torch.zeros(count, 3, 224, 224))
    started = time.perf_counter()
    with pytest.raises(VariantUnavailable) as reason:
        get_variant(name).build_engine(ctx)
    assert str(reason.value) == NO_COMPILER
    assert time.perf_counter() - started < 10


def test_a_cached_package_loads_without_a_compiler(fake_aoti: list[str], monkeypatch, tmp_path: Path) -> None:
    ctx = context("cpu", tmp_path)
    inductor.load_or_compile(ctx, "v", SHAPE, {}, lambda: "program", {})
    monkeypatch.setattr(inductor, "check_cpp_compiler", real_check_cpp_compiler)
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    _, package = inductor.load_or_compile(ctx, "v", SHAPE, {}, lambda: "program", {})
    assert package.cache_hit and fake_aoti == ["program"]


@pytest.mark.slow
def test_the_sweep_skips_an_inductor_variant_without_a_compiler_with_the_reason(tmp_path: Path) -> None:
    """Through pytest's skip path (the engine fixture); batch 7 has no cached package."""
    command = [sys.executable, "-m", "densenet_opt", "sweep", "--variants", "compiled", "--batch-sizes", "7",
               "--num-samples", "4", "--rounds", "1", "--warmup-rounds", "0", "--weights", "synthetic",
               "--output-dir", str(tmp_path), "--", "-rs"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "CXX": "/nonexistent/g++"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED [1]")]
    assert len(skipped) == 1 and skipped[0].endswith(f": compiled at batch 7 on cpu: {NO_COMPILER}"), result.stdout[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert time.perf_counter() - started < 120


def test_the_fresh_process_probe_reports_an_unavailable_variant_with_its_reason(monkeypatch, capsys) -> None:
    import io
    import json

    from densenet_opt.config import options_from_mapping
    from densenet_opt.measure import probe, probe_worker

    def unavailable(variant, batch_size, options):
        raise VariantUnavailable(NO_COMPILER)

    options = options_from_mapping({"device": "cpu"})
    monkeypatch.setattr(probe_worker, "measure_in_this_process", unavailable)
    request = {"variant": "compiled", "batch_size": 1, "options": options.to_dict()}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(request)))
    assert probe_worker.main() == 3
    child_stdout = capsys.readouterr().out
    monkeypatch.setattr(probe.subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 3, child_stdout, ""))
    with pytest.raises(VariantUnavailable) as reason:
        probe.run_probe(options, "compiled", 1)
    assert str(reason.value) == NO_COMPILER


# ---------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------


def test_compile_mode_defaults_to_max_autotune_on_cuda(tmp_path: Path) -> None:
    assert compile_mode(context("cuda", tmp_path, variant="compiled")) == "max-autotune"


def test_unknown_compile_mode_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"compiled\.mode=fastest: must be one of .*max-autotune"):
        parse_variant_options({"compiled.mode": "fastest"})


def test_compile_mode_on_cpu_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"compiled\.mode applies on CUDA only"):
        compile_mode(context("cpu", tmp_path, {"compiled.mode": "reduce-overhead"}, variant="compiled"))


@pytest.mark.parametrize("name", ["int8", "bf16", "compiled"])
def test_unknown_batch_policy_is_a_user_error(name: str) -> None:
    with pytest.raises(UserError, match=rf"{name}\.batch=sometimes: must be one of static, dynamic"):
        parse_variant_options({f"{name}.batch": "sometimes"})


def test_batch_policy_keys_the_package(tmp_path: Path) -> None:
    assert inductor.batch_shape(context("cpu", tmp_path, variant="compiled")) == inductor.BatchShape(BUILD_BATCH)
    dynamic = context("cpu", tmp_path, {"compiled.batch": "dynamic"}, variant="compiled")
    assert inductor.batch_shape(dynamic) == inductor.BatchShape(None)
    ctx = context("cpu", tmp_path)
    paths = {inductor.package_path(ctx, inductor.package_key(ctx, "v", {"batch": shape.key})) for shape in
             (inductor.BatchShape(1), inductor.BatchShape(3), inductor.BatchShape(None))}
    assert len(paths) == 3


def test_unknown_cuda_graphs_dtype_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"cuda_graphs\.dtype=int4: must be one of auto, fp16, bf16"):
        parse_variant_options({"cuda_graphs.dtype": "int4"})


# ---------------------------------------------------------------------------------------
# The package cache (compile and load stubbed: the logic, not inductor)
# ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_aoti(monkeypatch) -> list[str]:
    """Stubs AOTInductor: 'compiling' writes a small file; returns the list of compiles."""
    compiles: list[str] = []

    def compile_and_package(program, *, package_path: str, inductor_configs) -> str:
        compiles.append(program)
        Path(package_path).write_bytes(b"package of " + program.encode() * 100)
        return package_path

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_and_package)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda path: f"runner for {path}")
    monkeypatch.setattr(inductor, "check_cpp_compiler", lambda: None)  # the logic, on any machine
    return compiles


def test_package_is_compiled_once_then_loaded(fake_aoti: list[str], tmp_path: Path) -> None:
    ctx = context("cpu", tmp_path)
    first, built = inductor.load_or_compile(ctx, "v", SHAPE, {"k": "1"}, lambda: "program", {})
    second, loaded = inductor.load_or_compile(ctx, "v", SHAPE, {"k": "1"}, lambda: "program", {})
    assert fake_aoti == ["program"]
    assert (built.cache_hit, loaded.cache_hit) == (False, True)
    assert built.path == loaded.path and first == second == f"runner for {built.path}"
    assert loaded.compile_s == pytest.approx(built.compile_s, abs=0.1)  # recorded at build, reported on load


def test_package_key_separates_weights_and_options(fake_aoti: list[str], tmp_path: Path) -> None:
    ctx = context("cpu", tmp_path)
    inductor.load_or_compile(ctx, "v", SHAPE, {"k": "1"}, lambda: "a", {})
    inductor.load_or_compile(ctx, "v", SHAPE, {"k": "2"}, lambda: "b", {})
    other_weights = replace(ctx, weights_key="other")
    inductor.load_or_compile(other_weights, "v", SHAPE, {"k": "1"}, lambda: "c", {})
    assert fake_aoti == ["a", "b", "c"]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-7]), "truncated"),
        (lambda path: path.write_bytes(path.read_bytes()[:-1] + b"!"), "corrupt"),
        (lambda path: cache.sidecar(path).write_text("{not json"), "sidecar"),
        (lambda path: cache.sidecar(path).unlink(), "sidecar"),
    ],
)
def test_a_damaged_package_is_compiled_again(fake_aoti: list[str], tmp_path: Path, damage, reason: str) -> None:
    messages: list[str] = []
    ctx = replace(context("cpu", tmp_path), progress=messages.append)
    _, package = inductor.load_or_compile(ctx, "v", SHAPE, {}, lambda: "program", {})
    damage(package.path)
    _, again = inductor.load_or_compile(ctx, "v", SHAPE, {}, lambda: "program", {})
    assert fake_aoti == ["program", "program"] and not again.cache_hit
    assert any(reason in message and "compiling it again" in message for message in messages)
    assert json.loads(cache.sidecar(package.path).read_text())["size"] == package.path.stat().st_size


def test_a_failed_compile_leaves_no_package(monkeypatch, tmp_path: Path) -> None:
    def failing(program, *, package_path: str, inductor_configs) -> str:
        Path(package_path).write_bytes(b"half a package")
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", failing)
    monkeypatch.setattr(inductor, "check_cpp_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="compiler crashed"):
        inductor.load_or_compile(context("cpu", tmp_path), "v", SHAPE, {}, lambda: "program", {})
    assert not list((tmp_path / inductor.CACHE_SUBDIR).iterdir())


# ---------------------------------------------------------------------------------------
# Real engines (skipped where the variant cannot run)
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=VARIANTS)
def built(request, workbench) -> tuple[str, Engine]:
    """One engine per variant for the whole module: builds are expensive."""
    name = request.param
    try:
        engine = workbench.build_engine(name, BUILD_BATCH)
    except VariantUnavailable as reason:
        pytest.skip(f"{name} on {workbench.device.type}: {reason}")
    yield name, engine
    engine.close()


def test_engine_gives_finite_logits_within_budget(built, workbench) -> None:
    """On the sweep's images (64 in CI): the budgets' margins are set for that count."""
    name, engine = built
    logits = predict(engine, workbench.eval_set, BUILD_BATCH)  # streamed; raises on NaN/Inf
    assert logits.shape == (len(workbench.eval_set), 1000) and logits.dtype == torch.float32
    measured = fidelity(logits, workbench.reference_logits, None)
    limits = budget_for(load_budgets(), name).limits
    assert measured.agreement_top_1 >= limits["agreement_top_1_min"], measured
    assert measured.relative_error <= limits["relative_error_max"], measured


def test_engine_reports_its_artifact_and_build_cost(built) -> None:
    name, engine = built
    assert engine.model_size_bytes > 1 << 20
    assert any(key in engine.info for key in ("compile_s", "autotune_s", "capture_s")), engine.info
    if "package_cache" in engine.info:
        assert float(engine.info["compile_s"]) > 0


def assert_same_logits_per_image(engine: Engine, images: torch.Tensor, splits: tuple[int, ...]) -> None:
    whole = engine(images)
    parts = torch.cat([engine(part) for part in images.split(splits)])
    assert whole.shape == parts.shape == (len(images), 1000)
    assert torch.allclose(whole, parts, rtol=1e-2, atol=1e-2 * whole.abs().max().item())


def test_static_package_refuses_another_batch_size(built, workbench) -> None:
    name, engine = built
    if engine.info.get("batch") != f"static-{BUILD_BATCH}":
        pytest.skip(f"{name} is not a static package here")
    with pytest.raises(ValueError, match=rf"compiled for batch {BUILD_BATCH}, got 1.*{name}\.batch=dynamic"):
        engine(workbench.eval_set.head(1))


def test_dynamic_batch_gives_the_same_logits_per_image(built, workbench) -> None:
    """Runs for the engines of a sweep with --variant-options <variant>.batch=dynamic."""
    name, engine = built
    if engine.info.get("batch") != "dynamic":
        pytest.skip(f"{name} is built for batch {BUILD_BATCH} (static)")
    assert_same_logits_per_image(engine, workbench.eval_set.head(5), (1, 2, 2))


def test_a_dynamic_package_serves_every_batch_size(workbench) -> None:
    """One dynamic build whatever the sweep's options (compiled: the cheapest to compile)."""
    if workbench.device.type != "cpu":
        pytest.skip("compiled is an AOTInductor package on the CPU only")
    ctx = workbench.build_context(BUILD_BATCH)
    options = parse_variant_options({**ctx.options, "compiled.batch": "dynamic"})
    engine = get_variant("compiled").build_engine(replace(ctx, options=options))
    try:
        assert engine.info["batch"] == "dynamic"
        assert_same_logits_per_image(engine, workbench.eval_set.head(5), (1, 2, 2))
    finally:
        engine.close()


def test_second_build_loads_the_cached_package_without_the_fp32_model(built, workbench) -> None:
    """What the memory probe's fresh process does: no compile, and no fp32 model either
    (it would show in RAM and cold start)."""
    name, engine = built
    if "package_cache" not in engine.info:
        pytest.skip(f"{name} builds no package on {workbench.device.type}")

    def no_model():
        raise AssertionError("reference_model() called although the package is cached")

    again = get_variant(name).build_engine(replace(workbench.build_context(BUILD_BATCH), reference_model=no_model))
    try:
        assert again.info["package_cache"] == "hit" and again.info["compile_s"] == engine.info["compile_s"]
        images = workbench.eval_set.head(min(BUILD_BATCH, len(workbench.eval_set)))
        assert torch.allclose(again(images), engine(images), rtol=1e-5, atol=1e-5)
    finally:
        again.close()
