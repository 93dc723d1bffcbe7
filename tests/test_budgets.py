"""Assertion tests: every (variant, batch size) in the sweep against its budgets."""

from __future__ import annotations

import pytest

from densenet_opt.budgets import Budget, budget_for, load_budgets
from densenet_opt.measure.env import machine_kind
from densenet_opt.measure.memory import MIB


@pytest.fixture(scope="session")
def budgets(sweep) -> dict[str, Budget]:
    """The budgets, with this machine kind's overrides (densenet_opt/default_budgets/KIND/budgets.toml)."""
    return load_budgets(kind=machine_kind(sweep.device))


def test_fidelity_within_budget(sweep, engine_config, budgets) -> None:
    budget = budget_for(budgets, engine_config.variant)
    measured = sweep.fidelity(engine_config.variant, engine_config.engine, engine_config.batch_size)
    violations = budget.fidelity_violations(measured, sweep.workbench.reference_fidelity)
    violations += budget.size_violations(engine_config.engine.model_size_bytes / MIB)
    assert not violations, "\n".join(violations)


def test_memory_within_budget(sweep, engine_config, budgets) -> None:
    budget = budget_for(budgets, engine_config.variant)
    memory = sweep.probe(engine_config.variant, engine_config.batch_size)
    violations = budget.memory_violations(
        sweep.device.type, engine_config.batch_size, memory.ram_usage_mb, memory.vram_usage_mb
    )
    assert not violations, "\n".join(violations)
