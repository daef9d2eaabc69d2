"""Classical reconstruction baselines, one fixed set per operator kind.

Every baseline is ``fn(y, op, **params) -> x`` with numpy in and a float32 image of shape
``op.shape`` out. Images are assumed to lie in [0, 1]: outputs are clipped to [0, 1] and never
contain NaN. Mask and Blur baselines run channel by channel; compressed-sensing baselines work on
the whole vectorised image (the operator mixes pixels, not channels, but that is its business).

=========  ==========================================================
kind       baselines (``BASELINES[kind]``)
=========  ==========================================================
mask       ``biharmonic``, ``tv_inpaint``
blur       ``wiener``, ``richardson_lucy``, ``tv_deblur``
cs/matrix  ``lasso_dct``, ``lasso_wavelet``, ``tv_cs``, ``pseudo_inverse``
=========  ==========================================================

Parameters: ``run_baseline(name, y, op, noise_sigma=...)`` uses the tuned values of
``data/baseline_params.json`` (keyed ``"{name}/{kind}/{noise_sigma}"``, written by :func:`tune`
runs on validation images via :func:`save_tuned_params`) when present, else ``DEFAULT_PARAMS``.
:func:`oracle` tunes on the ground truth of one image and is for separate reporting only.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from scipy import fft as sfft

from . import operators as ops
from .metrics import psnr

__all__ = [
    "BASELINES",
    "DEFAULT_PARAMS",
    "PARAM_GRIDS",
    "PARAMS_FILE",
    "run_baseline",
    "tune",
    "oracle",
    "matching_baseline",
    "warm_start",
    "warm_start_name",
    "fallback",
    "params_key",
    "load_tuned_params",
    "save_tuned_params",
    "biharmonic",
    "pull_push",
    "tv_inpaint",
    "wiener",
    "richardson_lucy",
    "tv_deblur",
    "lasso_dct",
    "lasso_wavelet",
    "tv_cs",
    "pseudo_inverse",
    "haar_forward",
    "haar_inverse",
]

PARAMS_FILE = Path(__file__).parent / "data" / "baseline_params.json"


# ------------------------------------------------------------------------------------- helpers
def _finish(x, op) -> np.ndarray:
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(x, 0.0, 1.0).reshape(op.shape).astype(np.float32)


def _need(op, cls, name):
    if not isinstance(op, cls):
        raise ValueError(f"{name} needs a {cls.__name__} operator, got {type(op).__name__}")


def _channels(a: np.ndarray) -> np.ndarray:
    """View an (H, W) or (C, H, W) array as (C, H, W)."""
    return a[None] if a.ndim == 2 else a


def _grad(x):
    """Forward differences on the last two axes (Neumann boundary): (2, *x.shape)."""
    g = np.zeros((2, *x.shape))
    g[0, ..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    g[1, ..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    return g


def _grad_t(p):
    """Adjoint of :func:`_grad` (minus the divergence)."""
    out = np.zeros(p.shape[1:])
    out[..., :-1, :] -= p[0, ..., :-1, :]
    out[..., 1:, :] += p[0, ..., :-1, :]
    out[..., :, :-1] -= p[1, ..., :, :-1]
    out[..., :, 1:] += p[1, ..., :, :-1]
    return out


def _tv_solve(y, op, weight: float, n_iter: int, x0=None) -> np.ndarray:
    """min_x 0.5 ||A x - y||^2 + weight * TV(x) s.t. 0 <= x <= 1, by Condat-Vu primal-dual.

    TV is isotropic per channel (forward differences). Steps satisfy
    1/tau - sigma ||grad||^2 >= ||A||^2 / 2 with ||grad||^2 <= 8; the dual step scales with
    ``weight`` (the dual variable lives in a ball of that radius), which converges much faster
    than a fixed ratio. Small weights (< 0.003) converge slowly in the null space of A.
    """
    y = np.asarray(y, dtype=np.float64)
    lip = max(op.norm() ** 2 * 1.02, 1e-12)
    sigma = 2.0 * max(float(weight), 1e-4) * math.sqrt(lip)
    tau = 0.99 / (lip / 2.0 + 8.0 * sigma)
    x = np.clip(op.pseudo_inverse(y) if x0 is None else np.asarray(x0, np.float64), 0, 1)
    x = x.reshape(op.shape).astype(np.float64)
    p = np.zeros((2, *x.shape))
    for _ in range(int(n_iter)):
        grad_f = op.adjoint(op.forward(x) - y)
        x_new = np.clip(x - tau * (grad_f + _grad_t(p)), 0.0, 1.0)
        p = p + sigma * _grad(2.0 * x_new - x)
        scale = np.maximum(1.0, np.sqrt((p ** 2).sum(axis=0)) / max(weight, 1e-12))
        p = p / scale
        x = x_new
    return x


def _fista_l1(y, op, analysis: Callable, synthesis: Callable, lam: float, n_iter: int,
              penalised: np.ndarray) -> np.ndarray:
    """min_z 0.5 ||A S z - y||^2 + lam ||w * z||_1 with an orthonormal synthesis S = analysis^-1,
    by FISTA with step 1/||A||^2; ``penalised`` (0/1 weights w) spares the coarse coefficients."""
    y = np.asarray(y, dtype=np.float64)
    step = 1.0 / max(op.norm() ** 2 * 1.02, 1e-12)
    x0 = np.asarray(op.pseudo_inverse(y), dtype=np.float64)
    z = analysis(x0)
    v, t = z.copy(), 1.0
    thresh = step * lam * penalised
    for _ in range(int(n_iter)):
        x = synthesis(v)
        g = analysis(op.adjoint(op.forward(x) - y))
        u = v - step * g
        z_new = np.sign(u) * np.maximum(np.abs(u) - thresh, 0.0)
        t_new = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = z_new + ((t - 1.0) / t_new) * (z_new - z)
        z, t = z_new, t_new
    return synthesis(z)


# ------------------------------------------------------------------------------------- Haar
def _haar_levels(h: int, w: int, levels: int | None) -> int:
    max_levels = max(0, int(math.floor(math.log2(max(1, min(h, w))))))
    return max_levels if levels is None else min(int(levels), max_levels)


def _haar_1d(a, axis):
    n = a.shape[axis]
    even = np.take(a, np.arange(0, n - 1, 2), axis=axis)
    odd = np.take(a, np.arange(1, n, 2), axis=axis)
    approx = (even + odd) / math.sqrt(2.0)
    detail = (even - odd) / math.sqrt(2.0)
    if n % 2:  # the unpaired last sample is kept as an approximation coefficient
        approx = np.concatenate([approx, np.take(a, [n - 1], axis=axis)], axis=axis)
    return np.concatenate([approx, detail], axis=axis)


def _ihaar_1d(c, axis):
    n = c.shape[axis]
    n_a = (n + 1) // 2
    approx = np.take(c, np.arange(n_a), axis=axis)
    detail = np.take(c, np.arange(n_a, n), axis=axis)
    pairs = np.take(approx, np.arange(n // 2), axis=axis)
    even, odd = (pairs + detail) / math.sqrt(2.0), (pairs - detail) / math.sqrt(2.0)
    out = np.stack([even, odd], axis=axis + 1 if axis >= 0 else axis)
    shape = list(even.shape)
    shape[axis] = 2 * even.shape[axis]
    out = out.reshape(shape)
    if n % 2:
        out = np.concatenate([out, np.take(approx, [n_a - 1], axis=axis)], axis=axis)
    return out


def haar_forward(x, levels: int | None = None) -> np.ndarray:
    """Orthonormal multi-level 2-D Haar (db1) transform over the last two axes, in place layout
    (coarse approximation in the top-left corner). Odd sizes keep their last row/column as an
    approximation coefficient, so the transform stays orthonormal for any size."""
    c = np.array(x, dtype=np.float64)
    h, w = c.shape[-2:]
    for _ in range(_haar_levels(h, w, levels)):
        if h < 2 or w < 2:
            break
        block = c[..., :h, :w]
        c[..., :h, :w] = _haar_1d(_haar_1d(block, -2), -1)
        h, w = (h + 1) // 2, (w + 1) // 2
    return c


def haar_inverse(c, levels: int | None = None) -> np.ndarray:
    """Inverse (= adjoint) of :func:`haar_forward`."""
    x = np.array(c, dtype=np.float64)
    h, w = x.shape[-2:]
    sizes = []
    for _ in range(_haar_levels(h, w, levels)):
        if h < 2 or w < 2:
            break
        sizes.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    for h, w in reversed(sizes):
        x[..., :h, :w] = _ihaar_1d(_ihaar_1d(x[..., :h, :w], -1), -2)
    return x


def _haar_coarse_size(h, w, levels):
    for _ in range(_haar_levels(h, w, levels)):
        if h < 2 or w < 2:
            break
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


# ------------------------------------------------------------------------------------- baselines
def biharmonic(y, op: ops.Mask) -> np.ndarray:
    """Biharmonic inpainting of the missing pixels (skimage.restoration.inpaint_biharmonic)."""
    from skimage.restoration import inpaint_biharmonic

    _need(op, ops.Mask, "biharmonic")
    y = _channels(np.asarray(y, dtype=np.float64).reshape(op.shape))
    missing = _channels(~op.observed_full)
    out = np.empty_like(y)
    for c in range(y.shape[0]):
        out[c] = inpaint_biharmonic(y[c], missing[c]) if missing[c].any() else y[c]
    return _finish(out, op)


def pull_push(y, op: ops.Mask) -> np.ndarray:
    """Fast fill of the missing pixels by pull-push (multi-scale normalised averaging): each 2x2
    coarser level averages the known values below it; filling back down, a missing pixel takes
    its coarser level's value. O(pixels): a warm start for large images, where biharmonic's
    sparse solve takes about a minute at 1024x1024."""
    _need(op, ops.Mask, "pull_push")
    y = _channels(np.asarray(y, dtype=np.float64).reshape(op.shape))
    known = _channels(op.observed_full).astype(np.float64)
    out = np.empty_like(y)
    for c in range(y.shape[0]):
        out[c] = _pull_push(y[c] * known[c], known[c])
    return _finish(np.where(_channels(op.observed_full), y, out), op)


def _pull_push(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    h, w = values.shape
    if h <= 1 and w <= 1 or weights.sum() == 0:
        total = weights.sum()
        return np.full_like(values, values.sum() / total if total else 0.5)
    ph, pw = h + h % 2, w + w % 2  # pad odd sizes with zero weight
    v = np.zeros((ph, pw))
    k = np.zeros((ph, pw))
    v[:h, :w], k[:h, :w] = values, weights
    coarse_v = v.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    coarse_k = k.reshape(ph // 2, 2, pw // 2, 2).sum(axis=(1, 3))
    coarse = _pull_push(coarse_v, coarse_k)
    up = _binomial(np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1))[:h, :w]  # smooth, not blocky
    alpha = np.minimum(weights, 1.0)  # blend: known pixels keep their own average
    mean = np.divide(values, weights, out=np.zeros_like(values), where=weights > 0)
    return alpha * mean + (1 - alpha) * up


def _binomial(a: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 smoothing along both axes (edges replicated)."""
    for axis in (0, 1):
        p = np.pad(a, [(1, 1) if i == axis else (0, 0) for i in range(2)], mode="edge")
        lo, mid, hi = (np.take(p, range(o, o + a.shape[axis]), axis=axis) for o in (0, 1, 2))
        a = (lo + 2 * mid + hi) / 4
    return a


def tv_inpaint(y, op: ops.Mask, weight: float = 0.01, n_iter: int = 300) -> np.ndarray:
    """Total-variation inpainting: min 0.5 ||M x - y||^2 + weight TV(x), 0 <= x <= 1 (Condat-Vu),
    started from the observed mean in the holes."""
    _need(op, ops.Mask, "tv_inpaint")
    y = np.asarray(y, dtype=np.float64).reshape(op.shape)
    obs = op.observed_full
    x0 = np.where(obs, y, y[obs].mean())
    return _finish(_tv_solve(y, op, weight, n_iter, x0=x0), op)


def _blur_channels(y, op, fn):
    _need(op, ops.Blur, fn.__name__)
    kh, kw = op.psf.shape
    y = _channels(np.asarray(y, dtype=np.float64).reshape(op.shape))
    h, w = y.shape[-2:]
    out = np.empty_like(y)
    for c in range(y.shape[0]):  # pad symmetrically (as the operator does), restore, crop
        padded = np.pad(y[c], ((kh, kh), (kw, kw)), mode="symmetric")
        out[c] = fn(padded, op.psf)[kh:kh + h, kw:kw + w]
    return _finish(out, op)


def wiener(y, op: ops.Blur, balance: float = 0.01) -> np.ndarray:
    """Wiener-Hunt deconvolution (skimage.restoration.wiener, Laplacian regulariser, weight
    ``balance``) on the symmetrically padded measurement, then cropped."""
    from skimage.restoration import wiener as _wiener

    def run(padded, psf):
        return _wiener(padded, psf, balance, clip=False)

    run.__name__ = "wiener"
    return _blur_channels(y, op, run)


def richardson_lucy(y, op: ops.Blur, num_iter: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution (skimage, clip=False) of the padded measurement, made
    positive by clipping at 1e-6."""
    from skimage.restoration import richardson_lucy as _rl

    def run(padded, psf):
        return _rl(np.clip(padded, 1e-6, None), psf, num_iter=int(num_iter), clip=False)

    run.__name__ = "richardson_lucy"
    return _blur_channels(y, op, run)


def tv_deblur(y, op: ops.Blur, weight: float = 0.002, n_iter: int = 300) -> np.ndarray:
    """TV deblurring: min 0.5 ||A x - y||^2 + weight TV(x), 0 <= x <= 1 (Condat-Vu with the
    operator's forward/adjoint)."""
    _need(op, ops.Blur, "tv_deblur")
    return _finish(_tv_solve(y, op, weight, n_iter, x0=np.asarray(y, np.float64)), op)


def lasso_dct(y, op, lam: float = 0.01, n_iter: int = 200) -> np.ndarray:
    """min 0.5 ||A D^T z - y||^2 + lam ||z||_1 over orthonormal 2-D DCT coefficients z of each
    channel (DC not penalised), by FISTA from the pseudo-inverse."""
    penalised = np.ones(op.shape)
    penalised[..., 0, 0] = 0.0
    return _finish(_fista_l1(
        y, op, lambda x: sfft.dctn(x, axes=(-2, -1), norm="ortho"),
        lambda z: sfft.idctn(z, axes=(-2, -1), norm="ortho"), lam, n_iter, penalised), op)


def lasso_wavelet(y, op, lam: float = 0.01, n_iter: int = 200, levels: int | None = 4
                  ) -> np.ndarray:
    """min 0.5 ||A W^T z - y||^2 + lam ||z||_1 over orthonormal multi-level Haar (db1)
    coefficients z of each channel (coarse approximation not penalised), by FISTA."""
    penalised = np.ones(op.shape)
    ch, cw = _haar_coarse_size(*op.shape[-2:], levels)
    penalised[..., :ch, :cw] = 0.0
    return _finish(_fista_l1(y, op, lambda x: haar_forward(x, levels),
                             lambda z: haar_inverse(z, levels), lam, n_iter, penalised), op)


def tv_cs(y, op, weight: float = 0.01, n_iter: int = 300) -> np.ndarray:
    """min 0.5 ||A x - y||^2 + weight TV(x), 0 <= x <= 1, by Condat-Vu from the pseudo-inverse."""
    return _finish(_tv_solve(y, op, weight, n_iter), op)


def pseudo_inverse(y, op) -> np.ndarray:
    """The operator's own (regularised) pseudo-inverse, clipped to [0, 1]."""
    return _finish(op.pseudo_inverse(np.asarray(y, dtype=np.float64)), op)


# ------------------------------------------------------------------------------------- registry
_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {
    f.__name__: f for f in (biharmonic, tv_inpaint, wiener, richardson_lucy, tv_deblur,
                            lasso_dct, lasso_wavelet, tv_cs, pseudo_inverse)
}

BASELINES: dict[str, list[str]] = {
    "mask": ["biharmonic", "tv_inpaint"],
    "blur": ["wiener", "richardson_lucy", "tv_deblur"],
    "cs": ["lasso_dct", "lasso_wavelet", "tv_cs", "pseudo_inverse"],
    "matrix": ["lasso_dct", "lasso_wavelet", "tv_cs", "pseudo_inverse"],
}

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "biharmonic": {},
    "tv_inpaint": {"weight": 0.01},
    "wiener": {"balance": 0.01},
    "richardson_lucy": {"num_iter": 30},
    "tv_deblur": {"weight": 0.002},
    "lasso_dct": {"lam": 0.01},
    "lasso_wavelet": {"lam": 0.01},
    "tv_cs": {"weight": 0.01},
    "pseudo_inverse": {},
}

PARAM_GRIDS: dict[str, dict[str, list]] = {
    "biharmonic": {},
    "tv_inpaint": {"weight": [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]},
    "wiener": {"balance": [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3]},
    "richardson_lucy": {"num_iter": [5, 10, 20, 30, 50, 100]},
    "tv_deblur": {"weight": [5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05]},
    "lasso_dct": {"lam": [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3]},
    "lasso_wavelet": {"lam": [1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3]},
    "tv_cs": {"weight": [3e-3, 0.01, 0.02, 0.03, 0.05, 0.1]},
    "pseudo_inverse": {},
}

_MATCHING = {"mask": "biharmonic", "blur": "wiener", "cs": "lasso_dct", "matrix": "lasso_dct"}


def matching_baseline(op) -> str:
    """The recommended baseline for an operator: biharmonic (mask), wiener (blur), lasso_dct
    (cs, matrix)."""
    try:
        return _MATCHING[op.kind]
    except (AttributeError, KeyError):
        raise ValueError(f"no baseline for operator {op!r}") from None


# above this many pixels per plane a mask's warm start is pull_push, not biharmonic (0.7 s at
# 256x256, 57 s at 1024x1024 on one core: its sparse solve grows faster than the image)
FAST_WARM_START_PIXELS = 512 * 512


def warm_start_name(op) -> str:
    """Which method ``warm_start`` runs: the operator's matching baseline, or ``pull_push`` for a
    mask on planes larger than ``FAST_WARM_START_PIXELS``."""
    if op.kind == "mask" and op.shape[-1] * op.shape[-2] > FAST_WARM_START_PIXELS:
        return "pull_push"
    return matching_baseline(op)


def warm_start(y, op, noise_sigma: float) -> np.ndarray:
    """The solver's starting image (``init="baseline"``), made by ``warm_start_name(op)``."""
    name = warm_start_name(op)
    if name == "pull_push":
        return pull_push(y, op)
    return run_baseline(name, y, op, noise_sigma=noise_sigma)


# What the solvers return for a reconstruction far outside the prior's domain (solvers'
# domain check): the classical method with the best validation PSNR where it differs from the warm
# start by a margin (benchmarks/results/baseline_grid.json). For compressed sensing TV leads
# Lasso-DCT by 1.8 to 3.0 dB at every ratio; averaged over their rows, biharmonic is the best for
# masks and Wiener within 0.1 dB of the best for blurs, and both are fast.
_FALLBACK = {"cs": "tv_cs", "matrix": "tv_cs"}


def fallback(y, op, noise_sigma: float) -> tuple[str, np.ndarray]:
    """(name, image) of the classical reconstruction that stands in for a flow's result outside
    the prior's domain: TV for compressed sensing and dense matrices, else the warm start."""
    name = _FALLBACK.get(op.kind)
    if name is None:
        return warm_start_name(op), warm_start(y, op, noise_sigma)
    return name, run_baseline(name, y, op, noise_sigma=noise_sigma)


def params_key(name: str, kind: str, noise_sigma: float) -> str:
    """Key of tuned parameters in ``baseline_params.json``: ``"{name}/{kind}/{noise_sigma}"``
    with noise_sigma as a Python float (e.g. ``"wiener/blur/0.01"``)."""
    return f"{name}/{kind}/{float(noise_sigma)}"


def load_tuned_params(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """The tuned-parameter table (empty if the file does not exist); keys starting with '_' are
    metadata and skipped."""
    path = Path(PARAMS_FILE if path is None else path)
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        table = json.load(f)
    return {k: v for k, v in table.items() if not k.startswith("_")}


def save_tuned_params(entries: dict[str, dict[str, Any]], path: str | Path | None = None) -> Path:
    """Merge ``{params_key(...): params}`` entries into the JSON table and write it back."""
    path = Path(PARAMS_FILE if path is None else path)
    table = {}
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    table.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(table.items())), f, indent=2)
        f.write("\n")
    return path


_OPERATOR_SETTING = {"mask": "missing", "blur": "sigma", "cs": "ratio"}


def _by_operator(name, op, noise_sigma, path=None) -> dict[str, Any] | None:
    """The entry tuned for this operator's setting (missing fraction, blur sigma or cs ratio) in
    the table's ``_by_operator`` section: nearest noise level first, then nearest setting."""
    setting = _OPERATOR_SETTING.get(op.kind)
    path = Path(PARAMS_FILE if path is None else path)
    if setting is None or not path.is_file():
        return None
    value = op.describe().get({"missing": "missing_fraction"}.get(setting, setting))
    if value is None:  # e.g. a blur with a user PSF: no sigma to match
        return None
    with open(path, encoding="utf-8") as f:
        table = json.load(f).get("_by_operator", {})
    candidates = []
    for key, params in table.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != name or parts[1] != op.kind or not parts[3].startswith(setting + "="):
            continue
        noise, tuned = float(parts[2]), float(parts[3].split("=", 1)[1])
        candidates.append(((abs(noise - float(noise_sigma)), abs(tuned - float(value))), params))
    return min(candidates, key=lambda c: c[0])[1] if candidates else None


def _resolve_params(name, kind, noise_sigma, path=None, op=None) -> dict[str, Any]:
    params = dict(DEFAULT_PARAMS[name])
    if noise_sigma is None:
        return params
    if op is not None:
        fine = _by_operator(name, op, noise_sigma, path)
        if fine is not None:
            return {**params, **fine}
    table = load_tuned_params(path)
    key = params_key(name, kind, noise_sigma)
    if key in table:
        return {**params, **table[key]}
    # nearest tuned noise level for this baseline and operator kind, if any
    prefix = f"{name}/{kind}/"
    levels = []
    for k in table:
        if k.startswith(prefix):
            try:
                levels.append((abs(float(k[len(prefix):]) - float(noise_sigma)), k))
            except ValueError:
                continue
    if levels:
        return {**params, **table[min(levels)[1]]}
    return params


def run_baseline(name: str, y, op, params: dict[str, Any] | None = None,
                 noise_sigma: float | None = None, **overrides) -> np.ndarray:
    """Run baseline ``name`` on measurement ``y`` of operator ``op``; returns a float32 image.

    Parameters, later ones winning: ``DEFAULT_PARAMS[name]``; if ``params`` is None and
    ``noise_sigma`` is given, the tuned entry of ``data/baseline_params.json`` for this operator's
    setting (missing fraction, blur sigma or cs ratio, nearest tuned noise level and setting), else
    for ``params_key(name, op.kind, noise_sigma)`` (or the nearest tuned noise level); ``params``;
    keyword ``overrides``.
    """
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(_FUNCTIONS)}")
    if params is None:
        chosen = _resolve_params(name, op.kind, noise_sigma, op=op)
    else:
        chosen = {**DEFAULT_PARAMS[name], **params}
    chosen.update(overrides)
    return _FUNCTIONS[name](y, op, **chosen)


def _grid_points(grid) -> list[dict[str, Any]]:
    if grid is None:
        return [{}]
    if isinstance(grid, dict):
        if not grid:
            return [{}]
        names = list(grid)
        return [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    return [dict(p) for p in grid]


def _score(reference, estimate) -> float:
    return min(psnr(reference, estimate), 100.0)


def tune(name: str, cases: Iterable[tuple], grid=None, return_scores: bool = False):
    """Grid search: the parameters maximising the mean PSNR over ``cases`` of
    (x_true, y, op) tuples. ``grid``: {param: [values]} (Cartesian product) or a list of
    dicts; default ``PARAM_GRIDS[name]``. With ``return_scores`` also returns
    [(params, mean_psnr), ...]."""
    cases = list(cases)
    if not cases:
        raise ValueError("tune needs at least one (x_true, y, op) case")
    points = _grid_points(PARAM_GRIDS[name] if grid is None else grid)
    scores = []
    for point in points:
        values = [_score(x, run_baseline(name, y, op, params=point)) for x, y, op in cases]
        scores.append((point, float(np.mean(values))))
    best = max(scores, key=lambda s: s[1])[0]
    return (best, scores) if return_scores else best


def oracle(name: str, x_true, y, op, grid=None):
    """Per-image oracle tuning on the ground truth (report separately, never a default).
    Returns (best_params, estimate, psnr)."""
    best_params, best_x, best_psnr = None, None, -np.inf
    for point in _grid_points(PARAM_GRIDS[name] if grid is None else grid):
        x = run_baseline(name, y, op, params=point)
        score = psnr(x_true, x)
        if score > best_psnr:
            best_params, best_x, best_psnr = point, x, score
    return best_params, best_x, float(best_psnr)
