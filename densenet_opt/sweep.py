"""The sweep's measurement: time, score and probe one config, and turn it into a written Row.

Sweep holds a Workbench (workbench.py: weights, data, the fp32 reference, engine building)
and adds what only measuring needs: the timed rounds, each variant's fidelity, the
fresh-process probe, the rows and their faults. The CLI, nox and pytest all go through it;
the pytest fixtures only wire it up.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from collections.abc import Callable
from functools import cached_property

import torch

from densenet_opt import baselines, data, model
from densenet_opt.accuracy import ACCURACY, UNDEFINED_RELATIVE_ERROR, Fidelity, fidelity, predict
from densenet_opt.config import SweepOptions
from densenet_opt.errors import UserError
from densenet_opt.faults import classify_fault
from densenet_opt.measure.contention import Contention, PressureMark, free_cores
from densenet_opt.measure.env import environment_info, machine_name
from densenet_opt.measure.memory import MIB
from densenet_opt.measure.probe import ProbeResult, run_probe
from densenet_opt.measure.timing import LatencyStats, PairedSpeedup, benchmark_call, per_round_text
from densenet_opt.report import (
    BASELINE, OK, OUT_OF_MEMORY, RESULTS_FILE, SKIPPED_FOR_TIME, Row, top1_of_fp32_columns, upsert_row, utc_timestamp,
)
from densenet_opt.resume import completed_rows
from densenet_opt.variants import Engine, get_variant
from densenet_opt.workbench import Workbench, calibration_shortage

MODEL_NAME = "Densenet121"


def preflight(options: SweepOptions) -> None:
    """Find bad input (data layout, sample count, a weights file, the output directory, a
    stored baseline to compare with) in seconds, before a run that takes minutes; raises
    UserError."""
    try:
        options.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=options.output_dir):
            pass
    except OSError as error:
        raise UserError(f"cannot write results to {options.output_dir} ({error.strerror}): choose another --output-dir") from None
    if options.imagenet_val is not None:
        data.select_samples(options.imagenet_val, options.num_samples, ground_truth=options.ground_truth)
        calibrating = [v for v in options.variants if get_variant(v).calibrates]
        if calibrating:  # their images come after the evaluated ones, never the same
            try:
                data.select_samples(options.imagenet_val, options.calibration_samples, skip=options.num_samples,
                                    ground_truth=options.ground_truth)
            except UserError:
                raise UserError(calibration_shortage(options, options.calibration_samples, calibrating[0])) from None
    if options.compare_baseline:  # a corrupt, partial or (--require-baseline) missing stored baseline, before measuring
        directory = baselines.this_kind_dir(options.baseline_dir, options.device)
        if baselines.has_baseline(directory, options.device):
            baselines.check_benchmark_storage(directory)
            baselines.load_speedups(baselines.speedups_file(options.device, directory))
        elif options.require_baseline:
            raise baselines.BaselineMissing(
                f"{baselines.no_baseline_line(options.baseline_dir, options.device)}; --require-baseline makes this a failure")
    if options.weights not in (model.AUTO, model.SYNTHETIC, model.TORCHVISION):
        weights = model.resolve_weights(options.weights, cache_dir=options.cache_dir, allow_pickle=options.allow_unsafe_weights)
        model.check_compatible(model.densenet121(weights=None).state_dict(), weights)


class ConfigFault(Exception):
    """A config's measurement ended in a fault that is itself a result (``status``: out of
    memory, NaN logits); its row is already written. Raised by Sweep.measure."""

    def __init__(self, status: str, error: BaseException) -> None:
        super().__init__(str(error))
        self.status = status


class Sweep:
    """The measurement of one (variant, batch size) over a Workbench (``workbench``: the
    weights, data, fp32 reference and engine building it delegates to): fidelity once per
    variant, the fresh-process probe once per config, the timed rounds, the rows. What the
    pytest plugin, the CLI and nox all go through."""

    def __init__(
        self, options: SweepOptions, progress: Callable[[str], None] = print,
        wrap_engine: Callable[[str, int, Engine], Engine] | None = None,
    ) -> None:
        """``wrap_engine(variant, batch_size, engine)`` may replace every engine this sweep
        builds for measuring (the pytest plugin passes its ``pytest_densenet_opt_engine`` hook)."""
        self.workbench = Workbench(options, progress=progress, wrap_engine=wrap_engine)
        self.options = options
        self.device = self.workbench.device
        self.progress = progress
        self.default_torch_threads = torch.get_num_threads()  # OMP_NUM_THREADS, else the usable cores
        self._fidelity: dict[str, Fidelity] = {}
        self._probes: dict[tuple[str, int], ProbeResult] = {}
        self._paired_baselines: dict[int, Engine] = {}
        # Per variant: why the time budget changed its --variant-options (a search skipped).
        self._override_reasons: dict[str, list[str]] = {}

    def override_options(self, variant: str, values: dict[str, str], reason: str) -> None:
        """Build ``variant`` with these --variant-options on top of the user's (a search
        skipped for the time budget); ``reason`` goes into its rows' engine_info."""
        self.workbench.override_options(variant, values)
        self._override_reasons.setdefault(variant, []).append(reason)

    def searches_skipped(self, variant: str) -> bool:
        """Whether the time budget changed how ``variant`` is built."""
        return variant in self._override_reasons

    def measure(self, variant: str, batch_size: int, engine: Engine, benchmark) -> Row | None:
        """Measure one config and write its row: fidelity (once per variant), memory and cold
        start in a fresh process, then ``rounds`` timed calls through pytest-benchmark's
        ``benchmark`` fixture; everything but the engine call happens before timing starts.

        Returns the Row written, or None under ``--benchmark-disable`` (nothing timed, no
        row). Raises ConfigFault (row written with its status) for out of memory or
        non-finite logits, VariantUnavailable when the fresh process cannot build the
        variant, UserError for a problem the user can fix; anything else propagates."""
        try:
            accuracy = self.fidelity(variant, engine, batch_size)
            memory = self.probe(variant, batch_size)
            batch = self.workbench.input_batch(batch_size)
            timed = self._time(variant, batch_size, engine, batch, benchmark)
        except Exception as error:
            status = self.record_fault(variant, batch_size, error)
            if status is None:
                raise
            raise ConfigFault(status, error) from error
        if timed is None:
            return None
        latency, paired, contention, threads = timed
        row = self.result_row(variant, batch_size, engine, latency, accuracy, memory)
        row = dataclasses.replace(row, cpu_pressure_pct=contention.cpu_pressure_pct, load_per_core=contention.load_per_core,
                                  torch_threads=threads)
        if paired is not None:
            row = dataclasses.replace(row, speedup_vs_baseline=paired.speedup, speedup_spread=paired.spread,
                                      speedup_per_round=per_round_text(paired.ratios) or None,
                                      contended_pairs=paired.contended_pairs if variant != BASELINE else None)
        self.write_row(row)
        self.progress(
            f"{variant} batch {batch_size}: {row.latency_ms_per_batch} ms/batch, "
            f"{row.throughput_samples_per_sec} samples/s, top-1 {row.accuracy_top_1}% ({row.accuracy_kind})"
            + (f", timed under contention ({row.contention_text})" if row.contended(self.options.max_cpu_pressure) else "")
        )
        return row

    def _time(
        self, variant: str, batch_size: int, engine: Engine, batch: torch.Tensor, benchmark,
    ) -> tuple[LatencyStats, PairedSpeedup | None, Contention, int] | None:
        """pytest-benchmark's timed rounds of ``engine``; with --speedup-pairing on, the
        baseline engine of this batch size runs (timed by perf_counter, untimed for
        pytest-benchmark) right before each round, and the pairs give the speedup. The
        baseline's own config pairs with nothing: its speedup is 1 by definition. The CPU
        contention is measured over the rounds, warm-up and paired calls included, and over
        each pair: pairs whose CPU pressure exceeds --max-cpu-pressure are left out of the
        speedup when enough quiet ones remain (PairedSpeedup.from_seconds); torch's engines
        run with ``timing_threads`` intra-op threads (returned last)."""
        pair = self.options.paired_speedup and variant != BASELINE
        baseline = self.paired_baseline(batch_size) if pair else None
        baseline_seconds: list[float] = []
        marks: list[PressureMark] = []  # when each pair began (PSI): which pairs were contended

        def run_baseline() -> None:
            marks.append(PressureMark.now())
            started = time.perf_counter()
            baseline(batch)  # host logits out: the device is synchronised inside the call
            baseline_seconds.append(time.perf_counter() - started)

        threads = self.timing_threads()
        torch.set_num_threads(threads)
        try:
            start = PressureMark.now()
            timed = benchmark_call(benchmark, engine, batch, rounds=self.options.rounds,
                                   warmup_rounds=self.options.warmup_rounds, before_each=run_baseline if pair else None)
            end = PressureMark.now()
            contention = Contention.since(start)
        finally:
            torch.set_num_threads(self.default_torch_threads)
        if timed is None:
            return None
        latency, seconds = timed
        if pair:
            spans = list(zip(marks, [*marks[1:], end]))[-len(seconds):]
            quiet = [not Contention.between(a, b).contended(self.options.max_cpu_pressure) for a, b in spans]
            paired = PairedSpeedup.from_seconds(baseline_seconds[-len(seconds):], seconds, quiet)
            return latency, paired, contention, threads
        if self.options.paired_speedup:  # the baseline itself: 1 by definition
            return latency, PairedSpeedup(1.0, 0.0, len(seconds)), contention, threads
        return latency, None, contention, threads

    def timing_threads(self) -> int:
        """torch's intra-op threads for timing a config: --torch-threads, or with auto the
        cores other processes leave free right now (measure.contention.free_cores, this
        process idle), at most torch's default. Eager PyTorch splits every operator evenly
        over its OpenMP threads, so one thread sharing a core with another process holds
        up every operator: with one busy loop beside a 2-core sweep, eager DenseNet-121 at
        batch 1 read 5-16x slower on 2 threads, 1.4x on the one free core (README,
        "Contention")."""
        if self.options.torch_threads is not None:
            return self.options.torch_threads
        return min(self.default_torch_threads, free_cores() or self.default_torch_threads)

    def paired_baseline(self, batch_size: int) -> Engine:
        """The baseline engine timed beside every variant of this batch size: built once per
        batch size and kept until ``close``."""
        if batch_size not in self._paired_baselines:
            self.progress(f"building the paired baseline engine for batch {batch_size}")
            self._paired_baselines[batch_size] = self.workbench.build_engine(BASELINE, batch_size)
        return self._paired_baselines[batch_size]

    def close(self) -> None:
        """Release the engines the sweep keeps (the paired baselines)."""
        for engine in self._paired_baselines.values():
            engine.close()
        self._paired_baselines.clear()

    def fidelity(self, variant: str, engine: Engine, batch_size: int) -> Fidelity:
        """Measured once per variant, with the first engine the sweep builds for it, at that
        engine's batch size (an engine built for a static shape accepts no other), streaming
        the evaluation images: only the logits, float32 [num_samples, 1000], are kept."""
        if variant not in self._fidelity:
            workbench = self.workbench
            reference = workbench.reference_logits
            self.progress(f"{variant}: accuracy over {len(workbench.eval_set)} images at batch {batch_size}")
            logits = predict(engine, workbench.eval_set, batch_size)
            self._fidelity[variant] = fidelity(logits, reference, workbench.labels, workbench.accuracy_kind or ACCURACY)
        return self._fidelity[variant]

    def probe(self, variant: str, batch_size: int) -> ProbeResult:
        """Measured once per config in a fresh process, shared by every test of it."""
        key = (variant, batch_size)
        if key not in self._probes:
            self.progress(f"{variant} batch {batch_size}: memory and cold start in a fresh process")
            self._probes[key] = run_probe(self.workbench.options_for(variant), variant, batch_size)
        return self._probes[key]

    @cached_property
    def environment(self) -> dict[str, str]:
        return environment_info(self.device)

    def result_row(
        self, variant: str, batch_size: int, engine: Engine, latency: LatencyStats,
        accuracy: Fidelity, memory: ProbeResult,
    ) -> Row:
        """The results row of one measured config (Row rounds as the CSV keeps it). Its
        speedup_vs_baseline is left empty: report.with_speedups fills it in from the
        file's baseline row when the row is written (write_row)."""
        gflops = self.workbench.gflops_per_image(engine)
        throughput = batch_size * 1e3 / latency.mean_ms
        return Row(
            model_name=MODEL_NAME,
            batch_size=batch_size,
            optimization_technique=variant,
            device=self.device.type,
            model_size_mb=engine.model_size_bytes / MIB,
            accuracy_top_1=accuracy.top1,
            accuracy_top_5=accuracy.top5,
            ram_usage_mb=memory.ram_usage_mb,
            vram_usage_mb=memory.vram_usage_mb,
            latency_ms_per_batch=latency.mean_ms,
            throughput_samples_per_sec=throughput,
            status=OK,
            gflops_per_image=gflops,
            achieved_gflops_per_sec=gflops * throughput,
            latency_ms_stddev=latency.stddev_ms,
            latency_ms_median=latency.median_ms,
            latency_ms_min=latency.min_ms,
            latency_ms_max=latency.max_ms,
            latency_ms_p90=latency.p90_ms,
            latency_ms_p99=latency.p99_ms,
            rounds=latency.rounds,
            accuracy_kind=accuracy.kind,
            agreement_top_1=accuracy.agreement_top_1,
            **top1_of_fp32_columns(accuracy.top1_of_fp32),
            logit_relative_error=accuracy.relative_error,
            num_samples=len(self.workbench.eval_set),
            weights=self.workbench.weights.source,
            data=self.workbench.eval_set.source,
            inputs=self.workbench.inputs_of(variant),
            vram_torch_peak_mb=memory.vram_torch_peak_mb,
            cold_start_ms=memory.cold_start_ms,
            engine_info=";".join(f"{k}={v}" for k, v in {
                **engine.info, **({SKIPPED_FOR_TIME: " / ".join(self._override_reasons[variant])}
                                  if variant in self._override_reasons else {}),
                **({"logit_relative_error": UNDEFINED_RELATIVE_ERROR} if accuracy.relative_error is None else {})}.items()),
            **self.environment,
            measured_at=utc_timestamp(),
            machine=self.machine,
        )

    def write_row(self, row: Row) -> None:
        """Upsert ``row`` into the output directory's CSV (speedups recomputed there)."""
        upsert_row(self.options.output_dir / RESULTS_FILE, row)

    @property
    def machine(self) -> str:
        """The ``machine`` column of this sweep's rows: --machine-label, else the host name."""
        return machine_name(self.options.machine_label)

    def completed_configs(self) -> set[tuple[str, int]]:
        """The (variant, batch size) of resume.completed_rows: measured in the output directory."""
        return {(r.variant, r.batch_size) for r in completed_rows(self.options)}

    def record_skipped_for_time(self, variant: str, batch_size: int, reason: str) -> None:
        """Write the row of a config not started because it would not fit in --time-budget,
        unless the output directory already holds a measured row of it (an earlier run's
        result is worth more than a note that this run did not get to it)."""
        if (variant, batch_size) in self.completed_configs():
            return
        self.write_row(Row(model_name=MODEL_NAME, batch_size=batch_size, optimization_technique=variant,
                           device=self.device.type, status=SKIPPED_FOR_TIME, engine_info=f"reason={reason}",
                           device_name=self.environment["device_name"], machine_kind=self.environment["machine_kind"],
                           measured_at=utc_timestamp(), machine=self.machine))

    def record_fault(self, variant: str, batch_size: int, error: BaseException) -> str | None:
        """Write a row saying why a config has no measurement (out of memory, NaN logits);
        None for errors that are not a measured outcome."""
        kind = classify_fault(error)
        if kind is None:
            return None
        if kind == OUT_OF_MEMORY:  # let go of what the failed config allocated before the next one
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.write_row(Row(model_name=MODEL_NAME, batch_size=batch_size, optimization_technique=variant,
                           device=self.device.type, status=kind, device_name=self.environment["device_name"],
                           machine_kind=self.environment["machine_kind"], measured_at=utc_timestamp(), machine=self.machine))
        return kind

