"""What every method shares: the solve's ``Setup`` (model, operator, data term, start, frame) and
the ``Problem`` a method builds from it (parameters, objective, the image they give).

A method module (``map``, ``latent``, ``mle``, ``posterior``) is one function
``build(setup) -> Problem``; ``engine`` runs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from ..flows import FlowModel, Latent
from ..likelihood import negative_log_likelihood
from .frames import Frame, to_frame

FALLBACK_WHY = ("an image far outside the prior's domain encodes to a huge latent code that float32 "
                "cannot decode back (see Result.params['fallback'])")
ROUND_TRIP_TOL = 1e-3  # largest |G(f(x0)) - x0| (on the [0, 1] scale) of a usable latent start


@dataclass
class Setup:
    """One whole-image solve, ready to build a method's objective from.

    ``y`` is the measurement tensor on the solve's device; ``x0`` the start image (1, C, H, W) in
    [0, 1]; ``shape`` the operator's image shape; ``n_pixels`` what objectives are averaged over (a
    tile uses the whole image's count, so its per-pixel steps match the whole image's); ``sigma``
    the data term's noise sigma (floored for Gaussian noise), ``sigma_data`` the one sigma standing
    for all the noise (Poisson included); ``settings`` the method's settings (a method may record
    in it, e.g. ``fallback``)."""

    model: FlowModel
    op: object
    y: torch.Tensor
    x0: torch.Tensor
    frame: Frame
    n_pixels: float
    sigma: float
    sigma_data: float
    photons: float | None
    settings: dict
    start_at_zero: bool  # init="zero": a latent solve starts from z = 0
    seed: int = 0
    cancel: Callable[[], bool] | None = None
    keep: torch.Tensor | None = None  # only these measurements enter the data term (held-out splits)
    adapted: FlowModel | None = None  # set by a method that adapted a copy of the flow (map, adapt=True)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.op.shape)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x0.shape)

    def data_term(self, x: torch.Tensor, batch: bool = False) -> torch.Tensor:
        """-log p(y | x) less its minimum (||A x - y||^2 / (2 sigma^2) for Gaussian noise); with
        ``batch``, one value per image of the batch x."""
        ax = self.op.forward(x.reshape(-1, *self.shape) if batch else x.reshape(self.shape))
        if self.keep is not None:  # the held-out measurements: A x equal to y there, no misfit
            ax = torch.where(self.keep, ax, self.y)
        return negative_log_likelihood(ax, self.y, self.sigma, self.photons, batch=batch)

    def fall_back(self, what: str) -> None:
        """Record (``settings["fallback"]``) and warn that the solve took a fallback path."""
        self.settings["fallback"] = what
        warnings.warn(f"{what}: {FALLBACK_WHY}", RuntimeWarning, stacklevel=4)

    def latent_start(self) -> Latent:
        """z = f(x0) as parameters, or z = 0 (the flow's mode, x = G(0)) where x0 does not invert
        exactly or the caller asked for it (init="zero")."""
        model, start = self.model, to_frame(self.x0, self.frame)
        code = None if self.start_at_zero else encode_start(model, start)
        if code is None and not self.start_at_zero:
            self.fall_back("the warm start does not invert exactly through the flow; started from z = 0")
        if code is None:
            hw = tuple(start.shape[-2:])
            code = Latent([torch.zeros((1, *s), device=start.device, dtype=start.dtype)
                           for s in model.latent_shapes(*hw)], hw)
        return code.map(lambda p: p.detach().clone().requires_grad_(True))


@dataclass
class Problem:
    """What a method optimises: ``params``, the ``objective()`` over them and the ``image()`` they
    give now (no autograd); ``project()``, if any, restores a constraint after each step. A
    sampling method gives ``sample(total)`` instead: a generator of (iteration, loss) that returns
    (mean, std, info)."""

    params: list[torch.Tensor] = field(default_factory=list)
    objective: Callable[[], torch.Tensor] | None = None
    image: Callable[[], torch.Tensor] | None = None
    project: Callable[[], None] | None = None
    sample: Callable[[int], Iterator] | None = None
    lr_scales: list[float] | None = None  # per parameter, on the step size (adapting flow weights)


def encode_start(model: FlowModel, x0: torch.Tensor) -> Latent | None:
    """The latent code z = f(x0) of a warm start, or None when decoding it does not give x0 back
    (to ``ROUND_TRIP_TOL``): then a latent-space solve would start from a wrong image, far from
    the data, with steps too small to move its huge z (a digit prior's z reached 7e4 on one start)."""
    start = x0.clamp(1e-3, 1 - 1e-3)
    with torch.no_grad():
        code = model.encode(start)
        if not all(torch.isfinite(p).all() for p in code.parts):
            return None
        error = (model.decode(code) - start).abs().max()
    return code if bool(error <= ROUND_TRIP_TOL) else None


def start_image(init, y: np.ndarray, op, sigma: float, device, dtype) -> torch.Tensor:
    """The solve's start in the operator's image shape, clamped to [0, 1]: ``init`` "baseline" (the
    operator's matching classical reconstruction, ``baselines.warm_start``), "pinv" (the
    pseudo-inverse; a mask's holes get the observed mean), "zero" (a flat 0.5 image) or an image."""
    shape = tuple(op.shape)
    if isinstance(init, str):
        if init not in ("baseline", "pinv", "zero"):
            raise ValueError(f"init must be 'baseline', 'pinv', 'zero' or an image, got {init!r}")
        if init == "baseline":
            from ..baselines import warm_start

            x0 = torch.as_tensor(warm_start(y, op, sigma), device=device, dtype=dtype)
        elif init == "pinv":
            y_t = torch.as_tensor(y, device=device, dtype=dtype)
            x0 = op.pseudo_inverse(y_t)
            if op.kind == "mask":
                observed = torch.as_tensor(np.array(op.observed_full), device=device)
                fill = y_t[observed].mean() if observed.any() else 0.5
                x0 = torch.where(observed, y_t, fill)
        else:
            x0 = torch.full(shape, 0.5, device=device, dtype=dtype)
    else:
        x0 = torch.as_tensor(np.asarray(init), device=device, dtype=dtype)
        if tuple(x0.shape) != shape:
            raise ValueError(f"init image has shape {tuple(x0.shape)}, expected {shape}")
        if not torch.isfinite(x0).all():
            raise ValueError("the init image has NaN or infinite pixels")
    return x0.detach().clamp(0, 1)
