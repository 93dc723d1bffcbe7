"""Reports from a results CSV: plots, summary.md, the fastest config within budget, recommend.

"Within budget" is one check (budgets.check_row: fidelity, model size, memory) for both
summary.md and recommend.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_opt import budgets, cli, render, report
from densenet_opt.accuracy import ACCURACY, AGREEMENT, Fidelity, Top1OfFp32
from densenet_opt.budgets import Budget
from densenet_opt.recommend import recommend
from densenet_opt.render import markdown, plots
from densenet_opt.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(variant: str, batch_size: int, device: str = "cuda", *, latency: float, top1: float = 100.0,
         ram: float = 300.0, vram: float = 500.0, kind: str = AGREEMENT, **extra: object) -> report.Row:
    return report.Row(
        model_name="Densenet121", optimization_technique=variant, batch_size=batch_size, device=device,
        latency_ms_per_batch=latency, latency_ms_stddev=latency / 20,
        throughput_samples_per_sec=batch_size * 1e3 / latency,
        accuracy_kind=kind, accuracy_top_1=top1, accuracy_top_5=min(100.0, top1 + 2),
        agreement_top_1=top1, logit_relative_error=1e-6 if variant == "baseline" else 0.05, num_samples=500,
        ram_usage_mb=ram, vram_usage_mb=vram if device == "cuda" else 0.0,
        **{"model_size_mb": 31.0, "top1_of_fp32_pct": top1, "top1_of_fp32_low": top1 - 1.0,
           "top1_of_fp32_high": min(100.0, top1 + 1.0), **extra},
    )


def write_results(path: Path, rows: list[report.Row]) -> Path:
    for row in rows:
        report.upsert_row(path / report.RESULTS_FILE, row)
    return path / report.RESULTS_FILE


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """baseline; fast (within budget); fastest (outside: low agreement); one config out of memory."""
    rows = []
    for size in (1, 8, 32):
        rows.append(_row("baseline", size, latency=5 + size, vram=200 + 40 * size))
        rows.append(_row("fast", size, latency=(5 + size) / 1.5, top1=99.5, vram=150 + 30 * size,
                         engine_info="compile_s=3.0;gflops_per_image=4.000"))
        rows.append(_row("fastest", size, latency=(5 + size) / 3, top1=80.0, vram=100 + 20 * size))
    rows.append(report.Row(model_name="Densenet121", optimization_technique="fast", batch_size=64, device="cuda",
                           status=report.OUT_OF_MEMORY))
    write_results(tmp_path, rows)
    return tmp_path


BUDGETS = {name: Budget(name, {"agreement_top_1_min": 99.0}, Path("budgets.toml")) for name in ("baseline", "fast", "fastest")}


def test_summary_writes_plots_and_picks_the_fastest_within_budget(results_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(budgets, "load_budgets_or_none", lambda path: (BUDGETS, None))
    written = render.summarize(results_dir)
    names = {path.name for path in written}
    assert names == {plots.LATENCY_PLOT, plots.ACCURACY_PLOT, plots.MEMORY_PLOT, plots.FLOPS_PLOT, markdown.SUMMARY_FILE}
    for path in written:
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, path
    text = (results_dir / markdown.SUMMARY_FILE).read_text()
    best = text.split(markdown.FASTEST_HEADING)[1].split("\n\n")[1]
    assert [line.split(" | ")[2] for line in best.splitlines()[2:]] == ["fast", "fast", "fast"]
    assert "1.50x" in best  # speedup over the baseline at the same batch size
    assert "fastest at batch 1 on cuda: fastest: top-1 agreement with fp32 (%) measured 80" in text
    assert "fast at batch 64 on cuda: out_of_memory" in text  # the failed config is named, not plotted
    assert "| GFLOP/image | achieved GFLOP/s |" in text and "4.000" in text
    assert "agreement with the fp32 model" in text  # the accuracy kind is stated
    matrix = text.split("On cuda:")[1].split("\n\n")[1].splitlines()
    assert matrix[0] == "| variant | batch 1 | batch 8 | batch 32 |"
    assert matrix[4] == "| `fastest` | 500.0 (3.00x) | 1846.2 (3.00x) | 2594.6 (3.00x) |"


def test_without_flops_or_budgets_the_summary_says_what_it_left_out(tmp_path: Path) -> None:
    write_results(tmp_path, [_row("baseline", 1, "cpu", latency=60.0)])
    budgets_path = tmp_path / "absent.toml"
    written = render.summarize(tmp_path, budgets_path)
    assert plots.FLOPS_PLOT not in {p.name for p in written}
    text = (tmp_path / markdown.SUMMARY_FILE).read_text()
    assert f"budgets file {budgets_path} does not exist" in text
    assert "No config could be shown to be within its budget." in text


def test_accuracy_axis_is_labelled_by_accuracy_kind(tmp_path: Path) -> None:
    agreement = report.load_results(write_results(tmp_path / "a", [_row("baseline", 1, latency=5.0)]))
    accuracy = report.load_results(write_results(tmp_path / "b", [_row("baseline", 1, latency=5.0, kind=ACCURACY)]))
    assert plots.accuracy_label(agreement) == "top-1 agreement with fp32 (%)"
    assert plots.accuracy_label(accuracy) == "top-1 accuracy (%)"
    assert "accuracy_kind" in plots.accuracy_label(agreement + accuracy)


def test_fidelity_is_rebuilt_from_the_columns_a_sweep_writes() -> None:
    row = _row("fast", 4, latency=5.0, top1=97.25, kind=ACCURACY).as_csv()
    row["logit_relative_error"] = "0.0123"
    assert budgets.fidelity_of(report.Row.from_csv(row)) == Fidelity(ACCURACY, 97.25, 99.25, 97.25, 0.0123,
                                                                      Top1OfFp32(97.25, 96.25, 98.25, images=500))
    assert budgets.fidelity_of(report.Row.from_csv({**row, "top1_of_fp32_low": ""})).top1_of_fp32 is None
    assert budgets.fidelity_of(report.Row.from_csv({**row, "accuracy_top_5": ""})) is None


def test_accuracy_drop_is_measured_against_the_baseline_row_of_the_same_device(tmp_path: Path) -> None:
    rows = [_row("baseline", 1, latency=5.0, top1=75.0, kind=ACCURACY), _row("fast", 1, latency=4.0, top1=73.5, kind=ACCURACY),
            _row("fast", 1, "cpu", latency=40.0, top1=74.5, kind=ACCURACY)]
    results = report.load_results(write_results(tmp_path, rows))
    limits = {"fast": Budget("fast", {"accuracy_drop_max": 1.0}, Path("b.toml")), "baseline": Budget("baseline", {}, Path("b.toml"))}
    checks = budgets.check_budgets(results, limits)
    by_device = {(r.variant, r.device): checks[r] for r in results}
    assert by_device[("fast", "cuda")].within is False and "drop vs baseline" in by_device[("fast", "cuda")].reasons[0]
    assert by_device[("fast", "cpu")].within is None  # no cpu baseline row to measure the drop against
    assert by_device[("baseline", "cuda")].within is True


def test_recommend_takes_the_highest_throughput_within_both_limits(results_dir: Path) -> None:
    results = report.load_results(results_dir)
    best = recommend(results, max_memory_mb=600, max_latency_ms=10, checks=None)
    assert (best.variant, best.batch_size) == ("fastest", 8)  # fastest bs32 is 12.3 ms: over the latency limit
    checks = budgets.check_budgets(results, BUDGETS)
    best = recommend(results, max_memory_mb=600, max_latency_ms=10, checks=checks)
    assert (best.variant, best.batch_size) == ("fast", 8)  # fastest fails its agreement budget


def test_memory_is_ram_on_cpu_rows_and_vram_on_cuda_rows(tmp_path: Path) -> None:
    rows = [_row("baseline", 4, "cpu", latency=100.0, ram=900.0), _row("baseline", 4, "cuda", latency=10.0, ram=2000.0, vram=400.0)]
    results = report.load_results(write_results(tmp_path, rows))
    assert recommend(results, max_memory_mb=500, max_latency_ms=None).device == "cuda"  # RAM 2000 is irrelevant there
    results_cpu = [r for r in results if r.device == "cpu"]
    with pytest.raises(UserError, match="RAM 900 MiB"):
        recommend(results_cpu, max_memory_mb=500, max_latency_ms=None)


def test_nothing_fits_names_the_closest_candidates(results_dir: Path) -> None:
    results = report.load_results(results_dir)
    with pytest.raises(UserError) as error:
        recommend(results, max_memory_mb=50, max_latency_ms=1, checks=budgets.check_budgets(results, BUDGETS))
    message = str(error.value)
    assert "fits memory <= 50 MiB and latency <= 1 ms" in message
    assert "closest: fast at batch 1 on cuda (VRAM 180 MiB, 4.0 ms), baseline at batch 1" in message
    assert "3 configs not shown to be within their budget were left out" in message
    assert "\n" not in message


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_recommend_command(results_dir: Path, capsys) -> None:
    code, out, _ = run_main(capsys, "recommend", "--results", str(results_dir), "--max-memory-mb", "600",
                            "--max-latency-ms", "10", "--ignore-budgets", "--min-top1-of-fp32", "none")
    assert code == 0 and out.startswith("fastest at batch size 8 on cuda: ")


def test_recommend_keeps_to_mlperfs_accuracy_rule_by_default(results_dir: Path, capsys) -> None:
    """"fastest" is 3x the baseline but keeps 80% of the fp32 top-1: below MLPerf's 99%."""
    code, out, _ = run_main(capsys, "recommend", "--results", str(results_dir), "--ignore-budgets")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("fast at batch size 32 on cuda: ")
    assert lines[1] == "accuracy: top-1 99.50% of the fp32 model's (95% CI 98.50-100.00, 500 images, agreement_with_fp32)"
    assert lines[2] == ("not considered (top-1 below 99% of the fp32 model's, MLPerf's rule; --min-top1-of-fp32 none "
                        "includes them): fastest (80.00%)")
    code, out, _ = run_main(capsys, "recommend", "--results", str(results_dir), "--ignore-budgets", "--min-top1-of-fp32", "99.6")
    assert code == 0 and out.startswith("baseline at batch size 32 on cuda: ")


@pytest.mark.parametrize("text", ["0", "101", "most", "nan"])
def test_the_accuracy_rule_must_be_a_percentage_or_none(results_dir: Path, capsys, text: str) -> None:
    code, _, err = run_main(capsys, "recommend", "--results", str(results_dir), "--min-top1-of-fp32", text)
    assert code == 2 and "--min-top1-of-fp32 must be a percentage in (0, 100]" in err and err.count("\n") == 1


def test_a_row_without_the_accuracy_figure_is_not_recommended_under_the_rule(tmp_path: Path) -> None:
    """Rows of an older version have no top1_of_fp32 columns: they cannot be shown to meet the rule."""
    old = _row("baseline", 1, latency=5.0, top1_of_fp32_pct=None, top1_of_fp32_low=None, top1_of_fp32_high=None)
    results = [old, _row("fast", 1, latency=2.0, top1=99.5)]
    assert recommend(results, max_memory_mb=None, max_latency_ms=None, min_top1_of_fp32=99.0).variant == "fast"
    assert recommend(results[:1], max_memory_mb=None, max_latency_ms=None, min_top1_of_fp32=None).variant == "baseline"
    with pytest.raises(UserError, match="has MLPerf's accuracy figure .* pass --min-top1-of-fp32 none"):
        recommend(results[:1], max_memory_mb=None, max_latency_ms=None, min_top1_of_fp32=99.0)
    with pytest.raises(UserError, match="within its budget and at least 99.6% of the fp32 model's top-1"):
        recommend(results, max_memory_mb=None, max_latency_ms=None, min_top1_of_fp32=99.6)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist: run `densenet-opt sweep` first"),
        ("", "holds no rows"),
        ("a,b\n1,2\n", "has no column optimization_technique, batch_size, device"),
        ("optimization_technique,batch_size,device,latency_ms_per_batch,throughput_samples_per_sec,ram_usage_mb,vram_usage_mb\n"
         "baseline,1,cpu,fast,1,1,0\n", "line 2: latency_ms_per_batch is 'fast', not a number"),
    ],
)
def test_recommend_on_a_bad_results_file_is_one_sentence(tmp_path: Path, capsys, content: str | None, fragment: str) -> None:
    path = tmp_path / "results.csv"
    if content is not None:
        path.write_text(content)
    code, _, err = run_main(capsys, "recommend", "--results", str(path), "--max-memory-mb", "100")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


@pytest.mark.parametrize("limit", ["0", "-5", "many", "nan"])
def test_recommend_limits_must_be_positive_numbers(results_dir: Path, capsys, limit: str) -> None:
    code, _, err = run_main(capsys, "recommend", "--results", str(results_dir), "--max-latency-ms", limit)
    assert code == 2 and "--max-latency-ms must be a positive number" in err


def test_a_summary_that_fails_does_not_fail_the_sweep(results_dir: Path, monkeypatch, capsys) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(plots, "write_plots", broken)
    render.summarize_after_sweep(results_dir)
    assert "no summary: RuntimeError: no fonts" in capsys.readouterr().out
    render.summarize_after_sweep(results_dir / "absent")  # no results yet: nothing to say
    assert capsys.readouterr().out == ""


def test_the_sweep_ends_by_printing_the_throughput_table(results_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(plots, "write_plots", lambda results, out_dir: [])
    render.summarize_after_sweep(results_dir)
    out = capsys.readouterr().out
    assert "samples/s (speedup over baseline) on cuda:" in out
    assert "| `fast` | 250.0 (1.50x) | 923.1 (1.50x) | 1297.3 (1.50x) |" in out


def test_within_budget_means_fidelity_and_model_size_and_memory_everywhere(tmp_path: Path, monkeypatch) -> None:
    """One meaning for summary.md and recommend: a config with perfect agreement but over its
    VRAM limit at its batch size, or over its size limit, is outside its budget."""
    rows = [_row("baseline", 1, latency=10.0, vram=300.0), _row("baseline", 8, latency=40.0, vram=900.0),
            _row("fat", 1, latency=5.0, vram=200.0, model_size_mb=120.0)]
    limits = {
        "baseline": Budget("baseline", {"agreement_top_1_min": 99.0, "vram_mb_max": {"1": 400, "8": 800}}, Path("b.toml")),
        "fat": Budget("fat", {"model_size_mb_max": 100}, Path("b.toml")),
    }
    results = report.load_results(write_results(tmp_path, rows))
    checks = budgets.check_budgets(results, limits)
    within = {(r.variant, r.batch_size): checks[r].within for r in results}
    assert within == {("baseline", 1): True, ("baseline", 8): False, ("fat", 1): False}
    assert "VRAM (MB) at batch 8 measured 900, budget <= 800" in checks[results[1]].reasons[0]
    assert "model size (MB) measured 120, budget <= 100" in checks[results[2]].reasons[0]
    assert [budgets.within_budget(r, limits, results[0]) for r in results] == [True, False, False]
    assert (recommend(results, max_memory_mb=None, max_latency_ms=None, checks=checks).variant,
            recommend(results, max_memory_mb=None, max_latency_ms=None, checks=checks).batch_size) == ("baseline", 1)
    monkeypatch.setattr(budgets, "load_budgets_or_none", lambda path: (limits, None))
    render.summarize(tmp_path)
    text = (tmp_path / markdown.SUMMARY_FILE).read_text()
    assert "- baseline at batch 8 on cuda: baseline: VRAM (MB) at batch 8 measured 900" in text
    assert "- fat at batch 1 on cuda: fat: model size (MB) measured 120" in text


def test_the_summary_shows_the_speedup_column_of_the_results() -> None:
    """summary.md reads speedup_vs_baseline as written (report.with_speedups), never recomputes it."""
    rows = report.with_speedups([_row("baseline", 1, latency=9.0), _row("fast", 1, latency=3.0)])
    assert markdown.throughput_matrix(rows, "cuda").splitlines()[3] == "| `fast` | 333.3 (3.00x) |"
    unpaired = [_row("fast", 1, latency=3.0, speedup_vs_baseline=2.5)]
    assert markdown.throughput_matrix(unpaired, "cuda").splitlines()[2] == "| `fast` | 333.3 (2.50x) |"
