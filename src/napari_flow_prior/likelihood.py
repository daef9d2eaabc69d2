"""The noise model of the measurements: the data term -log p(y | A x), and the noise level of measured data.

**Gaussian** noise, y = A x + N(0, sigma^2): ||A x - y||^2 / (2 sigma^2).

**Poisson** (photon-limited) noise with Gaussian read noise, the model of
``Operator.measure(noise="poisson")``: y = Poisson(photons * A x) / photons + N(0, sigma^2), with
``photons`` the expected count at intensity 1. The read noise is folded in by the shifted-Poisson
approximation (photons * y + photons^2 sigma^2 is taken as Poisson with mean
photons * A x + photons^2 sigma^2, exact in mean and variance), whose minus log-likelihood, less its
minimum, is with s = photons * sigma^2

    photons * sum( (a + s) - (y + s) - (y + s) * log((a + s) / (y + s)) ),   a = A x,

(half the Poisson deviance): it weighs each measurement by its own variance a / photons + sigma^2
(bright pixels are noisier than dark ones) and tends to the Gaussian term with that variance as
counts grow. Where a + s falls below ``TINY`` (an iterate with negative intensities) the term goes
on as a quadratic continuation, so it stays finite and pushes the iterate back to nonnegative
rates, a zero count included.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TINY = 1e-6  # the smallest a + s at which the Poisson term is evaluated exactly


def check_photons(photons) -> float | None:
    """``photons`` as a float (None: Gaussian noise); ValueError unless a finite number > 0."""
    if photons is None:
        return None
    try:
        value = float(photons)
    except (TypeError, ValueError):
        raise ValueError(f"photons must be a number > 0 (the expected count at intensity 1), got {photons!r}") from None
    if not 0 < value < math.inf:
        raise ValueError(f"photons must be a number > 0 (finite: the expected count at intensity 1), got {photons}")
    return value


def effective_sigma(y, noise_sigma: float, photons: float | None, op=None) -> float:
    """The one standard deviation that stands for the noise: ``noise_sigma`` for Gaussian noise;
    for Poisson, sqrt(mean(max(y, 0)) / photons + noise_sigma^2) over the measurements ``op``
    observes (a mask's observed pixels; every one for other operators or None), the
    root-mean-square of their standard deviations (for warm starts, baselines, fallbacks and the
    posterior's annealing)."""
    if photons is None:
        return float(noise_sigma)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    if op is not None and op.kind == "mask":
        y = y[torch.as_tensor(np.broadcast_to(op.observed_full, tuple(y.shape)).copy())]
    mean = float(y.clamp_min(0).mean()) if y.numel() else 0.0
    return math.sqrt(mean / photons + noise_sigma ** 2)


def negative_log_likelihood(ax: torch.Tensor, y: torch.Tensor, sigma: float, photons: float | None,
                            batch: bool = False) -> torch.Tensor:
    """Minus the log-likelihood of ``y`` given ``ax`` = A x, less its minimum over A x (so 0 for
    A x = y): summed over everything, or with ``batch`` per entry of the first axis."""
    if photons is None:
        term = (ax - y).pow(2) / (2 * sigma ** 2)
    else:
        s = photons * sigma ** 2
        v = (y + s).clamp_min(0)
        t = ax + s
        exact = (t - v) - (torch.xlogy(v, t.clamp_min(TINY)) - torch.xlogy(v, v))
        # below TINY: the expansion at TINY, f(TINY) + f'(TINY) d + c d^2 / 2 with d = t - TINY and
        # c = max(f''(TINY), 1 / TINY), so that even a zero count (f'' = 0) has its minimum at t = 0
        d = t - TINY
        at = (TINY - v) - (torch.xlogy(v, torch.full_like(v, TINY)) - torch.xlogy(v, v))
        below = at + (1 - v / TINY) * d + torch.clamp_min(v / TINY ** 2, 1 / TINY) * d.pow(2) / 2
        term = photons * torch.where(t >= TINY, exact, below)
    return term.flatten(1).sum(1) if batch else term.sum()


def diagonal_details(y: np.ndarray) -> np.ndarray:
    """The finest diagonal Haar details (x00 - x01 - x10 + x11) / 2 of every 2x2 block of the last
    two axes (an odd last row/column is left out); for white noise of standard deviation sigma
    they have standard deviation sigma."""
    y = np.asarray(y, np.float64)
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    return (y[..., 0:h:2, 0:w:2] - y[..., 0:h:2, 1:w:2] - y[..., 1:h:2, 0:w:2] + y[..., 1:h:2, 1:w:2]) / 2


def estimate_noise_sigma(y: np.ndarray, op) -> float:
    """Noise standard deviation of measured data from its finest diagonal Haar details (the
    estimator of scikit-image's estimate_sigma), using only fully observed 2x2 blocks for a mask:
    those of the aligned grid, or, where a sparse mask leaves fewer than 64 of them (80% missing at
    random observes 1 block in 600), every fully observed 2x2 window."""
    if op.kind not in ("mask", "blur"):
        raise ValueError("noise_sigma='auto' needs image-shaped measurements (mask or blur); "
                         f"give a number for {op.kind!r} measurements")
    y = np.asarray(y, np.float64).reshape((-1, *op.shape[-2:]))
    observed = np.ones(y.shape, bool)
    if op.kind == "mask":
        observed = np.broadcast_to(op.observed_full.reshape((-1, *op.shape[-2:])), y.shape)
    h, w = (y.shape[1] // 2) * 2, (y.shape[2] // 2) * 2
    full = observed[:, :h, :w].reshape(y.shape[0], h // 2, 2, w // 2, 2).all(axis=(2, 4))
    values = diagonal_details(y)[full]
    if values.size < 64:  # every 2x2 window, overlapping
        windows = observed[:, :-1, :-1] & observed[:, :-1, 1:] & observed[:, 1:, :-1] & observed[:, 1:, 1:]
        details = (y[:, :-1, :-1] - y[:, :-1, 1:] - y[:, 1:, :-1] + y[:, 1:, 1:]) / 2
        values = details[windows]
    if values.size < 16:
        raise ValueError(f"too few fully observed 2x2 pixel blocks ({values.size}) to estimate the noise; "
                         "give noise_sigma as a number")
    return float(np.median(np.abs(values)) / 0.6745)
