"""The data terms: Gaussian, and Poisson with read noise (likelihood.py)."""

import math

import numpy as np
import pytest
import torch

from napari_flow_prior.likelihood import check_photons, effective_sigma, negative_log_likelihood
from napari_flow_prior.operators import Mask


def test_gaussian_term_is_the_scaled_squared_residual():
    ax, y = torch.rand(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    value = negative_log_likelihood(ax, y, 0.05, None)
    assert torch.isclose(value, ((ax - y) ** 2).sum() / (2 * 0.05 ** 2))
    per_row = negative_log_likelihood(ax, y, 0.05, None, batch=True)
    assert per_row.shape == (3,) and torch.isclose(per_row.sum(), value)


def test_poisson_term_is_half_the_deviance_of_the_shifted_counts():
    photons, sigma = 40.0, 0.02
    ax = torch.rand(64, dtype=torch.float64) + 0.05
    y = torch.rand(64, dtype=torch.float64)
    s = photons * sigma ** 2
    u, v = photons * (ax + s), photons * (y + s)  # counts: mean and observation
    deviance_half = (u - v - v * torch.log(u / v)).sum()
    assert torch.isclose(negative_log_likelihood(ax, y, sigma, photons), deviance_half)
    assert negative_log_likelihood(y, y, sigma, photons).abs() < 1e-9  # its minimum, at A x = y


def test_poisson_term_tends_to_the_gaussian_with_the_signal_dependent_variance():
    photons, sigma = 1e5, 0.01
    y = torch.rand(256, dtype=torch.float64) * 0.8 + 0.1
    ax = y + 0.002 * torch.randn(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    poisson = negative_log_likelihood(ax, y, sigma, photons)
    weighted = ((ax - y) ** 2 / (2 * (y / photons + sigma ** 2))).sum()
    assert abs(float(poisson / weighted) - 1) < 0.01


@pytest.mark.parametrize("count", [0.0, 0.3])
def test_poisson_term_is_smallest_at_a_nonnegative_rate_and_finite_below_zero(count):
    """A negative iterate is pushed back (a zero count too), with finite values and gradients."""
    a = torch.linspace(-0.2, 0.6, 8001, dtype=torch.float64, requires_grad=True)
    y = torch.full_like(a, count)
    values = torch.stack([negative_log_likelihood(a[i:i + 1], y[i:i + 1], 0.0, 30.0) for i in range(0, 8001, 8)])
    best = float(a.detach()[::8][values.argmin()])
    assert abs(best - count) < 2e-3
    total = negative_log_likelihood(a, y, 0.0, 30.0)
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(a.grad).all()
    assert (a.grad[a < -0.01] < 0).all()  # the slope points back up towards a >= 0


def test_effective_sigma_is_the_rms_of_the_measurements_sigmas():
    y = np.array([[0.2, 0.6], [0.0, 123.0]])
    mask = Mask(np.array([[True, True], [True, False]]))  # only the observed pixels count
    expected = math.sqrt((0.2 + 0.6 + 0.0) / 3 / 50 + 0.01 ** 2)
    assert math.isclose(effective_sigma(y, 0.01, 50.0, mask), expected)
    assert effective_sigma(y, 0.01, None) == 0.01


@pytest.mark.parametrize("bad", [0, -5, float("nan"), float("inf"), "many", [3]])
def test_photons_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="photons"):
        check_photons(bad)
