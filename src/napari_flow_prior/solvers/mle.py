"""Method ``mle``: maximise log p(x) subject to A x = y, exactly.

``solve`` is what ``reconstruct(..., method="mle")`` runs (``engine.solve_whole`` hands it the
whole-image ``Setup``). The constraint is kept exactly in float64 (``exact.Affine``: for a mask only
the unobserved pixels move; otherwise x = A^+ y + P v with P the projection onto the null space of
A), and the maximum is found

- in closed form, x = S A^T (A S A^T)^-1 y, where the prior is a dense linear flow (p = N(0, G G^T))
  seen in the identity frame: ``optimizer="auto"``, the default;
- otherwise (any flow, or ``optimizer="lbfgs"``) by projected L-BFGS from the start image's
  projection (for a trained flow, moved into [0, 1] on the constraint set: ``exact.box_start``), stopping when the projected gradient falls to ``gtol`` (settings) times its start
  value, when no step lowers -log p any more (the floating-point floor), or after ``iterations``.

The image is float64 when the model is (a float64 linear flow), float32 otherwise. ``noise_sigma``
plays no part (A x = y is a constraint). ``Result.params`` records ``solver`` ("closed form" or
"projected L-BFGS"), ``stop``, ``projected_gradient`` and ``residual`` = ||A x - y|| / ||y||.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import torch

from . import exact
from .frames import to_frame
from .problem import Problem, Setup
from .result import Result, relay

OPTIMIZERS = ("auto", "lbfgs")


def build(s: Setup) -> Problem:
    """The constraint as a ``Problem`` over v (x = x_p + P v) for a generic optimiser; ``solve`` is
    the method's own exact solver."""
    affine = exact.Affine(s.op, s.y)
    v = (s.x0.to(exact.F64).reshape(affine.shape) - affine.particular).clone().requires_grad_(True)

    def image():
        return affine.image(v).reshape(s.image_shape).to(s.x0.dtype)

    def objective():
        return -s.model.log_prob(to_frame(image(), s.frame)).sum() / s.n_pixels

    return Problem([v], objective, lambda: image().detach())


def solve(setup: Setup, plan, frame, *, init, noise_sigma, tol, t0):
    """Generator of ``Progress``: the exact constrained maximum of the whole image; returns the
    ``Result``."""
    model, op, settings = setup.model, setup.op, setup.settings
    optimizer = settings["optimizer"]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"method 'mle' solves with optimizer 'auto' (closed form where the prior is a linear "
                         f"flow, else projected L-BFGS) or 'lbfgs', not {optimizer!r}")
    iterations, gtol = int(settings["iterations"]), float(settings.get("gtol", 1e-10))
    affine = exact.Affine(op, setup.y)
    image_shape = setup.image_shape

    def value_and_grad(x):  # -log p(x) per pixel and its gradient, x float64 in the operator's shape
        leaf = x.detach().reshape(image_shape).to(model.dtype).requires_grad_(True)
        value = -model.log_prob(to_frame(leaf, frame)).sum() / setup.n_pixels
        (grad,) = torch.autograd.grad(value, leaf)
        return float(value.detach()), grad.to(exact.F64).reshape(affine.shape)

    losses: list[float] = []
    info: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(model.memory_saving_mode(plan.memory_saving))
        stack.enter_context(model.cached_constants())
        g = exact.linear_generator(model, frame) if optimizer == "auto" else None
        if g is not None:
            x = exact.closed_form(g, exact.dense_matrix(op, g.device), affine.y).reshape(affine.shape)
            x = affine.particular + affine.project(x - affine.particular)  # A x = y to rounding
            losses.append(value_and_grad(x)[0])
            info.update(solver="closed form", stop="closed form", projected_gradient=0.0, evaluations=1)
            yield from relay(iter([(1, losses[0])]), [], 1)
        else:
            start = setup.x0.reshape(affine.shape)
            if model.architecture.get("kind") != "linear":  # a trained flow: start inside its support
                start = exact.box_start(affine, start)
            steps = exact.projected_lbfgs(value_and_grad, affine, start,
                                          iterations=iterations, gtol=gtol, history=history_size(op.n),
                                          cancel=setup.cancel, info=info)
            x = yield from relay(steps, losses, iterations)
            info["solver"] = "projected L-BFGS"
        out = x.reshape(image_shape).to(model.dtype)
        with torch.no_grad():
            density = model.log_density_map(out)[0, 0]
    dtype = np.float64 if model.dtype == torch.float64 else np.float32
    info["residual"] = exact.relative_residual(op, out, affine.y)
    if affine.offset > exact.RESIDUAL_TOL:
        warnings.warn(f"A x = y has no exact solution here (||A x - y|| / ||y|| = {affine.offset:.2g} at best: y is "
                      "not in the range of A, e.g. noisy measurements with as many rows as unknowns or more), so "
                      "the result maximises p(x) over the least-squares solutions; for noisy data use "
                      "method='map' with noise_sigma", RuntimeWarning, stacklevel=4)
    params = {"method": "mle", **settings, **info, "noise_sigma": noise_sigma, "photons": setup.photons,
              "init": init if isinstance(init, str) else "image", "tol": tol, "seed": setup.seed,
              "operator": op.describe(), "model": model.metadata.get("name"),
              "model_sha256": model.metadata.get("sha256"), "memory_saving": plan.memory_saving, "tile": 0,
              "cuda_graph": False, "frames": [list(frame)]}
    return Result(image=out.reshape(op.shape).detach().cpu().numpy().astype(dtype),
                  log_density=density.cpu().numpy().astype(dtype), losses=losses, n_iter=len(losses),
                  seconds=time.time() - t0, device=str(plan.device), method="mle", params=params,
                  noise_sigma=noise_sigma)


def history_size(n: int) -> int:
    """L-BFGS pairs kept: 100 (an ill-conditioned quadratic needs many: 30 pairs left the 36-pixel
    linear prior 6% from its maximum after 1000 steps, 100 reach 2e-9) within about 128 MB of
    float64 pairs, at least 10."""
    return int(max(10, min(100, 2 ** 27 // (16 * n))))

