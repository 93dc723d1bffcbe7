"""Sweeps across a fleet on Ray: machine labels, planning, rows keyed by machine, the
cross-device report, a shard whose task dies, and --resume.

The Ray tests start one local Ray instance (2 CPUs) whose node offers two fake machines'
resources, machine:alpha and machine:beta, and shut it down at the end of the module.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import pytest

from densenet_opt import cli, cluster, render, report, shard
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.recommend import recommend_from_results
from densenet_opt.render import fleet


def _row(variant: str, size: int, latency: float, machine: str | None, device: str = "cpu", **fields) -> report.Row:
    return report.Row(optimization_technique=variant, batch_size=size, device=device, latency_ms_per_batch=latency,
                      throughput_samples_per_sec=size * 1e3 / latency, ram_usage_mb=100.0, vram_usage_mb=0.0,
                      latency_ms_p99=latency * 1.5, device_name=f"cpu of {machine}", machine=machine, **fields)


# ---------------------------------------------------------------------------------------
# Rows keyed by machine


def test_the_machine_column_comes_after_the_existing_ones_and_old_files_still_read(tmp_path: Path) -> None:
    assert report.COLUMNS[-1] == "machine" and report.COLUMNS.index("machine") > report.COLUMNS.index("measured_at")
    old = tmp_path / "old.csv"
    old.write_text("optimization_technique,batch_size,device,latency_ms_per_batch\nbaseline,1,cpu,10\n")
    (row,) = report.read_rows(old)
    assert row.machine is None and row.key == ("baseline", 1, "cpu", None)
    # A sweep writing into an old file takes the place of its unnamed row of the same config.
    report.upsert_row(old, dataclasses.replace(row, machine="here", latency_ms_per_batch=8.0))
    assert [(r.machine, r.latency_ms_per_batch) for r in report.read_rows(old)] == [("here", 8.0)]


def test_merging_two_machines_keeps_both_and_pairs_each_with_its_own_baseline(tmp_path: Path) -> None:
    a, b, target = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / report.RESULTS_FILE
    report.upsert_row(a, _row("baseline", 1, 10, "alpha"))
    report.upsert_row(a, _row("pruned", 1, 5, "alpha"))
    report.upsert_row(b, _row("baseline", 1, 40, "beta"))
    report.upsert_row(b, _row("pruned", 1, 10, "beta"))
    rows = shard.merge_results([a, b], target)
    assert {(r.machine, r.variant): r.speedup_vs_baseline for r in rows} == {
        ("alpha", "baseline"): 1.0, ("alpha", "pruned"): 2.0, ("beta", "baseline"): 1.0, ("beta", "pruned"): 4.0}
    # A later run of one machine replaces only that machine's rows.
    report.upsert_row(a, _row("pruned", 1, 2.5, "alpha"))
    rows = shard.merge_results([a], target)
    assert {(r.machine, r.variant): r.latency_ms_per_batch for r in rows} == {
        ("alpha", "baseline"): 10.0, ("alpha", "pruned"): 2.5, ("beta", "baseline"): 40.0, ("beta", "pruned"): 10.0}


def test_the_fleet_report_and_recommend_per_machine(tmp_path: Path) -> None:
    results = tmp_path / report.RESULTS_FILE
    report.write_rows(results, report.with_speedups([
        _row("baseline", 1, 10, "alpha"), _row("pruned", 1, 5, "alpha"),
        _row("baseline", 1, 40, "beta"), _row("pruned", 1, 10, "beta"),
    ]))
    rows, faults = report.load_table(results)
    plot, markdown = fleet.write_fleet_report(results, rows, faults, tmp_path / "no-budgets.toml")
    text = markdown.read_text()
    assert plot.name == fleet.FLEET_PLOT and plot.stat().st_size > 0
    assert "| variant | batch | alpha (cpu) | beta (cpu) |" in text
    assert "| `pruned` | 1 | 200.0/s, p99 7.5 ms (2.00x) | 100.0/s, p99 15.0 ms (4.00x) |" in text
    assert "| beta (cpu) | `pruned` at batch 1 | 100.0 |" in text and "Budgets were not checked" in text
    # `summary` writes the fleet report too when the file holds several machines.
    assert fleet.FLEET_FILE in [p.name for p in render.summarize(tmp_path, tmp_path / "no-budgets.toml")]
    summary = (tmp_path / "summary.md").read_text()
    assert "On cpu of alpha:" in summary and "On cpu of beta:" in summary and "![fleet_throughput](fleet_throughput.png)" in summary
    lines = recommend_from_results(results, max_memory_mb=None, max_latency_ms=None, machine="beta", ignore_budgets=True,
                                   min_top1_of_fp32=None)
    assert lines[0].startswith("pruned at batch size 1 on cpu of beta: 100.0 samples/s")
    with pytest.raises(UserError, match="has no rows of machine gamma: its machines are alpha, beta"):
        recommend_from_results(results, max_memory_mb=None, max_latency_ms=None, machine="gamma", ignore_budgets=True,
                               min_top1_of_fp32=None)


# ---------------------------------------------------------------------------------------
# Planning


def test_machine_label_option() -> None:
    assert options_from_mapping({"device": "cpu", "machine_label": "a10-server"}).machine_label == "a10-server"
    assert options_from_mapping({"device": "cpu"}).machine_label is None
    with pytest.raises(UserError, match="--machine-label 'a10 server' is not a machine label"):
        options_from_mapping({"device": "cpu", "machine_label": "a10 server"})


def test_machines_option() -> None:
    assert cluster.parse_machines("epyc, a10:cuda:A10G") == [
        cluster.MachineSpec("epyc"), cluster.MachineSpec("a10", "cuda", "A10G")]
    assert cluster.parse_machines("all") == []
    for text, message in (("epyc,epyc", "names epyc twice"), ("a10:tpu", "names device 'tpu'"), ("bad/name", "not a machine label")):
        with pytest.raises(UserError, match=message):
            cluster.parse_machines(text)


def test_machines_are_found_by_their_resource() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 64, "machine:epyc": 1}},
        {"Alive": True, "Resources": {"CPU": 32, "GPU": 4, "machine:h100": 4}},
        {"Alive": False, "Resources": {"CPU": 8, "machine:gone": 1}},
    ]
    assert cluster.discover_machines([], nodes) == [cluster.Machine("epyc", "cpu", 1), cluster.Machine("h100", "cuda", 4)]
    assert cluster.discover_machines([cluster.MachineSpec("h100", "cpu")], nodes) == [cluster.Machine("h100", "cpu", 4)]
    with pytest.raises(UserError, match=r"no live node of the Ray cluster offers the resource machine:gone: .*ray start"):
        cluster.discover_machines([cluster.MachineSpec("gone")], nodes)
    with pytest.raises(UserError, match="machine epyc is to sweep on cuda, but its nodes offer Ray no GPU"):
        cluster.discover_machines([cluster.MachineSpec("epyc", "cuda")], nodes)


def test_each_machine_gets_every_config_and_resume_hands_each_shard_its_machines_rows(tmp_path: Path, artifact_cache: Path) -> None:
    """--resume is decided by each shard's own sweep, where the weights and images are (the
    driver cannot know the weights' bytes): the driver hands it the earlier rows of its
    machine, device and configs, and asks it to resume."""
    machines = [cluster.Machine("epyc", "cpu"), cluster.Machine("h100", "cuda", 2)]
    planned = cluster.plan_fleet(machines, ("baseline", "pruned"), (1, 8))
    for machine in machines:
        configs = sorted(c for p in planned if p.machine == machine for c in p.shard.configs)
        assert configs == [("baseline", 1), ("baseline", 8), ("pruned", 1), ("pruned", 8)]
    assert [p.name for p in planned] == ["epyc-1", "h100-1", "h100-2"]
    rows = [_row("baseline", 1, 1, "epyc"), _row("pruned", 1, 1, "epyc", status=report.OUT_OF_MEMORY),
            _row("pruned", 8, 1, "h100", device="cpu"), _row("baseline", 1, 1, "h100", device="cuda")]
    epyc = planned[0]
    assert [(r.variant, r.batch_size) for r in cluster.earlier_rows(rows, epyc)] == [("baseline", 1), ("pruned", 1)]
    options = _options(tmp_path, artifact_cache)
    assert cluster.shard_request(options, epyc, [], node_cache=False, resume_from=rows[:2])["results_csv"] is None  # no --resume
    request = cluster.shard_request(dataclasses.replace(options, resume=True), epyc, [], node_cache=False,
                                    resume_from=cluster.earlier_rows(rows, epyc))
    assert request["options"]["resume"] is True
    seeded = tmp_path / "seeded.csv"
    seeded.write_text(request["results_csv"])
    assert report.read_rows(seeded) == cluster.earlier_rows(rows, epyc)


class FakeRay:
    """Ray as run_tasks uses it: records each task's placement; Ctrl-C while waiting."""

    class exceptions:
        RayError = RuntimeError

    def __init__(self) -> None:
        self.placements: list[dict] = []
        self.cancelled: list[object] = []

    def remote(self, function):
        fake = self

        class Task:
            def options(self, **placement):
                fake.placements.append(placement)
                return self

            def remote(self, *args):
                return object()

        return Task()

    def wait(self, refs, num_returns):
        raise KeyboardInterrupt

    def cancel(self, ref, force):
        self.cancelled.append(ref)


def test_tasks_ask_for_their_machine_and_a_gpu_and_ctrl_c_cancels_them() -> None:
    machines = [cluster.Machine("epyc", "cpu"), cluster.Machine("h100", "cuda", 1, "H100")]
    planned = cluster.plan_fleet(machines, ("baseline",), (1,))
    fake = FakeRay()
    outcomes = cluster.run_tasks(fake, [(s, {}) for s in planned], progress=lambda line: None)
    assert fake.placements == [
        {"num_cpus": 1, "num_gpus": 0, "resources": {"machine:epyc": 1}, "max_retries": 0},
        {"num_cpus": 1, "num_gpus": 1, "resources": {"machine:h100": 1}, "max_retries": 0, "accelerator_type": "H100"},
    ]
    assert len(fake.cancelled) == 2 and [o.failure for o in outcomes] == [cluster.INTERRUPTED] * 2


def test_an_address_where_nothing_listens_is_one_sentence(tmp_path: Path, capsys) -> None:
    pytest.importorskip("ray")
    assert cluster.unreachable_reason("auto") is None
    assert cluster.unreachable_reason("head:port") == "'port' is not a port: give HOST:PORT, ray://HOST:PORT or auto"
    code = cli.main(["sweep-cluster", "--address", "127.0.0.1:1", "--variants", "baseline", "--output-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.startswith("densenet-opt: error: cannot reach the Ray cluster at 127.0.0.1:1 (Connection refused)")


def test_without_ray_the_command_says_what_to_install(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    code = cli.main(["sweep-cluster", "--device", "cpu", "--variants", "baseline", "--output-dir", str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"densenet-opt: error: {cluster.INSTALL_HINT}"
    assert "pip install -e .[cluster]" in cluster.INSTALL_HINT


# ---------------------------------------------------------------------------------------
# On a local Ray instance


@pytest.fixture(scope="module")
def local_ray(fault_plugin_pythonpath: str):
    """One local Ray instance for the module: 2 CPUs, a node offering machine:alpha and
    machine:beta; its workers see tests/ on PYTHONPATH (for -p fault_plugin)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", fault_plugin_pythonpath)
        patch.setenv("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, num_gpus=0, resources={"machine:alpha": 1, "machine:beta": 1},
                 include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _options(tmp_path: Path, cache: Path, **changes):
    options = options_from_mapping({
        "device": "cpu", "variants": "baseline,pruned", "batch_sizes": "1", "num_samples": "4", "rounds": "2",
        "warmup_rounds": "1", "weights": "synthetic", "output_dir": str(tmp_path / "fleet"), "cache_dir": str(cache),
    })
    return dataclasses.replace(options, **changes)


MACHINES = [cluster.MachineSpec("alpha"), cluster.MachineSpec("beta")]

# A stand-in for a shard's `python -m densenet_opt.runner` (its request as JSON on stdin; conftest.py's
# fake_python runs it):
# a row per config, baseline 10 ms on alpha and 40 ms on beta, pruned 5 ms and 10 ms; on a
# machine named after --kill in its pytest arguments it kills its parent, the Ray worker.
FAKE_SWEEP = textwrap.dedent('''\
    import csv, json, os, signal, sys
    request = json.loads(sys.stdin.read())
    options, args = request["options"], request["pytest_args"]
    machine = options["machine_label"]
    if "--kill" in args and args[args.index("--kill") + 1] == machine:
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    latency = {("alpha", "baseline"): 10, ("alpha", "pruned"): 5, ("beta", "baseline"): 40, ("beta", "pruned"): 10}
    columns = ["optimization_technique", "batch_size", "device", "latency_ms_per_batch", "throughput_samples_per_sec",
               "ram_usage_mb", "vram_usage_mb", "machine"]
    path = os.path.join(options["output_dir"], "benchmark_results.csv")
    kept = list(csv.DictReader(open(path))) if options["resume"] and os.path.exists(path) else []  # a stand-in for --resume
    done = {(r["optimization_technique"], int(r["batch_size"])) for r in kept}
    todo = [(v, s) for v in options["variants"] for s in options["batch_sizes"] if (v, s) not in done]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(kept)
        for v, s in todo:
            ms = latency[(machine, v)]
            w.writerow({"optimization_technique": v, "batch_size": s, "device": options["device"],
                        "latency_ms_per_batch": ms, "throughput_samples_per_sec": s * 1e3 / ms,
                        "ram_usage_mb": 1, "vram_usage_mb": 0, "machine": machine})
    json.dump({"machine_info": {"node": machine}, "commit_info": {}, "benchmarks": [
        {"name": f"test_inference[{v}-bs{s}]", "fullname": f"t::test_inference[{v}-bs{s}]", "stats": {}}
        for v, s in todo]}, open(os.path.join(options["output_dir"], "benchmark.json"), "w"))
    print("measured", machine, len(todo), flush=True)
''')


def test_a_shard_measures_with_the_drivers_thread_variables_not_rays(tmp_path: Path, monkeypatch, artifact_cache: Path) -> None:
    """Ray sets OMP_NUM_THREADS=1 in a worker of num_cpus=1: torch then ran on one thread in the
    fleet (76 ms, onnx 2.12x) where a plain sweep used every core (onnx 3.96x). The shard's
    sweep gets the driver's values: unset where the driver has none."""
    script = tmp_path / "print_env.py"
    script.write_text("import os, sys; sys.stdin.read(); print('OMP=' + str(os.environ.get('OMP_NUM_THREADS')) + "
                      "' MKL=' + str(os.environ.get('MKL_NUM_THREADS')))\n")
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nshift 2\nexec {sys.executable} {script}\n")
    launcher.chmod(0o755)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set on the driver: kept
    options = _options(tmp_path, artifact_cache)
    fleet_shard = cluster.plan_fleet([cluster.Machine("alpha", "cpu", 1)], options.variants, options.batch_sizes)[0]
    request = cluster.shard_request(options, fleet_shard, [], node_cache=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets in the worker
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    result = cluster.run_shard(request, str(launcher))
    assert "OMP=None MKL=3" in result["log"], result["log"]


def shard_logs(options) -> dict[str, str]:
    """Each shard's log (OUTPUT_DIR/shards/NAME/sweep.log), stripped."""
    return {d.name: (d / cluster.SHARD_LOG).read_text().strip() for d in sorted((options.output_dir / shard.SHARDS_DIR).iterdir())}


@pytest.mark.slow
def test_two_machines_on_ray_a_dead_shard_and_resume(local_ray, tmp_path: Path, fake_python: str, artifact_cache: Path) -> None:
    options = _options(tmp_path, artifact_cache)
    lines: list[str] = []
    code = cluster.sweep_on_cluster(options, MACHINES, ["--kill", "beta"], python=fake_python, node_cache=False,
                                    progress=lines.append)
    assert code == 1
    failures = [line for line in lines if line.startswith("shard failed")]
    assert failures == ["shard failed: beta-1, baseline, pruned at batch 1 on beta (cpu): the Ray worker running it died "
                        "(killed, or out of memory); its rows were not returned, rerun with --resume to measure them"]
    results = options.output_dir / report.RESULTS_FILE
    assert {(r.machine, r.variant) for r in report.read_rows(results)} == {("alpha", "baseline"), ("alpha", "pruned")}

    lines.clear()
    code = cluster.sweep_on_cluster(dataclasses.replace(options, resume=True), MACHINES, [], python=fake_python,
                                    node_cache=False, progress=lines.append)
    assert code == 0, lines
    assert shard_logs(options) == {"alpha-1": "measured alpha 0", "beta-1": "measured beta 2"}
    rows = report.read_rows(results)
    assert {(r.machine, r.variant): r.speedup_vs_baseline for r in rows} == {
        ("alpha", "baseline"): 1.0, ("alpha", "pruned"): 2.0, ("beta", "baseline"): 1.0, ("beta", "pruned"): 4.0}
    assert json.loads(cluster.benchmark_file(options.output_dir, "beta").read_text())["machine_info"] == {"node": "beta"}
    assert (options.output_dir / fleet.FLEET_FILE).is_file() and (options.output_dir / fleet.FLEET_PLOT).is_file()
    assert any(line.startswith("  fastest within budget on beta (cpu)") for line in lines)
    # Nothing left to measure: each shard resumes and measures nothing; the rows stay.
    lines.clear()
    assert cluster.sweep_on_cluster(dataclasses.replace(options, resume=True), MACHINES, [], python=fake_python,
                                    node_cache=False, progress=lines.append) == 0
    assert shard_logs(options) == {"alpha-1": "measured alpha 0", "beta-1": "measured beta 0"}
    assert report.read_rows(results) == rows


@pytest.mark.slow
def test_a_real_tiny_sweep_on_two_machines_a_killed_shard_and_resume(local_ray, tmp_path: Path, artifact_cache: Path) -> None:
    """The library sweep (pytest-benchmark in a subprocess) in each task; beta's worker is
    killed by tests/fault_plugin.py at its first engine call, alpha's rows are kept, and
    --resume measures beta only."""
    options = _options(tmp_path, artifact_cache)
    lines: list[str] = []
    faults = ["-p", "fault_plugin", "--inject-fault", "baseline@1=kill_worker:beta"]
    code = cluster.sweep_on_cluster(options, MACHINES, faults, node_cache=False, progress=lines.append)
    assert code == 1, lines
    assert [line.split(":")[1].strip() for line in lines if line.startswith("shard failed")] == ["beta-1, baseline, pruned at batch 1 on beta (cpu)"]
    results = options.output_dir / report.RESULTS_FILE
    alpha = {r.variant: r for r in report.read_rows(results)}
    assert set(alpha) == {"baseline", "pruned"} and {r.machine for r in alpha.values()} == {"alpha"}
    assert alpha["baseline"].speedup_vs_baseline == 1.0 and alpha["pruned"].speedup_vs_baseline is not None

    lines.clear()
    code = cluster.sweep_on_cluster(dataclasses.replace(options, resume=True), MACHINES, [], node_cache=False,
                                    progress=lines.append)
    assert code == 0, lines
    rows = report.read_rows(results)
    assert sorted((r.machine, r.variant, r.status) for r in rows) == [
        ("alpha", "baseline", "ok"), ("alpha", "pruned", "ok"), ("beta", "baseline", "ok"), ("beta", "pruned", "ok")]
    assert {r.machine: r.latency_ms_per_batch for r in rows if r.variant == "pruned"}["alpha"] == alpha["pruned"].latency_ms_per_batch
    assert all(r.speedup_vs_baseline is not None for r in rows)
    beta_json = json.loads(cluster.benchmark_file(options.output_dir, "beta").read_text())
    assert len(beta_json["benchmarks"]) == 2
    assert "| variant | batch | alpha (cpu) | beta (cpu) |" in (options.output_dir / fleet.FLEET_FILE).read_text()
