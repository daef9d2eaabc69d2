"""Posterior sampling: the mean and spread of p(x | y) under a flow prior.

With x = G(z) and z ~ N(0, I), the posterior of the latent code given measurements
y = A x + noise is

    p(z | y)  ~  exp(-U(z)),   U(z) = ||A G(z) - y||^2 / (2 sigma^2) + ||z||^2 / (2 T^2),

with no log-det: the flow carries the prior's change of volume (T = 1 is the exact posterior; T < 1
sharpens the prior, as a lower sampling temperature does). Unadjusted Langevin steps

    z <- z - eta grad U(z) + sqrt(2 eta) xi,   xi ~ N(0, I),

sample it, several chains as one batch. A stiff data term from the first step traps a chain where
it starts, so sigma is annealed from ``sigma_start`` down to the noise's sigma over the first
``anneal`` part of the run, with the step eta = ``step`` * sigma_t^2 following it; the decoded
samples of the last ``keep`` part of every chain are averaged. Their mean estimates the posterior
mean (the minimum-mean-square-error estimate: where the data leave much open, e.g. inpainting with
80% missing, it errs less than any single most-likely image), and their per-pixel standard
deviation shows where the data leave the image open.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from .flows import Latent


class _Moments:
    """Running per-pixel mean and standard deviation of batches of samples (sums in float64)."""

    def __init__(self):
        self.n, self.sum, self.sum_sq = 0, 0.0, 0.0

    def add(self, batch: torch.Tensor) -> None:
        batch = batch.detach().double()
        self.n += batch.shape[0]
        self.sum = self.sum + batch.sum(0)
        self.sum_sq = self.sum_sq + batch.pow(2).sum(0)

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def std(self) -> torch.Tensor:
        return ((self.sum_sq - self.sum ** 2 / self.n) / max(self.n - 1, 1)).clamp_min(0).sqrt()


def langevin(
    code: Latent,
    image: Callable[[Latent], torch.Tensor],
    misfit: Callable[[torch.Tensor], torch.Tensor],
    *,
    sigma: float,
    iterations: int,
    step: float = 0.5,
    temperature: float = 1.0,
    sigma_start: float = 0.3,
    anneal: float = 0.6,
    keep: float = 0.3,
    support: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    cancel: Callable[[], bool] | None = None,
    cancelled: type[Exception] = RuntimeError,
    n_pixels: float = 1.0,
) -> Iterator[tuple[int, float]]:
    """Generator: annealed Langevin dynamics over the chains of ``code`` (its batch axis); yields
    (iteration, mean energy per chain / ``n_pixels``) and returns the per-pixel (mean, std) of the
    decoded samples ``image(code)`` (shape (chains, ...)) over every chain and kept iteration,
    each sample clipped to ``support`` (the prior's: images are in [0, 1]; None: not clipped).

    ``misfit(x)`` is ||A x - y||^2 / 2 summed over all chains; ``code``'s parts must be leaf
    tensors that require gradients. A non-finite energy or latent steps back to the last good
    state and halves the step. ``cancel()`` returning True raises ``cancelled``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    sigma_start = max(sigma_start, sigma)
    anneal_steps = max(1, round(anneal * iterations))
    first_kept = min(iterations - 1, int(round((1 - keep) * iterations)))
    good = [p.detach().clone() for p in code.parts]
    moments = _Moments()
    previous = math.inf
    for it in range(iterations):
        if cancel is not None and cancel():
            raise cancelled("reconstruction cancelled")
        # sigma_t falls geometrically from sigma_start to sigma, then stays
        sigma_t = sigma_start * (sigma / sigma_start) ** min(1.0, it / anneal_steps)
        eta = step * sigma_t ** 2
        x = image(code)
        energy = misfit(x) / sigma_t ** 2 + code.squared_norm().sum() / (2 * temperature ** 2)
        value = float(energy.detach()) / (n_pixels * x.shape[0])
        if math.isfinite(value):
            grads = torch.autograd.grad(energy, code.parts)
            with torch.no_grad():
                for p, g in zip(code.parts, grads):
                    noise = torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device)
                    p.add_(g, alpha=-eta).add_(noise, alpha=math.sqrt(2 * eta))
        if not math.isfinite(value) or not all(torch.isfinite(p).all() for p in code.parts):
            with torch.no_grad():
                for p, g in zip(code.parts, good):
                    p.copy_(g)
            step /= 2
            yield it + 1, previous
            continue
        for p, g in zip(code.parts, good):
            g.copy_(p.detach())
        if it >= first_kept:
            moments.add(_clip(x, support))
        previous = value
        yield it + 1, value
    if moments.n == 0:  # every kept step failed: the last good state is the estimate
        with torch.no_grad():
            moments.add(_clip(image(code), support))
    return moments.mean(), moments.std()


def _clip(x: torch.Tensor, support: tuple[float, float] | None) -> torch.Tensor:
    return x if support is None else x.clamp(*support)
