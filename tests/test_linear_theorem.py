"""The linear-case theorem with the library's mle solver (the full sweep is
benchmarks/linear_theorem.py; n = 64 with default arguments is tests/test_mle.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from linear_theorem import iterative_sweep, sweep  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return sweep(side=8, ms=[4, 24, 40, 56], seed=1, draws=40)


def test_mle_solver_matches_closed_form(rows):
    for r in rows:
        assert r["rel_closed_form"] < 1e-3 and r["residual"] < 1e-6, r


def test_monte_carlo_error_matches_exact_expectation(rows):
    for r in rows:
        assert abs(r["z"]) < 4, r


def test_errors_lie_within_the_theorem_bounds(rows):
    for r in rows:
        assert r["inside"], r  # every draw's exact expectation and the Monte-Carlo mean
        assert r["lower"] <= r["exact"] <= r["upper"], r
    exact = [r["exact"] for r in rows]
    assert exact == sorted(exact, reverse=True)  # more measurements, smaller error


def test_iterative_path_reaches_the_closed_form_at_n36():
    for r in iterative_sweep(6, seed=2):  # condition number of S: 0.8^-72 = 6.3e6
        assert r["rel_closed_form"] < 1e-3, r
        assert r["stop"] in ("gradient", "floor"), r
