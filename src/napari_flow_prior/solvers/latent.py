"""Method ``latent``: minimise ||A G(z) - y||^2 + weight * ||z||^2 over the latent code z (Asim et
al.), from z = f(warm start), or z = 0 with ``init="zero"``."""

from __future__ import annotations

from .frames import from_frame
from .problem import Problem, Setup


def build(s: Setup) -> Problem:
    lam = float(s.settings["weight"])
    latent = s.latent_start()

    def image():
        return from_frame(s.model.decode(latent), s.frame)

    def objective():
        # ||A G(z) - y||^2 for Gaussian noise (2 sigma^2 times the data term)
        return (2 * s.sigma_data ** 2 * s.data_term(image()) + lam * latent.squared_norm().sum()) / s.n_pixels

    return Problem(latent.parts, objective, lambda: image().detach())
