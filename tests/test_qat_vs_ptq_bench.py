"""benchmarks/qat_vs_ptq.py: what its verdict claims from the rows (pure logic, no training, no runtimes)."""

from __future__ import annotations

import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def bench():
    with benchmark_script("qat_vs_ptq") as module:
        yield module


def _rows(fp32, ptq_edgekd, ptq_ort, no_kd: list, kd: list) -> dict:
    def qat(runs):
        return {"accuracy": sum(runs) / len(runs), "runs": [{"accuracy": a} for a in runs]}

    return {"fp32": {"accuracy": fp32}, "ptq-edgekd": {"accuracy": ptq_edgekd}, "ptq-ort": {"accuracy": ptq_ort},
            "qat-no-kd": qat(no_kd), "qat-kd": qat(kd)}


def test_ptq_within_a_point_claims_no_win(bench):
    verdict = bench._verdict(_rows(0.99, 0.985, 0.98, [0.99], [0.99]))
    assert not verdict["ptq_hurts"] and verdict["problems"] == [] and "nothing to recover" in verdict["finding"]


def test_recovery_is_measured_against_the_best_ptq_row(bench):
    verdict = bench._verdict(_rows(1.0, 0.90, 0.96, [0.97, 0.975], [0.99, 0.995]))
    assert verdict["recovered"] == pytest.approx((0.9925 - 0.96) / 0.04)  # the peer's PTQ, the better one
    assert verdict["problems"] == [] and verdict["kd_beyond_seed_spread"]


def test_a_kd_edge_inside_the_seed_spread_is_said_to_be_one(bench):
    verdict = bench._verdict(_rows(1.0, 0.90, 0.90, [0.97, 0.99], [0.98, 0.985]))
    assert not verdict["kd_beyond_seed_spread"] and "not shown beyond seed noise" in verdict["finding"]


def test_a_small_recovery_and_kd_losing_are_problems(bench):
    verdict = bench._verdict(_rows(1.0, 0.80, 0.80, [0.86], [0.85]))
    assert len(verdict["problems"]) == 2
