"""The linear-case theorem with the library's mle solver (small n, the full sweep is
benchmarks/linear_theorem.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from linear_theorem import sweep  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return sweep(side=4, ms=[4, 7, 11, 15], seed=1, n_draws=3000, solver_draws=2, iterations=100)


def test_mle_solver_matches_closed_form(rows):
    for r in rows:
        assert r["solver_rel_error"] < 1e-3, r


def test_monte_carlo_error_matches_exact_expectation(rows):
    for r in rows:
        assert abs(r["z"]) < 4, r


def test_errors_lie_within_the_theorem_bounds(rows):
    for r in rows:
        assert r["lower"] <= r["exact"] <= r["upper"], r
        assert r["lower"] <= r["mc"] <= r["upper"], r
    exact = [r["exact"] for r in rows]
    assert exact == sorted(exact, reverse=True)  # more measurements, smaller error
