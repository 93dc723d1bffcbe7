"""Several GPUs: sharing configs out, pinning processes, merging CSVs and pytest-benchmark JSONs."""

from __future__ import annotations

import dataclasses

import csv
import itertools
import json
import textwrap
from pathlib import Path

import pytest

from densenet_opt import report, shard
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError

SIZES = (1, 4, 8, 16, 32)


@pytest.mark.parametrize(
    ("environ", "count", "expected"),
    [
        ({}, 3, ["0", "1", "2"]),
        ({}, 0, []),
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, 2, ["2", "3"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, 2, ["GPU-aa", "GPU-bb"]),
        ({"CUDA_VISIBLE_DEVICES": "1,7"}, 1, ["1"]),  # CUDA stops at an entry it rejects
        ({"CUDA_VISIBLE_DEVICES": ""}, 0, []),
    ],
)
def test_visible_gpus(environ: dict, count: int, expected: list[str]) -> None:
    assert shard.visible_gpus(environ, lambda: count) == expected


def test_gpus_option() -> None:
    assert shard.parse_gpus("all", {}, lambda: 2) == ["0", "1"]
    assert shard.parse_gpus("3, 1,3", {}, lambda: 8) == ["3", "1"]
    with pytest.raises(UserError, match="names no GPU"):
        shard.parse_gpus(",", {}, lambda: 2)


def assert_each_config_once(shards: list[shard.Shard], variants: tuple[str, ...], sizes: tuple[int, ...]) -> None:
    planned = [config for s in shards for config in s.configs]
    assert sorted(planned) == sorted(itertools.product(variants, sizes))


@pytest.mark.parametrize("gpus", [[], ["0"]])
def test_one_gpu_or_none_is_one_plain_shard(gpus: list[str]) -> None:
    variants = ("baseline", "pruned")
    assert shard.plan_shards(variants, SIZES, gpus) == [shard.Shard(gpus[0] if gpus else "", variants, SIZES)]


def test_variants_stay_whole_when_there_are_enough() -> None:
    variants = ("baseline", "pruned", "onnx", "int8")
    shards = shard.plan_shards(variants, SIZES, ["0", "1"])
    assert_each_config_once(shards, variants, SIZES)
    assert all(s.batch_sizes == SIZES for s in shards)  # one process per GPU, no variant split
    assert sorted(len(s.configs) for s in shards) == [10, 10]
    assert len({s.gpu for s in shards}) == 2


def test_a_variant_is_split_across_gpus_when_there_are_more_gpus() -> None:
    shards = shard.plan_shards(("baseline",), SIZES, ["0", "1", "2", "3"])
    assert_each_config_once(shards, ("baseline",), SIZES)
    assert sorted(s.gpu for s in shards) == ["0", "1", "2", "3"]  # every GPU works
    # Halves alternate sizes, so no GPU gets only the large batches.
    assert shard.plan_shards(("baseline",), SIZES, ["0", "1"]) == [
        shard.Shard("0", ("baseline",), (1, 8, 32)), shard.Shard("1", ("baseline",), (4, 16))]


@pytest.mark.parametrize(("n_variants", "n_sizes", "n_gpus"), [(1, 1, 4), (3, 5, 2), (3, 5, 8), (7, 2, 3), (2, 5, 3)])
def test_plans_cover_every_config_once_and_balance(n_variants: int, n_sizes: int, n_gpus: int) -> None:
    variants = tuple(f"v{i}" for i in range(n_variants))
    sizes = SIZES[:n_sizes]
    gpus = [str(i) for i in range(n_gpus)]
    shards = shard.plan_shards(variants, sizes, gpus)
    assert_each_config_once(shards, variants, sizes)
    loads = [sum(len(s.configs) for s in shards if s.gpu == gpu) for gpu in gpus]
    assert max(loads) - min(loads) <= max(n_sizes, 1)  # within one unit of work


def _row(variant: str, batch_size: int, latency: float | None = None, **fields: object) -> report.Row:
    return report.Row(optimization_technique=variant, batch_size=batch_size, device="cuda",
                      latency_ms_per_batch=latency, **fields)


def test_merge_results_upserts_into_what_is_there(tmp_path: Path) -> None:
    target = tmp_path / report.RESULTS_FILE
    report.upsert_row(target, _row("baseline", 1, 9))
    report.upsert_row(target, _row("pruned", 1, 8))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    report.upsert_row(a, _row("baseline", 1, 5))
    b.write_text("optimization_technique,batch_size,device,latency_ms_per_batch,new_column\nonnx,4,cuda,3,x\n")
    rows = shard.merge_results([a, b, tmp_path / "missing.csv"], target)
    assert [(r.variant, r.latency_ms_per_batch) for r in rows] == [("pruned", 8.0), ("baseline", 5.0), ("onnx", 3.0)]
    assert report.read_rows(target) == rows
    # The merged file has this version's columns: a column it does not know is not carried over.
    with target.open() as handle:
        assert next(csv.reader(handle)) == list(report.COLUMNS)


def _benchmark_json(path: Path, names: list[str], machine: str) -> Path:
    path.write_text(json.dumps({
        "machine_info": {"node": machine}, "commit_info": {"id": "abc"}, "datetime": "now", "version": "5.3.1",
        "benchmarks": [{"name": n, "fullname": f"densenet_opt/bench.py::{n}", "stats": {"mean": 1.0, "data": [1.0]}} for n in names],
    }))
    return path


def test_merge_benchmark_json_joins_benchmarks_and_keeps_one_machine_info(tmp_path: Path) -> None:
    a = _benchmark_json(tmp_path / "a.json", ["test_inference[baseline-bs1]"], "first")
    b = _benchmark_json(tmp_path / "b.json", ["test_inference[pruned-bs1]", "test_inference[baseline-bs1]"], "second")
    merged = shard.merge_benchmark_json([a, tmp_path / "missing.json", b], tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == merged
    assert merged["machine_info"] == {"node": "first"} and merged["commit_info"] == {"id": "abc"}
    assert [x["name"] for x in merged["benchmarks"]] == ["test_inference[pruned-bs1]", "test_inference[baseline-bs1]"]
    assert shard.merge_benchmark_json([tmp_path / "none.json"], tmp_path / "never.json") is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        shard.merge_benchmark_json([tmp_path / "bad.json"], tmp_path / "out.json")


# A stand-in for a shard's `python -m densenet_opt.runner` (its request as JSON on stdin; conftest.py's
# fake_python runs it):
# writes a row per config, with the GPU it was pinned to, and a pytest-benchmark JSON; fails
# when its variants include "broken".
FAKE_SWEEP = textwrap.dedent('''\
    import csv, json, os, sys
    request = json.loads(sys.stdin.read())
    options = request["options"]
    out = options["output_dir"]
    variants, sizes = options["variants"], [str(s) for s in options["batch_sizes"]]
    path = os.path.join(out, "benchmark_results.csv")
    old = list(csv.DictReader(open(path))) if os.path.exists(path) else []
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, ["optimization_technique", "batch_size", "device", "latency_ms_per_batch", "engine_info",
                               "machine_kind"])
        w.writeheader()
        w.writerows({k: r.get(k) for k in w.fieldnames} for r in old if r["engine_info"] == "seeded")
        w.writerows({"optimization_technique": v, "batch_size": s, "device": "cuda", "latency_ms_per_batch": 1,
                     "engine_info": "gpu=" + os.environ["CUDA_VISIBLE_DEVICES"],
                     "machine_kind": os.environ.get("DENSENET_OPT_MACHINE_KIND")} for v in variants for s in sizes)
    json.dump({"machine_info": {"node": "x"}, "commit_info": {}, "benchmarks": [
        {"name": f"test_inference[{v}-bs{s}]", "fullname": f"t::test_inference[{v}-bs{s}]",
         # Every field pytest-benchmark 5 stores (the stored run's format is checked).
         "stats": dict.fromkeys(("min", "max", "mean", "stddev", "rounds", "median", "iqr", "q1", "q3", "iqr_outliers",
                                 "stddev_outliers", "outliers", "ld15iqr", "hd15iqr", "ops", "total"), 1.0)}
        for v in variants for s in sizes]}, open(os.path.join(out, "benchmark.json"), "w"))
    print("request", json.dumps(request))
    sys.exit(1 if "broken" in variants else 0)
''')


def _options(tmp_path: Path, variants: tuple[str, ...], sizes: tuple[int, ...]) -> SweepOptions:
    return SweepOptions(device="cuda", batch_sizes=sizes, variants=variants, weights="synthetic", imagenet_val=None,
                        ground_truth=None, num_samples=64, calibration_samples=16, output_dir=tmp_path / "out",
                        rounds=3, warmup_rounds=1, variant_options={}, cache_dir=tmp_path / "cache")


def test_a_sweep_on_two_gpus_pins_each_process_and_merges(tmp_path: Path, fake_python: str, capsys) -> None:
    options = _options(tmp_path, ("baseline", "pruned", "onnx"), (1, 32))
    out = options.output_dir
    # A row from an earlier run: a config measured now replaces it, another one stays.
    for variant, info in (("baseline", "old"), ("int8", "seeded")):
        report.upsert_row(out / report.RESULTS_FILE, _row(variant, 1, engine_info=info))
    (out / shard.SHARDS_DIR / "gpu9-1").mkdir(parents=True)  # a stale shard from another plan
    code = shard.sweep_on_gpus(options, ["0", "1"], ["-k", "bs"], python=fake_python, environ={"PATH": "/usr/bin:/bin"})
    assert code == 0
    rows = {(r.variant, str(r.batch_size)): r.engine_info for r in report.read_rows(out / report.RESULTS_FILE)}
    assert rows.pop(("int8", "1")) == "seeded"
    plan = shard.plan_shards(options.variants, options.batch_sizes, ["0", "1"])
    assert rows == {(v, str(b)): f"gpu={s.gpu}" for s in plan for v, b in s.configs}
    merged = json.loads((out / shard.BENCHMARK_JSON).read_text())
    assert len(merged["benchmarks"]) == 6 and merged["machine_info"] == {"node": "x"}
    assert sorted(p.name for p in (out / shard.SHARDS_DIR).iterdir()) == ["gpu0-1", "gpu1-1"]
    log = (out / shard.SHARDS_DIR / "gpu0-1" / "sweep.log").read_text()
    request = json.loads(log.split("request ", 1)[1].splitlines()[0])
    assert request["options"]["device"] == "cuda" and request["pytest_args"] == ["-k", "bs"]  # options as data
    assert "[gpu 1] request" in capsys.readouterr().out


def test_a_failing_shard_fails_the_run_but_the_others_are_merged(tmp_path: Path, fake_python: str, capsys) -> None:
    options = _options(tmp_path, ("baseline", "broken"), (1,))
    code = shard.sweep_on_gpus(options, ["0", "1"], [], python=fake_python, environ={"PATH": "/usr/bin:/bin"})
    assert code == 1
    assert {r.variant for r in report.read_rows(options.output_dir / report.RESULTS_FILE)} == {"baseline", "broken"}
    assert "shard failed: broken on GPU 1 (exit 1" in capsys.readouterr().out


def test_on_the_cpu_sweep_gpus_is_a_plain_sweep(monkeypatch, tmp_path: Path) -> None:
    from densenet_opt import cli
    from densenet_opt.cli import fleet as fleet_commands

    calls = []
    monkeypatch.setattr(fleet_commands, "run_sweep", lambda options, pytest_args: calls.append((options.device, pytest_args)) or 0)
    monkeypatch.setattr(fleet_commands, "sweep_on_gpus", lambda *a, **k: pytest.fail("sharded on the CPU"))
    assert cli.main(["sweep-gpus", "--device", "cpu", "--variants", "baseline", "--output-dir", str(tmp_path), "--", "-x"]) == 0
    assert calls == [("cpu", ["-x"])]
    assert cli.main(["sweep-gpus", "--device", "cpu", "--gpus", "0,1", "--output-dir", str(tmp_path)]) == 2


def test_the_merged_run_is_stored_as_the_baseline_of_the_parents_kind(tmp_path: Path, fake_python: str, monkeypatch) -> None:
    """Each shard sees one GPU of two: the parent names the kind of both for them, and the
    rows, the stored run and the speedups file under that kind."""
    from densenet_opt import baselines

    kind = "cuda_fake-gpu_sm90_x2"  # what machine_kind("cuda") reads here (no GPU on this machine)
    monkeypatch.setenv("DENSENET_OPT_MACHINE_KIND", kind)
    options = dataclasses.replace(_options(tmp_path, ("baseline", "pruned"), (1,)), save_baseline=True,
                                  baseline_dir=tmp_path / "store")
    assert shard.sweep_on_gpus(options, ["0", "1"], [], python=fake_python, environ={"PATH": "/usr/bin:/bin"}) == 0
    assert {r.machine_kind for r in report.read_rows(options.output_dir / report.RESULTS_FILE)} == {kind}
    (stored,) = baselines.check_benchmark_storage(tmp_path / "store" / kind)
    assert stored.name == "0001_cuda.json" and len(json.loads(stored.read_text())["benchmarks"]) == 2
    assert baselines.load_speedups(baselines.speedups_file("cuda", tmp_path / "store" / kind)) == {"pruned": {"1": 1.0}}
    assert json.loads(baselines.speedups_file("cuda", tmp_path / "store" / kind).read_text())["machine_kind"] == kind


def test_merged_rows_get_the_speedup_a_shard_without_the_baseline_could_not_compute(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    report.upsert_row(a, _row("baseline", 8, 30, device_name="NVIDIA H200"))
    report.upsert_row(b, _row("pruned", 8, 20, device_name="NVIDIA H200"))
    report.upsert_row(b, _row("pruned", 1, 5, device_name="NVIDIA H200"))
    report.upsert_row(b, _row("onnx", 8, 10, device_name="NVIDIA A100"))  # another machine: no pair
    assert [r.speedup_vs_baseline for r in report.read_rows(b)] == [None, None, None]
    rows = shard.merge_results([a, b], tmp_path / "merged.csv")
    assert {(r.variant, r.batch_size): r.speedup_vs_baseline for r in rows} == {
        ("baseline", 8): 1.0, ("pruned", 8): 1.5, ("pruned", 1): None, ("onnx", 8): None}
