"""Method mle is the exact noiseless MLE, max log p(x) subject to A x = y, through the public API:
the closed form for a dense linear flow at n = 64 (condition 2.6e12) with default arguments, the
Monte Carlo error against the exact expectation, the constraint kept for a Glow prior with
Matrix, Mask and block CS, float64 kept, and a clear refusal for blur."""

import sys
from pathlib import Path

import numpy as np
import pytest
import napari_flow_prior as nfp
from napari_flow_prior import operators as ops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from linear_theorem import check_m, closed_form, digit_crop, make_generator, model_for  # noqa: E402

SIDE, N = 8, 64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prior():
    G, s = make_generator(N, np.random.default_rng(0))
    return G, s, model_for(G, SIDE)


@pytest.mark.parametrize("m", [8, 16, 32, 48])
def test_default_mle_is_the_closed_form_at_n64(prior, m):
    G, _, model = prior
    rng = np.random.default_rng(m)
    for _ in range(3):
        A = rng.standard_normal((m, N))
        x0 = G @ rng.standard_normal(N)
        y = A @ x0
        result = nfp.reconstruct(y, ops.Matrix(A, (SIDE, SIDE)), model, method="mle", noise_sigma=0.0)
        expected = closed_form(G, A, y)
        assert result.image.dtype == np.float64 and result.log_density.dtype == np.float64
        assert np.linalg.norm(result.image.ravel() - expected) / np.linalg.norm(expected) <= 1e-3
        assert np.linalg.norm(A @ result.image.ravel() - y) / np.linalg.norm(y) <= 1e-6
        assert result.params["solver"] == "closed form"


@pytest.mark.parametrize("m", [8, 16, 32, 48])
def test_monte_carlo_error_is_the_exact_expectation(prior, m):
    G, s, model = prior
    row = check_m(G, s, model, m, SIDE, np.random.default_rng(100 + m), draws=40)
    assert abs(row["z"]) < 4, row
    assert row["rel_closed_form"] <= 1e-3 and row["residual"] <= 1e-6, row
    assert row["inside"], row  # sum_{i>m} s_i^2 <= E err <= m sum_{i>m-2} s_i^2


def test_closed_form_for_a_mask_and_cs_with_the_linear_flow(prior):
    G, _, model = prior
    rng = np.random.default_rng(3)
    x0 = (G @ rng.standard_normal(N)).reshape(SIDE, SIDE)
    for op in (ops.Mask.random((SIDE, SIDE), missing_fraction=0.5, seed=1),
               ops.GaussianProjection((SIDE, SIDE), ratio=0.4, seed=1, block=4)):
        y = op.forward(x0)
        A = np.asarray(op.forward(np.eye(N).reshape(N, SIDE, SIDE))).reshape(N, -1).T
        keep = np.abs(A).sum(1) > 0  # a mask's unobserved rows measure nothing
        result = nfp.reconstruct(y, op, model, method="mle", noise_sigma=0.0)
        expected = closed_form(G, A[keep], np.asarray(y).ravel()[keep])
        assert np.linalg.norm(result.image.ravel() - expected) / np.linalg.norm(expected) <= 1e-6
        assert np.linalg.norm(op.forward(result.image) - y) / np.linalg.norm(y) <= 1e-9


def test_iterative_path_stops_on_the_projected_gradient(prior):
    G, _, model = prior
    rng = np.random.default_rng(7)
    A = rng.standard_normal((48, N))
    y = A @ (G @ rng.standard_normal(N))
    result = nfp.reconstruct(y, ops.Matrix(A, (SIDE, SIDE)), model, method="mle", noise_sigma=0.0,
                             optimizer="lbfgs")
    expected = closed_form(G, A, y)
    assert result.params["stop"] == "gradient" and result.params["projected_gradient"] <= 1e-10
    assert result.n_iter < 1000 and result.image.dtype == np.float64
    assert np.linalg.norm(result.image.ravel() - expected) / np.linalg.norm(expected) <= 1e-6


@pytest.fixture(scope="module")
def digits():
    return nfp.load_model(ROOT / "sample_models" / "digits.safetensors")


@pytest.mark.parametrize("kind", ["matrix", "mask", "cs"])
def test_constraint_is_kept_with_a_glow_prior(digits, kind):
    side = 16
    x = digit_crop(side)
    n = side * side
    op = {"matrix": lambda: ops.Matrix(np.random.default_rng(0).standard_normal((n // 3, n)) / np.sqrt(n), (side, side)),
          "mask": lambda: ops.Mask.random((side, side), missing_fraction=0.6, seed=0),
          "cs": lambda: ops.GaussianProjection((side, side), ratio=0.3, seed=0, block=8)}[kind]()
    y = op.forward(x)
    result = nfp.reconstruct(y, op, digits, method="mle", noise_sigma=0.0, iterations=15, domain_check=False)
    x_hat = result.image.astype(np.float64)
    assert result.image.dtype == np.float32 and np.isfinite(x_hat).all()
    assert np.linalg.norm(op.forward(x_hat) - y) / np.linalg.norm(y) <= 1e-6
    assert result.params["residual"] <= 1e-6 and result.params["solver"] == "projected L-BFGS"
    assert result.losses[-1] < result.losses[0]  # the prior's density went up along the constraint


def test_blur_is_refused_naming_the_alternatives(digits):
    op = ops.Blur((16, 16), sigma=1.0)
    y = op.forward(np.full((16, 16), 0.5))
    with pytest.raises(ValueError, match=r"(?s)exactly.*method='map'.*method='latent'"):
        nfp.reconstruct(y, op, digits, method="mle", noise_sigma=0.0)


def test_other_optimizers_are_refused_clearly(prior):
    G, _, model = prior
    A = np.random.default_rng(0).standard_normal((8, N))
    with pytest.raises(ValueError, match="'auto'.*'lbfgs'"):
        nfp.reconstruct(A @ G[:, 0], ops.Matrix(A, (SIDE, SIDE)), model, method="mle", optimizer="adam")


def test_y_outside_the_range_of_a_tall_matrix_is_reported(prior):
    G, _, model = prior
    A = np.random.default_rng(1).standard_normal((80, N))  # more measurements than pixels
    y = A @ G[:, 0] + np.random.default_rng(2).standard_normal(80) * 1e-3
    with pytest.warns(RuntimeWarning, match="no exact solution.*method='map'"):
        result = nfp.reconstruct(y, ops.Matrix(A, (SIDE, SIDE)), model, method="mle", noise_sigma=0.0)
    expected = np.linalg.lstsq(A, y, rcond=None)[0]  # a determined x: the least-squares one
    assert np.allclose(result.image.ravel(), expected, atol=1e-9)
    assert result.params["residual"] > 1e-6


def test_an_out_of_domain_mle_keeps_its_constraint_and_warns(digits):
    """The domain check replaces a map result far outside the prior's domain by a classical one;
    an mle result is the constrained maximum the caller asked for: kept, with the warning."""
    side = 16
    yy, xx = np.mgrid[0:side, 0:side]
    x = (0.5 + 0.4 * np.sin(xx * 2.5) * np.cos(yy * 2.1)).astype(np.float64)  # no digit
    op = ops.GaussianProjection((side, side), ratio=0.3, seed=0, block=8)
    y = op.forward(x)
    with pytest.warns(RuntimeWarning, match="kept, as it solves A x = y exactly"):
        result = nfp.reconstruct(y, op, digits, method="mle", noise_sigma=0.0, iterations=15)
    assert "fallback" not in result.params and "domain_warning" in result.params
    assert np.linalg.norm(op.forward(result.image.astype(np.float64)) - y) / np.linalg.norm(y) <= 1e-6
