"""Posterior sampling: the mean and spread of p(x | y) under a flow prior.

With x = G(z) and z ~ N(0, I), the posterior of the latent code given measurements
y = A x + noise is

    p(z | y)  ~  exp(-U(z)),   U(z) = ||A G(z) - y||^2 / (2 sigma^2) + ||z||^2 / (2 T^2),

with no log-det: the flow carries the prior's change of volume (T = 1 is the exact posterior; T < 1
sharpens the prior, as a lower sampling temperature does). Langevin steps

    z <- z - eta grad U(z) + sqrt(2 eta) xi,   xi ~ N(0, I),

sample it, several chains as one batch, each step accepted or rejected by the Metropolis-Hastings
rule (MALA). A stiff data term from the first step traps a chain where it starts, so sigma is annealed from ``sigma_start`` down to the noise's sigma over the first
``anneal`` part of the run, with the step eta = h * sigma_t^2 following it, and meanwhile each
chain's factor h adapts to the flow's local gain (from ``step``, towards the acceptance rate
optimal for MALA); the decoded
samples of the last ``keep`` part of every chain are averaged. Their mean estimates the posterior
mean (the minimum-mean-square-error estimate: where the data leave much open, e.g. inpainting with
80% missing, it errs less than any single most-likely image), and their per-pixel standard
deviation shows where the data leave the image open.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from ..flows import Latent


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
    sigma_start: float = 1.0,
    anneal: float = 0.6,
    keep: float = 0.3,
    acceptance: float = 0.574,
    support: tuple[float, float] | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
    cancel: Callable[[], bool] | None = None,
    cancelled: type[Exception] = RuntimeError,
    n_pixels: float = 1.0,
) -> Iterator[tuple[int, float]]:
    """Generator: annealed, Metropolis-adjusted Langevin sampling from the chains of ``code`` (its
    batch axis); yields (iteration, mean energy per chain / ``n_pixels``) and returns the
    per-pixel mean and standard deviation of the decoded samples ``image(code)`` (shape
    (chains, ...)) over every chain and kept iteration, each sample clipped to ``support`` (the
    prior's: images are in [0, 1]; None: not clipped), and a dict of diagnostics.

    ``misfit(x)`` is ||A x - y||^2 / 2 per chain, shape (chains,). Every proposal
    z' = z - eta grad U(z) + sqrt(2 eta) xi is accepted or rejected by the Metropolis-Hastings
    rule (MALA), so a step too long for the flow's local gain, or one that overflows, is rejected
    instead of throwing a chain away; while sigma is annealed each chain's step factor adapts
    towards the acceptance rate ``acceptance`` (0.574, optimal for MALA), starting from ``step``;
    then it is fixed, so the kept samples come from one Markov chain whose stationary law is the
    posterior. ``cancel()`` returning True raises ``cancelled``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    sigma_start = max(sigma_start, sigma)
    anneal_steps = max(1, round(anneal * iterations))
    first_kept = min(iterations - 1, int(round((1 - keep) * iterations)))
    inv_t2 = 1.0 / temperature ** 2

    def evaluate(parts):
        """Decoded images, per-chain misfit and ||z||^2, and the misfit's gradient (None if not finite)."""
        leaves = [p.detach().requires_grad_(True) for p in parts]
        with torch.enable_grad():
            x = image(Latent(leaves, code.image_size))
            m = misfit(x)
            total = m.sum()
            grads = list(torch.autograd.grad(total, leaves)) if torch.isfinite(total) else None
        squared = sum(p.detach().pow(2).flatten(1).sum(1) for p in leaves)
        return [p.detach() for p in leaves], x.detach(), m.detach(), squared, grads

    def energy(m, squared, s2):
        return m / s2 + 0.5 * inv_t2 * squared

    def drift(z, grads, s2):  # grad U = grad misfit / sigma_t^2 + z / T^2
        return [g / s2 + inv_t2 * p for p, g in zip(z, grads)]

    def per_chain(t):
        return t.flatten(1).sum(1)

    z, x, m, squared, grads = evaluate(code.parts)
    if grads is None or not torch.isfinite(m).all():
        raise ValueError("the posterior sampler's start gives a non-finite misfit")
    chains = z[0].shape[0]
    shape = lambda t: t.view(-1, *([1] * (z[0].dim() - 1)))  # noqa: E731  (per-chain scalars on the parts)
    h = torch.full((chains,), float(step), dtype=torch.float64)
    moments = _Moments()
    accepted_kept, proposals_kept = 0, 0
    for it in range(iterations):
        if cancel is not None and cancel():
            raise cancelled("reconstruction cancelled")
        # sigma_t falls geometrically from sigma_start to sigma, then stays
        sigma_t = sigma_start * (sigma / sigma_start) ** min(1.0, it / anneal_steps)
        s2 = sigma_t ** 2
        eta = (h * s2).to(z[0].dtype)
        d = drift(z, grads, s2)
        noise = [torch.randn(p.shape, generator=generator, dtype=p.dtype, device="cpu").to(p.device) for p in z]
        proposal = [p - shape(eta) * g + shape((2 * eta).sqrt()) * n for p, g, n in zip(z, d, noise)]
        z_new, x_new, m_new, sq_new, grads_new = evaluate(proposal)
        if grads_new is None:  # an overflow somewhere: reject the chains that overflowed
            finite = torch.isfinite(m_new)
            grads_new = [torch.zeros_like(p) for p in z_new]
        else:
            finite = torch.isfinite(m_new) & torch.stack([torch.isfinite(per_chain(g)) for g in grads_new]).all(0)
        finite &= torch.stack([torch.isfinite(per_chain(p)) for p in z_new]).all(0)
        d_new = drift(z_new, grads_new, s2)
        u_old, u_new = energy(m, squared, s2), energy(m_new, sq_new, s2)
        # log q(z | z') - log q(z' | z) for the Gaussian Langevin proposals
        back = sum(per_chain((p - q + shape(eta) * g).pow(2)) for p, q, g in zip(z, z_new, d_new))
        forth = sum(per_chain((q - p + shape(eta) * g).pow(2)) for p, q, g in zip(z, z_new, d))
        log_alpha = (u_old - u_new) - (back - forth) / (4 * eta)
        log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -math.inf))
        uniform = torch.rand(chains, generator=generator, dtype=torch.float64).to(log_alpha.device)
        accept = uniform.log() < log_alpha.double().clamp(max=0)
        keep_new = lambda new, old: torch.where(shape(accept), new, old)  # noqa: E731
        z = [keep_new(a, b) for a, b in zip(z_new, z)]
        grads = [keep_new(a, b) for a, b in zip(grads_new, grads)]
        x = keep_new(x_new, x)
        m, squared = torch.where(accept, m_new, m), torch.where(accept, sq_new, squared)
        if it < anneal_steps:  # adapt each chain's step towards the target acceptance rate
            rate = log_alpha.double().clamp(max=0).exp().nan_to_num(0.0).cpu()
            h = h * torch.exp(0.5 * (rate - acceptance))
        elif it >= first_kept:
            accepted_kept += int(accept.sum())
            proposals_kept += chains
        if it >= first_kept:
            moments.add(_clip(x, support))
        yield it + 1, float(energy(m, squared, s2).mean()) / n_pixels
    info = {"acceptance": round(accepted_kept / proposals_kept, 3) if proposals_kept else None,
            "step": [round(float(v), 5) for v in h]}
    return moments.mean(), moments.std(), info


def _clip(x: torch.Tensor, support: tuple[float, float] | None) -> torch.Tensor:
    return x if support is None else x.clamp(*support)
