"""Method ``posterior``: the mean of p(x | y), sampled by annealed Langevin dynamics over the
latent code, ``chains`` chains in one batch (``langevin``); ``Result.std`` is the samples'
per-pixel standard deviation, where the data leave the image open."""

from __future__ import annotations

import torch

from .frames import from_frame
from .langevin import langevin
from .problem import Problem, Setup
from .result import Cancelled


def build(s: Setup) -> Problem:
    n_chains = int(s.settings["chains"])
    code = s.latent_start().map(lambda p: p.detach().repeat(n_chains, *([1] * (p.dim() - 1))))
    noise = torch.Generator().manual_seed(s.seed)

    def samples(c):
        return from_frame(s.model.decode(c), s.frame)

    def misfit(x):  # ||A x - y||^2 / 2 per chain for Gaussian noise (sigma^2 times the data term)
        return s.sigma_data ** 2 * s.data_term(x, batch=True)

    def sample(total: int):
        return langevin(code, samples, misfit, sigma=s.sigma_data, iterations=total,
                        step=float(s.settings["lr"]), temperature=float(s.settings["temperature"]),
                        generator=noise, cancel=s.cancel, cancelled=Cancelled, n_pixels=s.n_pixels)

    return Problem(sample=sample)
