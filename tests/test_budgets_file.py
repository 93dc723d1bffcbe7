"""Reading the budgets file: the committed one is valid; mistakes name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from densenet_opt.accuracy import ACCURACY, AGREEMENT, Fidelity
from densenet_opt.budgets import BUDGETS_FILE, limit_for_batch, load_budgets
from densenet_opt.errors import UserError
from densenet_opt.variants import STACKED, registry

VARIANTS = ("baseline", "other")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    return path


def test_the_committed_file_covers_every_registered_variant_and_stacked_chain() -> None:
    budgets = load_budgets(BUDGETS_FILE)
    assert set(registry()) | set(STACKED) <= set(budgets)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[baselin]\n", "unknown variant 'baselin' (did you mean 'baseline'?)"),
        ("[baseline]\nagreement_top1_mn = 99\n", "[baseline] agreement_top1_mn: unknown key 'agreement_top1_mn' (did you mean 'agreement_top_1_min'?)"),
        ("[baseline]\nagreement_top1_min = 99\n", "[baseline] agreement_top1_min: this key is now agreement_top_1_min"),
        ("[baseline]\nagreement_top_1_min = 'high'\n", "must be a number"),
        ("[baseline]\nagreement_top_1_min = { 1 = 3 }\n", "must be a number, not a table"),
        ("[baseline]\nram_mb_max_cpu = { one = 3 }\n", "entry one = 3"),
        ("[baseline\n", "is not valid TOML"),
        ("baseline = 3\n", "must be a table"),
    ],
)
def test_mistakes_name_the_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as error:
        load_budgets(path, VARIANTS)
    assert str(path) in str(error.value) and fragment in str(error.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_budgets(tmp_path / "none.toml", VARIANTS)


def test_violations_name_variant_metric_budget_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[other]\nagreement_top_1_min = 97\naccuracy_drop_max = 1.0\nram_mb_max_cpu = { 1 = 100, 8 = 400 }\n")
    budget = load_budgets(path, VARIANTS)["other"]
    baseline = Fidelity(ACCURACY, 75.0, 92.0, 100.0, 0.0)
    measured = Fidelity(ACCURACY, 73.5, 91.0, 96.5, 0.1)
    (agreement, drop) = budget.fidelity_violations(measured, baseline)
    assert agreement.startswith("other: top-1 agreement with fp32 (%) measured 96.5, budget >= 97")
    assert "top-1 drop vs baseline (points) measured 1.5, budget <= 1.0 (accuracy_drop_max in" in drop
    # Without labels the drop is not defined, so only agreement is checked.
    assert len(budget.fidelity_violations(Fidelity(AGREEMENT, 96.5, 99.0, 96.5, 0.1), baseline)) == 1
    assert budget.memory_violations("cpu", 4, 390.0, 0.0) == []
    (ram,) = budget.memory_violations("cpu", 4, 401.0, 0.0)
    assert "RAM (MB) at batch 4 measured 401, budget <= 400" in ram


def test_limit_for_batch_uses_the_next_listed_size() -> None:
    table = {"1": 10, "8": 80, "32": 320}
    assert [limit_for_batch(table, b) for b in (1, 2, 8, 9, 32, 64)] == [10, 80, 80, 320, 320, 320]
    assert limit_for_batch(5.0, 3) == 5.0 and limit_for_batch(None, 3) is None


def test_a_kinds_overrides_replace_the_keys_they_name(tmp_path: Path) -> None:
    """KIND/budgets.toml beside the budgets file tightens a limit on one machine kind only; the
    merged budget names the kind's file."""
    path = write(tmp_path, "[other]\nagreement_top_1_min = 90\nrelative_error_max = 0.45\n")
    (tmp_path / "amd-epyc_x86v4-vnni-bf16_2c").mkdir()
    (tmp_path / "amd-epyc_x86v4-vnni-bf16_2c" / "budgets.toml").write_text("[other]\nrelative_error_max = 0.2\n")
    assert load_budgets(path, VARIANTS)["other"].limits == {"agreement_top_1_min": 90, "relative_error_max": 0.45}
    tight = load_budgets(path, VARIANTS, kind="amd-epyc_x86v4-vnni-bf16_2c")["other"]
    assert tight.limits == {"agreement_top_1_min": 90, "relative_error_max": 0.2}
    assert tight.source == tmp_path / "amd-epyc_x86v4-vnni-bf16_2c" / "budgets.toml"
    assert load_budgets(path, VARIANTS, kind="amd-epyc_x86v3_2c")["other"].limits["relative_error_max"] == 0.45



def test_summary_and_recommend_check_each_row_against_its_kinds_budgets(tmp_path: Path) -> None:
    from densenet_opt import report
    from densenet_opt.budgets import check_budgets

    path = write(tmp_path, "[pruned]\nrelative_error_max = 0.45\n")
    (tmp_path / "amd-epyc_x86v4-vnni-bf16_2c").mkdir()
    (tmp_path / "amd-epyc_x86v4-vnni-bf16_2c" / "budgets.toml").write_text("[pruned]\nrelative_error_max = 0.2\n")

    def row(kind: str) -> report.Row:
        return report.Row(optimization_technique="pruned", batch_size=1, device="cpu", latency_ms_per_batch=1.0,
                          accuracy_top_1=95.0, accuracy_top_5=99.0, agreement_top_1=95.0, logit_relative_error=0.3,
                          accuracy_kind=AGREEMENT, machine_kind=kind)

    tight, loose = row("amd-epyc_x86v4-vnni-bf16_2c"), row("amd-epyc_x86v3_2c")
    checks = check_budgets([tight, loose], load_budgets(path))
    assert checks[tight].within is False and "relative_error_max" in checks[tight].reasons[0]
    assert checks[loose].within is not False
