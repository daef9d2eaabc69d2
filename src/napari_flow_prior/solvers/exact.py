"""The exact pieces of method ``mle`` (max log p(x) subject to A x = y): the affine constraint,
the closed form for a linear flow, and a projected L-BFGS that stops on the projected gradient.

``Affine(op, y)`` is the set {x : A x = y} as x = x_p + P v, in float64 whatever the model's dtype:
x_p the least-norm solution A^+ y and P the orthogonal projection onto the null space of A. A mask
fixes the observed pixels (P zeroes them); a ``Matrix`` uses the SVD of A (rank-revealing, so a
tall or rank-deficient A also works); any other operator (block compressed sensing, a user's
``LinearOperator``) solves A A^T u = r by conjugate gradients with its own forward and adjoint, to
1e-13. A blur never gets here: its A is square, so A x = y either fixes the image outright or
leaves a null space (a Gaussian PSF's transfer function falls below float64's precision) that no
projection keeps exactly (``flows.settings.solver_defaults`` refuses it and names map and latent).

``closed_form(G, A, y)``: for the linear flow x = G z, z ~ N(0, I), p(x) = N(0, S) with
S = G G^T and the constrained maximum is S A^T (A S A^T)^-1 y = G (A G)^+ y: the least-norm z with
A G z = y, which is computed from the SVD of A G without forming S, whose condition number is
0.8^(-2n) = 2.6e12 for the 64-pixel prior of benchmarks/linear_theorem.py.

``projected_lbfgs``: L-BFGS on the constraint set (every direction projected onto null(A), the
iterate re-projected after each step, Armijo backtracking), stopping when the projected gradient
||P grad f(x)|| falls to ``gtol`` times its value at the start, when no step lowers the objective
any more (the floating-point floor), or after ``iterations`` steps. ``box_start`` moves a trained
flow's start into [0, 1] on the constraint set first.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .result import Cancelled

F64 = torch.float64
CG_TOL = 1e-13  # relative residual of the conjugate-gradient solves with A A^T
RESIDUAL_TOL = 1e-9  # largest ||A x_p - y|| / ||y|| of an affine space that counts as exact
CANNOT = ("method 'mle' keeps A x = y exactly, and {why}; use method='map' (the prior weighed against a "
          "data term with noise_sigma) or method='latent' instead")


class Affine:
    """{x : A x = y} as ``particular + project(v)`` (float64 tensors of the operator's image shape)."""

    def __init__(self, op, y: torch.Tensor):
        self.op, self.shape = op, tuple(op.shape)
        y = y.to(F64)
        self.y = y
        if op.kind == "mask":
            self.observed = torch.as_tensor(np.array(op.observed_full), device=y.device).reshape(self.shape)
            self.particular = torch.where(self.observed, y.reshape(self.shape), torch.zeros_like(y.reshape(self.shape)))
        elif op.kind == "matrix":
            a = torch.as_tensor(op.matrix, device=y.device, dtype=F64)
            u, s, vh = torch.linalg.svd(a, full_matrices=False)
            rank = int((s > s[0] * max(a.shape) * torch.finfo(F64).eps).sum()) if s.numel() else 0
            self.rows = vh[:rank]  # orthonormal basis of the row space of A
            self.particular = (vh[:rank].T @ ((u[:, :rank].T @ y) / s[:rank])).reshape(self.shape)
        elif op.kind == "blur":
            raise ValueError(CANNOT.format(why="a blur's A is square: an invertible PSF fixes the image without "
                                               "the prior, and a Gaussian one leaves a null space below float64 "
                                               "precision that cannot be kept exactly"))
        else:
            self.particular = op.adjoint(self._gram_solve(y)).reshape(self.shape)
        self.offset = relative_residual(op, self.particular, y)

    def _gram_solve(self, b: torch.Tensor) -> torch.Tensor:
        """u with A A^T u = b by conjugate gradients (float64); ValueError when A A^T is singular
        or too ill-conditioned for an exact projection."""
        op = self.op
        u, r = torch.zeros_like(b), b.clone()
        p, rs = r.clone(), float((r * r).sum())
        target = CG_TOL ** 2 * rs
        for _ in range(max(50, 4 * b.numel())):
            if rs <= target:
                return u
            ap = op.forward(op.adjoint(p))
            curvature = float((p * ap).sum())
            if not curvature > 0:
                break
            alpha = rs / curvature
            u, r = u + alpha * p, r - alpha * ap
            rs, previous = float((r * r).sum()), rs
            p = r + (rs / previous) * p
        if rs <= (RESIDUAL_TOL ** 2) * float((b * b).sum()):
            return u
        raise ValueError(CANNOT.format(why=f"A A^T of this {op.kind!r} operator is singular or too ill-conditioned "
                                           "for an exact projection onto its null space"))

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """P v: the component of ``v`` (image shape, float64) in the null space of A."""
        v = v.reshape(self.shape)
        if self.op.kind == "mask":
            return torch.where(self.observed, torch.zeros_like(v), v)
        if self.op.kind == "matrix":
            flat = v.reshape(-1)
            return (flat - self.rows.T @ (self.rows @ flat)).reshape(self.shape)
        return v - self.op.adjoint(self._gram_solve(self.op.forward(v))).reshape(self.shape)

    def image(self, v: torch.Tensor) -> torch.Tensor:
        """x_p + P v, which satisfies A x = y."""
        return self.particular + self.project(v)


def box_start(affine: Affine, x: torch.Tensor, iterations: int = 300, tol: float = 1e-6) -> torch.Tensor:
    """A start in {A x = y} and (to ``tol``) in [0, 1], the trained flows' support, by alternating
    projections from ``x``: the affine projection of a [0, 1] start can leave it (a digit's
    compressed-sensing start reached -0.15, where the digits prior's log-density is -1e20 per
    pixel), and steps from there stall; the true image lies in both sets, so they meet."""
    z = affine.image(x.to(F64).reshape(affine.shape) - affine.particular)
    for _ in range(iterations):
        if float(z.min()) >= -tol and float(z.max()) <= 1 + tol:
            break
        z = affine.image(z.clamp(0, 1) - affine.particular)
    return z


def relative_residual(op, x: torch.Tensor, y: torch.Tensor) -> float:
    """||A x - y|| / ||y|| in float64 (0 for y = 0 and A x = 0)."""
    x, y = x.to(F64).reshape(tuple(op.shape)), y.to(F64)
    misfit = float(torch.linalg.vector_norm(op.forward(x) - y))
    norm = float(torch.linalg.vector_norm(y))
    return misfit / norm if norm > 0 else misfit


def linear_generator(model, frame) -> torch.Tensor | None:
    """G of a dense linear flow seen in the identity frame (float64), else None (no closed form)."""
    if model.architecture.get("kind") != "linear" or tuple(frame) != (0, False):
        return None
    return model.flow.dense.matrix.to(F64)


def dense_matrix(op, device) -> torch.Tensor:
    """A as an (m, n) float64 matrix: the ``Matrix``'s own, else its columns A e_j (small n only)."""
    if op.kind == "matrix":
        return torch.as_tensor(op.matrix, device=device, dtype=F64)
    eye = torch.eye(op.n, device=device, dtype=F64).reshape(op.n, *op.shape)
    return op.forward(eye).reshape(op.n, -1).T


def closed_form(g: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """S A^T (A S A^T)^-1 y with S = G G^T, as G (A G)^+ y (SVD of A G, float64, rank-revealing)."""
    b = a @ g
    u, s, vh = torch.linalg.svd(b, full_matrices=False)
    rank = int((s > s[0] * max(b.shape) * torch.finfo(F64).eps).sum()) if s.numel() else 0
    z = vh[:rank].T @ ((u[:, :rank].T @ y.to(F64).reshape(-1)) / s[:rank])
    return g @ z


def projected_lbfgs(value_and_grad, affine: Affine, x0: torch.Tensor, *, iterations: int, gtol: float,
                    history: int = 30, cancel=None, info: dict | None = None):
    """Generator: minimise f over {A x = y} from ``affine.image(x0 - x_p)``; yields (iteration, f).

    ``value_and_grad(x)`` -> (f(x) as a float, grad f(x) as a float64 tensor of x's shape). Returns
    the last iterate (float64); ``info`` receives ``stop`` ("gradient", "floor" or "iterations"),
    ``projected_gradient`` (the final ||P grad f|| over the start's) and ``evaluations``."""
    info = {} if info is None else info
    evaluations = 0

    def evaluate(x):
        nonlocal evaluations
        if cancel is not None and cancel():
            raise Cancelled("reconstruction cancelled")
        evaluations += 1
        value, grad = value_and_grad(x)
        return value, affine.project(grad)

    x = affine.image(x0.to(F64) - affine.particular)
    value, g = evaluate(x)
    g0 = float(torch.linalg.vector_norm(g))
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    stop, ratio = "iterations", 0.0 if g0 == 0 else 1.0
    for it in range(1, iterations + 1):
        if g0 == 0 or ratio <= gtol:
            stop = "gradient"
            break
        d = -_two_loop(g, pairs)
        slope = float((d * g).sum())
        if not slope < 0:  # not a descent direction (curvature lost on a non-convex objective)
            pairs.clear()
            d, slope = -g, -float((g * g).sum())
        t = 1.0 if pairs else min(1.0, 0.1 / max(float(d.abs().max()), 1e-300))
        for _ in range(60):  # Armijo backtracking
            trial = affine.image(x + t * d - affine.particular)
            new_value, new_g = evaluate(trial)
            if math.isfinite(new_value) and new_value <= value + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            stop = "floor"
            break
        if not new_value < value:  # no step lowers f: the objective's floating-point floor
            stop = "floor"
            break
        s, yk = trial - x, new_g - g
        sy = float((s * yk).sum())
        if sy > 1e-12 * float(torch.linalg.vector_norm(s)) * float(torch.linalg.vector_norm(yk)):
            pairs.append((s, yk, 1.0 / sy))
            del pairs[:-history]
        x, value, g = trial, new_value, new_g
        ratio = float(torch.linalg.vector_norm(g)) / g0
        yield it, value
    else:
        if ratio <= gtol:
            stop = "gradient"
    info.update(stop=stop, projected_gradient=ratio, evaluations=evaluations)
    return x


def _two_loop(g: torch.Tensor, pairs) -> torch.Tensor:
    """H g for the L-BFGS inverse-Hessian estimate H of the stored (s, y, 1 / s.y) pairs."""
    q, alphas = g.clone(), []
    for s, y, rho in reversed(pairs):
        alpha = rho * float((s * q).sum())
        alphas.append(alpha)
        q = q - alpha * y
    if pairs:
        s, y, rho = pairs[-1]
        q = q * (1.0 / (rho * float((y * y).sum())))
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float((y * q).sum())
        q = q + (alpha - beta) * s
    return q
