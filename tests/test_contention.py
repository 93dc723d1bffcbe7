"""CPU contention: reading PSI, the row's columns, the tables' marks, and the refusal to
store a baseline timed under contention."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from densenet_opt import benchmark_session, gate, report
from densenet_opt.config import options_from_mapping
from densenet_opt.errors import UserError
from densenet_opt.measure import contention
from densenet_opt.measure.contention import Contention, PressureMark, contention_refusal, read_psi_some_total_us
from densenet_opt.measure.env import machine_kind
from densenet_opt.render import markdown

# /proc/pressure/cpu as Linux 5.13+ writes it (the "full" line is all zeros at system level).
PSI_TEXT = "some avg10=4.46 avg60=1.76 avg300=0.43 total={total}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"


def test_psi_counter_is_read_and_missing_psi_is_none(tmp_path: Path) -> None:
    psi = tmp_path / "cpu"
    psi.write_text(PSI_TEXT.format(total=1519841))
    assert read_psi_some_total_us(psi) == 1519841
    assert read_psi_some_total_us(tmp_path / "absent") is None
    (tmp_path / "disabled").write_text("")  # psi=0 on the kernel command line: the file reads empty
    assert read_psi_some_total_us(tmp_path / "disabled") is None


def test_pressure_is_the_counter_growth_over_the_wall_time(tmp_path: Path) -> None:
    psi = tmp_path / "cpu"
    psi.write_text(PSI_TEXT.format(total=3_000_000))
    start = PressureMark(time.perf_counter() - 2.0, 2_500_000)  # 2 s ago, 0.5 s of stall since
    measured = Contention.since(start, psi)
    assert measured.cpu_pressure_pct == pytest.approx(25.0, abs=0.5)
    assert measured.load_per_core is not None and measured.load_per_core >= 0
    assert measured.contended(20.0) and not measured.contended(30.0)
    # Without PSI the load stands in: contended only above 1.5 per usable core.
    assert Contention.since(PressureMark(start.wall_s, None), tmp_path / "absent").cpu_pressure_pct is None
    assert Contention(None, 1.6).contended() and not Contention(None, 1.2).contended()
    assert not Contention(None, None).contended()


def row(variant: str, pressure: float | None, load: float | None = 1.0, **extra) -> report.Row:
    return report.Row(optimization_technique=variant, batch_size=1, device="cpu", latency_ms_per_batch=10.0,
                      throughput_samples_per_sec=100.0, ram_usage_mb=100.0, vram_usage_mb=0.0,
                      cpu_pressure_pct=pressure, load_per_core=load,
                      device_name="cpu", machine_kind=machine_kind("cpu"), **extra)


def test_the_columns_round_trip_and_mark_the_row() -> None:
    busy = row("baseline", 43.2)
    assert report.Row.from_csv(busy.as_csv()) == busy
    assert busy.contended() and busy.contention_text == "CPU pressure 43%"
    assert not row("baseline", 3.0).contended()
    assert row("baseline", None, 2.5).contention_text == "load 2.50 per core"
    assert report.Row(optimization_technique="x", batch_size=1, device="cpu").contention_text == ""


def test_the_throughput_table_flags_contended_configs() -> None:
    rows = [row("baseline", 2.0), row("onnx", 55.0, speedup_vs_baseline=3.0)]
    table = markdown.throughput_matrix(rows, "cpu")
    lines = table.splitlines()
    assert lines[2] == "| `baseline` | 100.0 |"
    assert lines[3] == "| `onnx` | 100.0 (3.00x) (contended) |"
    assert "1 config(s) marked (contended) were timed while other processes competed" in table
    assert "worst onnx at batch 1 on cpu, CPU pressure 55%" in table
    # The limit is the sweep's --max-cpu-pressure.
    assert "(contended)" not in markdown.throughput_matrix(rows, "cpu", max_cpu_pressure=60.0)


def test_refusal_names_the_worst_config_and_the_override() -> None:
    assert contention_refusal([("a", 5.0, 1.0), ("b", None, 1.2)], 20.0) is None
    sentence = contention_refusal([("a", 25.0, 1.0), ("b", 70.0, 1.0), ("c", None, 3.0)], 20.0)
    assert sentence is not None and "\n" not in sentence
    assert sentence.startswith("not storing the baseline: 3 config(s) were timed while other processes competed")
    assert "(worst: b, 70% CPU pressure; limit 20%)" in sentence
    assert sentence.endswith("pass --max-cpu-pressure 100 to store them anyway")


def test_save_baseline_refuses_a_contended_run_after_writing_the_results(tmp_path: Path) -> None:
    options = options_from_mapping({"device": "cpu", "output_dir": str(tmp_path / "out"), "save_baseline": True,
                                    "baseline_dir": str(tmp_path / "baseline")})
    results = tmp_path / "out" / report.RESULTS_FILE
    report.write_rows(results, [row("baseline", 1.0), row("pruned", 35.0, speedup_vs_baseline=1.0)])
    with pytest.raises(UserError, match=r"not storing the baseline: 1 config\(s\).*worst: pruned at batch 1 on cpu, 35%"):
        gate.close_sweep(options, measured_ok=True, write=lambda line: None)
    assert not (tmp_path / "baseline").exists()
    assert "(contended)" in (tmp_path / "out" / "summary.md").read_text()  # the results and summary are kept
    # --max-cpu-pressure 100 stores it anyway.
    lenient = options_from_mapping({"device": "cpu", "output_dir": str(tmp_path / "out"), "save_baseline": True,
                                    "baseline_dir": str(tmp_path / "baseline"), "max_cpu_pressure": "100"})
    assert gate.close_sweep(lenient, measured_ok=True, write=lambda line: None) is False
    assert (tmp_path / "baseline" / machine_kind("cpu") / "speedups-cpu.json").exists()


@pytest.mark.parametrize("text", ["0", "-5", "101", "nan", "lots"])
def test_a_bad_pressure_limit_is_one_sentence(text: str) -> None:
    with pytest.raises(UserError, match=r"^--max-cpu-pressure must be a percentage in \(0, 100\]"):
        options_from_mapping({"device": "cpu", "max_cpu_pressure": text})


def test_this_machine_reports_a_figure() -> None:
    """Where Linux offers PSI (this project's VMs do) the counter is read; elsewhere the load."""
    measured = Contention.since(PressureMark.now())
    if contention.PSI_FILE.exists() and read_psi_some_total_us() is not None:
        assert measured.cpu_pressure_pct is not None and 0.0 <= measured.cpu_pressure_pct <= 100.0
    else:
        assert measured.cpu_pressure_pct is None and measured.load_per_core is not None


def test_free_cores_are_the_cores_others_leave_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contention.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(contention, "usable_cores", lambda: 2)

    def machine(busy_fraction: float):
        readings = iter([(0.0, 0.0), (busy_fraction * 200.0, 200.0)])  # (busy, total) jiffies
        monkeypatch.setattr(contention, "_cpu_times", lambda path=None: next(readings))
        return contention.free_cores(sample_s=0.0)

    assert machine(0.02) == 2  # quiet
    assert machine(0.5) == 1  # one busy loop: one core left
    assert machine(1.0) == 1  # both taken: still one thread
    monkeypatch.setattr(contention, "_cpu_times", lambda path=None: None)
    assert contention.free_cores(sample_s=0.0) is None  # no /proc/stat


def test_proc_stat_is_read(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 1 2 7 0 0\ncpu0 50 2 25 400 10 0 1 3 0 0\n")
    assert contention._cpu_times(stat) == (165.0, 985.0)  # busy: all but idle (800) and iowait (20)
    assert contention._cpu_times(tmp_path / "absent") is None


@pytest.mark.slow
def test_timing_threads_follow_the_free_cores_unless_fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    from densenet_opt import sweep as sweep_module

    auto = sweep_module.Sweep(options_from_mapping({"device": "cpu"}), progress=lambda line: None)
    auto.default_torch_threads = 2
    monkeypatch.setattr(sweep_module, "free_cores", lambda: 1)
    assert auto.timing_threads() == 1
    monkeypatch.setattr(sweep_module, "free_cores", lambda: 4)
    assert auto.timing_threads() == 2  # never more than torch's default
    monkeypatch.setattr(sweep_module, "free_cores", lambda: None)
    assert auto.timing_threads() == 2
    fixed = sweep_module.Sweep(options_from_mapping({"device": "cpu", "torch_threads": "3"}), progress=lambda line: None)
    assert fixed.timing_threads() == 3
    with pytest.raises(UserError, match="^--torch-threads must be auto or a whole number >= 1"):
        options_from_mapping({"device": "cpu", "torch_threads": "0"})


def test_pytest_benchmark_does_not_store_a_refused_run(tmp_path: Path) -> None:
    """The stored pytest-benchmark run goes through benchmark_session.route_benchmark_writes, which
    stores nothing while the refusal stands (the plugin passes gate.baseline_refusal)."""
    from types import SimpleNamespace

    from pytest_benchmark.storage.file import FileStorage

    from densenet_opt import baselines

    class Logger:
        def info(self, *args, **kwargs) -> None:
            pass

    storage = FileStorage(tmp_path / "baseline", Logger(), default_machine_id="machine")
    session = SimpleNamespace(json=None, storage=storage, logger=Logger())
    refusal: list[str | None] = ["not storing the baseline: ..."]
    benchmark_session.route_benchmark_writes(session, refusal=lambda: refusal[0])
    document = {"benchmarks": [{"name": "x"}]}
    session.storage.save(document, "cpu")
    assert not list((tmp_path / "baseline").rglob("*.json"))
    refusal[0] = None
    session.storage.save(document, "cpu")
    assert [p.name for p in (tmp_path / "baseline" / "machine").glob("*.json")] == ["0001_cpu.json"]


@pytest.mark.slow
@pytest.mark.usefixtures("fault_plugin_on_path")
def test_a_sweep_timed_under_contention_is_measured_but_not_stored(tmp_path: Path) -> None:
    """End to end: a tiny sweep whose CPU pressure reads 60% (tests/fault_plugin.py) writes
    its row and summary, stores no baseline, and says why once, with exit code 2."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "densenet_opt", "sweep", "--variants", "baseline", "--batch-sizes", "1",
               "--num-samples", "4", "--rounds", "2", "--warmup-rounds", "0", "--weights", "synthetic",
               "--output-dir", str(tmp_path / "out"), "--baseline-dir", str(tmp_path / "baseline"), "--save-baseline",
               "--", "-p", "fault_plugin", "--fake-cpu-pressure", "60"]
    result = subprocess.run(command, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert output.count("not storing the baseline") == 1, output[-3000:]
    assert "(worst: baseline at batch 1 on cpu, 60% CPU pressure; limit 30%)" in output
    assert not list((tmp_path / "baseline").rglob("*.json"))
    (row,) = report.read_rows(tmp_path / "out" / report.RESULTS_FILE)
    assert row.cpu_pressure_pct == 60.0 and row.torch_threads is not None and row.torch_threads >= 1
    assert "timed under contention (CPU pressure 60%)" in result.stdout  # the progress line
    assert "(contended)" in (tmp_path / "out" / "summary.md").read_text()


def test_a_limit_of_100_turns_the_check_off_without_psi_too() -> None:
    assert Contention(None, 3.0).contended() and not Contention(None, 3.0).contended(100.0)
    assert contention_refusal([("a", None, 3.0)], 100.0) is None


def test_a_sweep_that_did_not_end_cleanly_is_not_stored_and_says_so(tmp_path: Path) -> None:
    options = options_from_mapping({"device": "cpu", "output_dir": str(tmp_path / "out"), "save_baseline": True,
                                    "baseline_dir": str(tmp_path / "baseline")})
    report.write_rows(tmp_path / "out" / report.RESULTS_FILE, [row("baseline", 1.0), row("pruned", 1.0, speedup_vs_baseline=1.0)])
    lines: list[str] = []
    assert gate.close_sweep(options, measured_ok=False, write=lines.append) is False
    assert any(line.startswith("not storing the baseline: the sweep did not end cleanly") for line in lines)
    assert not (tmp_path / "baseline").exists()
