"""Per-image choices by measurement splitting: how much to trust the prior, and for how long.

A prior's default weight and iteration budget were tuned on images like its training data; on an
image from another microscope or scanner they may over-trust it. So, per image: hold out a random
part of the measurements (observed pixels of a mask; blocks of a blurred image, wider than the
PSF, so that neighbours do not give the held-out pixels away), solve on the rest for each prior
weight of a grid reaching down to almost no prior (the classical start), score the held-out
measurements' misfit under the noise model at checkpoints of each run, and keep the (weight,
iterations) with the lowest score. The caller then refits on all measurements with the choice.
The held-out measurements never enter a fit: the fit's operator (a mask) leaves them out, or its
data term gives them no weight (a blur) and its warm start is made from the kept ones only.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import operators as ops
from .. import tiling
from ..likelihood import negative_log_likelihood
from .result import part

MODES = ("auto", "off")
HOLD_OUT = 0.15  # the share of the measurements held out
WEIGHT_FACTORS = (1.0, 0.1, 0.01)  # times the model's default weight, in the order they are tried
BUDGET = 2.0  # selection's optimiser steps x pixels, at most this many times the default solve's (so <= 3x in all)
CHECKPOINTS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # held-out scores at these shares of a run's iterations
CROP = 128  # selection solves on a central crop of at most this side (aligned to the flow's grid)
OPERATORS = ("mask", "blur")
METHODS = ("map",)


def check_select(select) -> bool:
    """Whether selection is on: "auto" (or True) on, "off" (or False, None) off; ValueError else."""
    if select in (True, "auto"):
        return True
    if select in (False, None, "off"):
        return False
    raise ValueError(f"select must be 'auto' or 'off', got {select!r}")


def applies(method: str, kind: str, given: dict) -> str | None:
    """None where selection can run for this solve, else why not (recorded in the result)."""
    if method not in METHODS:
        return f"method {method!r} keeps its settings (selection is for {', '.join(METHODS)})"
    if kind not in OPERATORS:
        return f"{kind!r} measurements keep their settings (selection splits {' and '.join(OPERATORS)} data)"
    if given.get("weight") is not None and given.get("iterations") is not None:
        return "weight and iterations given by the caller"
    return None


def hold_out(y: np.ndarray, op, seed: int, fraction: float = HOLD_OUT) -> np.ndarray:
    """Boolean array of ``op.out_shape``, True for the measurements held out: a random share of a
    mask's observed pixels, or of a blurred image's blocks (side: the PSF's support)."""
    rng = np.random.default_rng([seed, 7919])
    if op.kind == "mask":
        observed = np.broadcast_to(op.observed_full, op.shape)
        return observed & (rng.random(op.shape) < fraction)
    if op.kind == "blur":
        side = max(4, int(op.psf.shape[-1]) // 2 + 1)
        h, w = op.shape[-2:]
        blocks = rng.random((-(-h // side), -(-w // side))) < fraction
        held = np.kron(blocks, np.ones((side, side), bool))[:h, :w]
        return np.broadcast_to(held, op.out_shape).copy()
    raise ValueError(f"cannot hold out {op.kind!r} measurements")


def crop_for(op, model) -> tiling.Tile | None:
    """The central crop the selection solves on (None: the whole image), aligned to the flow's grid."""
    h, w = op.shape[-2:]
    align = tiling.alignment(op, model)
    side = max(align, CROP // align * align)
    if h <= side and w <= side:
        return None
    sh, sw = min(h, side), min(w, side)
    r0, c0 = (h - sh) // 2 // align * align, (w - sw) // 2 // align * align
    return tiling.Tile(r0, r0 + sh, c0, c0 + sw)


def plan(op, model, settings: dict, given: dict) -> tuple[tiling.Tile | None, list[dict]]:
    """The crop the fits solve on and the candidates they try, each {"weight", "adapt"}: as many
    prior weights of the grid as the budget allows (the default solve runs ``ensemble`` members on
    the whole image), then, budget left, an adapted flow at the best weight (weight None)."""
    crop = crop_for(op, model)
    share = 1.0 if crop is None else (crop.r1 - crop.r0) * (crop.c1 - crop.c0) / float(np.prod(op.shape[-2:]))
    fits = max(1, int(BUDGET * int(settings.get("ensemble", 1)) / share + 1e-9))
    adapt = bool(settings.get("adapt"))
    factors = (1.0,) if given.get("weight") is not None else WEIGHT_FACTORS[:fits]
    candidates = [{"weight": settings["weight"] * f, "adapt": adapt} for f in factors]
    if given.get("adapt") is None and not adapt and fits > len(candidates):
        candidates.append({"weight": None, "adapt": True})
    return crop, candidates


def planned_steps(op, model, settings: dict, given: dict) -> int:
    """The optimiser steps the selection's fits take at most (for one progress scale)."""
    return len(plan(op, model, settings, given)[1]) * int(settings["iterations"])


def choose(solve, y, op, model, settings: dict, given: dict, noise_sigma: float, photons, seed: int,
           effective: float, **kwargs):
    """Generator: run the held-out fits and return (overrides, report). ``overrides`` holds the
    chosen ``weight``, ``iterations`` and ``adapt`` (only those the caller left to the defaults; 0 iterations:
    the classical start scored best); ``report`` the grid's held-out scores. ``solve`` is
    ``engine.reconstruct_steps``; ``effective`` the one sigma standing for the noise (warm start)."""
    crop, candidates = plan(op, model, settings, given)
    fit_op, fit_y = (op, y) if crop is None else tiling.restrict(op, y, crop)
    held = hold_out(fit_y, fit_op, seed)
    if not held.any() or held.all():
        return {}, {"skipped": "too few measurements to hold any out"}
    total = int(settings["iterations"])
    sigma = noise_sigma if photons is not None else max(noise_sigma, 1e-3)
    y_held = torch.as_tensor(np.asarray(fit_y)[held], dtype=torch.float64)

    def score(image) -> float:  # the held-out measurements' mean misfit under the noise model
        ax = fit_op.forward(np.asarray(image, np.float64).reshape(fit_op.shape))
        return float(negative_log_likelihood(torch.as_tensor(ax[held]), y_held, sigma, photons)) / int(held.sum())

    fit = dict(kwargs, noise_sigma=noise_sigma, photons=photons, seed=seed, ensemble=1, tile=0,
               domain_check=False, select="off")
    if fit_op.kind == "mask":  # the held-out pixels are simply not observed
        fit_op_used = ops.Mask(np.broadcast_to(fit_op.observed_full, fit_op.shape) & ~held, shape=fit_op.shape)
        fit_y_used, keep = np.where(held, 0, fit_y).astype(np.float32), None
    else:  # a blur: no data weight on them, and a warm start from the kept measurements only
        fit_op_used, keep, fit_y_used = fit_op, ~held, np.asarray(fit_y)
    start = None
    if isinstance(kwargs.get("init", "baseline"), str) and kwargs.get("init", "baseline") == "baseline":
        start = _kept_warm_start(fit_y_used, fit_op_used, held, effective)  # iteration 0: the classical start
        fit["init"] = start
    marks = sorted({round(total * f) for f in CHECKPOINTS} - {0})
    rows = []
    for index, candidate in enumerate(candidates):
        weight = candidate["weight"] if candidate["weight"] is not None else min(
            rows, key=lambda row: min(s for _, s in row["scores"]))["weight"]
        checkpoints: list[tuple[int, float]] = [] if start is None else [(0, score(start))]
        gen = solve(fit_y_used, fit_op_used, model, **{**fit, "weight": weight, "iterations": total,
                                                       "adapt": candidate["adapt"]},
                    _keep=keep, _watch=(marks, lambda it, x: checkpoints.append((it, score(x.cpu().numpy())))))
        result = yield from part(gen, index, len(candidates))
        if checkpoints[-1][0] != result.n_iter:
            checkpoints.append((result.n_iter, score(result.image)))
        rows.append({"weight": float(weight), "adapt": candidate["adapt"],
                     "scores": [[it, round(s, 6)] for it, s in checkpoints]})
    fixed = given.get("iterations") is not None  # the caller's budget: only a run's end competes
    best_row, best_it, best_score = min(((row, it, s) for row in rows for it, s in row["scores"][-1 if fixed else 0:]),
                                        key=lambda t: t[2])
    best = (best_row["weight"], best_it, best_score)
    overrides = {}
    if given.get("weight") is None:
        overrides["weight"] = best[0]
    if given.get("iterations") is None:
        overrides["iterations"] = int(best[1])
    if given.get("adapt") is None and best_it > 0:
        overrides["adapt"] = best_row["adapt"]
    report = {"weight": best[0], "iterations": int(best[1]), "adapt": best_row["adapt"] and best_it > 0,
              "held_out_score": best[2],
              "default_weight": float(settings["weight"]), "default_iterations": total,
              "held_out": float(held.mean()), "crop": None if crop is None else [crop.r0, crop.r1, crop.c0, crop.c1],
              "grid": rows}
    return overrides, report


def _kept_warm_start(y: np.ndarray, op, held: np.ndarray, noise_sigma: float) -> np.ndarray:
    """The classical start from the kept measurements only: a mask's warm start without the held-out
    pixels; for a blur, the held-out blocks of the blurred image filled by biharmonic inpainting,
    then the operator's matching deconvolution."""
    from ..baselines import run_baseline, warm_start

    if op.kind == "mask":
        return np.clip(warm_start(y, op, noise_sigma), 0, 1).astype(np.float32)
    planes = np.asarray(y, np.float64).reshape(-1, *op.shape[-2:])
    missing = held.reshape(-1, *op.shape[-2:])
    filled = np.stack([run_baseline("biharmonic", np.where(m, 0, p), ops.Mask.from_missing(m), noise_sigma=0.0)
                       for p, m in zip(planes, missing)]).reshape(op.out_shape)
    start = warm_start(filled.astype(np.float32), op, noise_sigma)
    return np.clip(start, 0, 1).astype(np.float32)


def summary(report: dict) -> str:
    """One line for a log: what was chosen against the defaults."""
    if "weight" not in report:
        return f"selection: {report.get('skipped', 'off')}"
    return (f"selection: prior weight {report['weight']:.3g} (default {report['default_weight']:.3g}), "
            f"{report['iterations']} iterations (default {report['default_iterations']}), "
            f"{'adapted flow, ' if report.get('adapt') else ''}"
            f"held-out misfit {report['held_out_score']:.4g}")


__all__ = ["MODES", "applies", "check_select", "choose", "hold_out", "summary"]
