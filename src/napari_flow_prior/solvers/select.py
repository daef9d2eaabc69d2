"""Per-image choices by measurement splitting: how much to trust the prior, and for how long.

A prior's default weight and iteration budget were tuned on images like its training data; on an
image from another microscope or scanner they may over-trust it. So, per image: hold out a random
part of the measurements (observed pixels of a mask; blocks of a blurred image, wider than the
PSF, so that neighbours do not give the held-out pixels away), solve on the rest for each prior
weight of a grid reaching down to almost no prior (the classical start), score the held-out
measurements' misfit under the noise model at checkpoints of each run, and keep the (weight,
iterations) with the lowest score where it beats the defaults' own score clearly: by as many
standard errors as a one-sided test at ``SIGNIFICANCE`` needs for the best of that many candidates
(Bonferroni; otherwise the defaults stand: a choice needs evidence). The caller then refits
on all measurements with the choice.
The held-out measurements never enter a fit: the fit's operator (a mask) leaves them out, or its
data term gives them no weight (a blur) and its warm start is made from the kept ones only.
"""

from __future__ import annotations

from statistics import NormalDist

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
SIGNIFICANCE = 0.05  # the chance of leaving the defaults when no candidate is better (over all candidates)
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

    units = _units(held, fit_op)

    def score(image) -> np.ndarray:  # the held-out measurements' misfits under the noise model
        ax = torch.as_tensor(fit_op.forward(np.asarray(image, np.float64).reshape(fit_op.shape))[held])
        return negative_log_likelihood(ax[:, None], y_held[:, None], sigma, photons, batch=True).numpy()

    fit = dict(kwargs, noise_sigma=noise_sigma, photons=photons, seed=seed, ensemble=1, tile=0,
               domain_check=False, select="off")
    if fit_op.kind == "mask":  # the held-out pixels are simply not observed
        fit_op_used = ops.Mask(np.broadcast_to(fit_op.observed_full, fit_op.shape) & ~held, shape=fit_op.shape)
        fit_y_used, keep = np.where(held, 0, fit_y).astype(np.float32), None
    else:  # a blur: no data weight on them, and a warm start from the kept measurements only
        fit_op_used, keep, fit_y_used = fit_op, ~held, np.asarray(fit_y)
    from ..baselines import warm_start

    start, classical = None, []
    if isinstance(kwargs.get("init", "baseline"), str) and kwargs.get("init", "baseline") == "baseline":
        kept_y = _kept_input(fit_y_used, fit_op_used, held)
        start = np.clip(warm_start(kept_y, fit_op_used, effective), 0, 1).astype(np.float32)  # the fits' start
        fit["init"] = start
        if not given.get("iterations"):  # iteration 0 competes: every classical method over its grid
            classical = [({"classical": name, "params": point}, 0, score(image))
                         for name, point, image in _kept_classical(kept_y, fit_op_used, effective)]
    marks = sorted({round(total * f) for f in CHECKPOINTS} - {0})
    rows, misfits = [], []  # misfits: (row, iteration, per-measurement misfits)
    for index, candidate in enumerate(candidates):
        weight = candidate["weight"] if candidate["weight"] is not None else min(
            rows, key=lambda row: min(s for _, s in row["scores"]))["weight"]
        checkpoints: list[tuple[int, np.ndarray]] = [] if start is None else [(0, score(start))]
        gen = solve(fit_y_used, fit_op_used, model, **{**fit, "weight": weight, "iterations": total,
                                                       "adapt": candidate["adapt"]},
                    _keep=keep, _watch=(marks, lambda it, x: checkpoints.append((it, score(x.cpu().numpy())))))
        result = yield from part(gen, index, len(candidates))
        if checkpoints[-1][0] != result.n_iter:
            checkpoints.append((result.n_iter, score(result.image)))
        row = {"weight": float(weight), "adapt": candidate["adapt"],
               "scores": [[it, round(float(v.mean()), 6)] for it, v in checkpoints]}
        rows.append(row)
        misfits += [(row, it, v) for it, v in checkpoints]
    fixed = given.get("iterations") is not None  # the caller's budget: only a run's end competes
    default = next(m for m in misfits if m[0] is rows[0] and m[1] == rows[0]["scores"][-1][0])
    misfits += classical
    best = min((m for m in misfits if not fixed or m[1] == m[0]["scores"][-1][0]), key=lambda m: m[2].mean())
    z = _paired_z(default[2], best[2], units)
    competing = sum(1 for m in misfits if not fixed or m[1] == m[0]["scores"][-1][0]) - 1
    needed = NormalDist().inv_cdf(1 - SIGNIFICANCE / max(competing, 1))  # Bonferroni: the best of many
    if z < needed:  # no clear evidence against the defaults: keep them
        best = default
    best_row, best_it = best[0], best[1]
    chosen_classical = {**best_row, "held_out_score": round(float(best[2].mean()), 6)} if "classical" in best_row \
        else None
    if chosen_classical:
        best_row = {"weight": float(settings["weight"]), "adapt": False}
    overrides = {}
    if given.get("weight") is None:
        overrides["weight"] = best_row["weight"]
    if given.get("iterations") is None:
        overrides["iterations"] = int(best_it)
    if given.get("adapt") is None and best_it > 0:
        overrides["adapt"] = best_row["adapt"]
    report = {"weight": best_row["weight"], "iterations": int(best_it), "adapt": best_row["adapt"] and best_it > 0,
              "held_out_score": round(float(best[2].mean()), 6), "evidence_z": round(z, 2), "needed_z": round(needed, 2),
              "default_weight": float(settings["weight"]), "default_iterations": total,
              "classical": chosen_classical, "classical_tried": len(classical), "held_out": float(held.mean()), "crop": None if crop is None else [crop.r0, crop.r1, crop.c0, crop.c1],
              "grid": rows}
    return overrides, report


def _units(held: np.ndarray, op) -> np.ndarray:
    """An independent unit per held-out measurement: each pixel of a mask, each block of a blur
    (neighbours within a block share their errors)."""
    if op.kind != "blur":
        return np.arange(int(held.sum()))
    side = max(4, int(op.psf.shape[-1]) // 2 + 1)
    index = np.indices(held.shape)
    label = sum(index[d] * int(np.prod(held.shape[d + 1:])) for d in range(held.ndim - 2))  # the plane
    label = (label * 100003 + index[-2] // side) * 100003 + index[-1] // side
    return np.unique(label[held], return_inverse=True)[1]


def _paired_z(default: np.ndarray, other: np.ndarray, units: np.ndarray) -> float:
    """How many standard errors ``other`` lowers the mean held-out misfit below ``default``'s,
    over independent units (the paired difference, summed per unit)."""
    d = np.bincount(units, weights=default - other)
    if len(d) < 2 or not np.any(d):
        return 0.0
    se = d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean() / se) if se > 0 else float("inf") * np.sign(d.mean())


def _kept_input(y: np.ndarray, op, held: np.ndarray) -> np.ndarray:
    """The measurements a classical method may see: a mask's as they are (the held-out pixels are
    unobserved), a blur's with the held-out blocks filled by biharmonic inpainting of the rest."""
    from ..baselines import run_baseline

    if op.kind != "blur":
        return y
    planes = np.asarray(y, np.float64).reshape(-1, *op.shape[-2:])
    missing = held.reshape(-1, *op.shape[-2:])
    return np.stack([run_baseline("biharmonic", np.where(m, 0, p), ops.Mask.from_missing(m), noise_sigma=0.0)
                     for p, m in zip(planes, missing)]).reshape(op.out_shape).astype(np.float32)


def _kept_classical(y: np.ndarray, op, noise_sigma: float):
    """(name, params, image) for every classical method of the operator's kind over its grid
    (``baselines.PARAM_GRIDS``), from the kept measurements ``y`` (``_kept_input``)."""
    from ..baselines import BASELINES, PARAM_GRIDS, _grid_points, run_baseline

    for name in BASELINES[op.kind]:
        for point in _grid_points(PARAM_GRIDS[name]):
            image = run_baseline(name, y, op, params=point, noise_sigma=noise_sigma)
            if np.isfinite(image).all():
                yield name, point, np.clip(image, 0, 1).astype(np.float32)


def classical_image(y, op, report: dict, noise_sigma: float) -> np.ndarray:
    """The selection's classical method, with its parameters, on all the measurements."""
    from ..baselines import run_baseline

    chosen = report["classical"]
    image = run_baseline(chosen["classical"], y, op, params=chosen["params"], noise_sigma=noise_sigma)
    return np.clip(np.asarray(image, np.float32).reshape(op.shape), 0, 1)


def summary(report: dict) -> str:
    """One line for a log: what was chosen against the defaults."""
    if "weight" not in report:
        return f"selection: {report.get('skipped', 'off')}"
    classical = report.get("classical")
    if classical:
        params = ", ".join(f"{k}={v:g}" for k, v in classical["params"].items())
        return (f"selection: the classical {classical['classical']}{f' ({params})' if params else ''}, "
                f"held-out misfit {classical['held_out_score']:.4g}: no prior-weighted solve beat it")
    return (f"selection: prior weight {report['weight']:.3g} (default {report['default_weight']:.3g}), "
            f"{report['iterations']} iterations (default {report['default_iterations']}), "
            f"{'adapted flow, ' if report.get('adapt') else ''}"
            f"held-out misfit {report['held_out_score']:.4g}")


__all__ = ["MODES", "applies", "check_select", "choose", "hold_out", "summary"]
