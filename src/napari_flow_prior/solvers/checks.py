"""Checks of a solve's inputs and settings: each names the problem in a ValueError before any work."""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import operators as ops

SCALE_BOUNDS = (-2.0, 3.0)  # 1st and 99th percentile of an image the solvers accept
MAX_ENSEMBLE = 8  # the number of symmetry frames (frames.FRAMES)
MIN_SIDE = 8  # the smallest image side the flow priors (and the plugin) accept


def check_min_size(hw, what: str = "") -> None:
    """ValueError unless an image of spatial shape ``hw`` (H, W) has at least ``MIN_SIDE`` pixels
    on each side; ``what`` (e.g. "layer 'cells'") prefixes the message."""
    h, w = (int(s) for s in tuple(hw)[-2:])
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{what + ': ' if what else ''}images need at least {MIN_SIDE}x{MIN_SIDE} pixels, "
                         f"got {h}x{w}")


def is_integer(value) -> bool:
    """An int or numpy integer, not a bool: what a count setting may be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int, float or numpy number, not a bool: what a numeric setting may be."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_ensemble(count) -> None:
    """ValueError unless ``count`` is an ensemble size: an integer from 1 to the number of frames."""
    if not is_integer(count) or not 1 <= count <= MAX_ENSEMBLE:
        raise ValueError(f"ensemble must be an integer from 1 to {MAX_ENSEMBLE}, got {count}")


def check_solve_values(iterations, weight, lr, tol) -> None:
    """ValueError unless ``iterations`` is a positive integer, ``weight`` (the prior weight, where
    the method has one) a finite number >= 0, ``lr`` a finite positive number and ``tol`` >= 0."""
    if not is_integer(iterations) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    checks = [("lr", lr, False), ("tol", tol, True)]
    if weight is not None:
        checks.append(("weight (the prior weight)", weight, True))
    for name, value, low_ok in checks:
        if not is_number(value) or not (0 <= value < math.inf if low_ok else 0 < value < math.inf):
            raise ValueError(f"{name} must be a finite number {'>= 0' if low_ok else '> 0'}, got {value!r}")


def check_posterior(chains=None, temperature=None, step=None) -> None:
    """ValueError unless the posterior settings given (not None) are valid: ``chains`` an integer
    from 1 to 64, ``temperature`` and ``step`` (the Langevin step factor, ``lr``) positive."""
    if chains is not None and (not is_integer(chains) or not 1 <= chains <= 64):
        raise ValueError(f"chains must be an integer from 1 to 64, got {chains!r}")
    for name, value in (("temperature", temperature), ("lr (the Langevin step factor)", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < math.inf):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def check_inputs(y, op, model):
    """(y, op) ready to solve: y a private float copy of the operator's output shape, NaN/inf
    pixels of a mask's measurements made unobserved (the operator narrowed to match), y zero
    where a mask does not observe; ValueError for a wrong shape, channel count or scale."""
    if not isinstance(op, ops.LinearOperator):
        raise TypeError(f"op must be an operator from napari_flow_prior.operators, got {type(op).__name__}")
    y = np.array(y, dtype=np.float64 if model.dtype == torch.float64 else np.float32, copy=True)
    if tuple(y.shape) != tuple(op.out_shape):
        raise ValueError(f"measurements have shape {y.shape} but the operator produces {tuple(op.out_shape)}")
    channels = op.shape[0] if len(op.shape) == 3 else 1
    if channels != model.channels:
        hint = "use channel_axis= to run a 1-channel model on each channel"
        if len(op.shape) == 3 and op.shape[-1] in (3, 4) and op.shape[0] > 4:
            hint = (f"it looks channels-last (H, W, {op.shape[-1]}): pass channel_axis=-1 with an operator "
                    f"for one ({op.shape[0]}, {op.shape[1]}) plane to run the model on each channel")
        raise ValueError(f"the image of shape {tuple(op.shape)} has {channels} channel(s) on its first axis but "
                         f"the model is for {model.channels}; {hint}")
    if model.architecture.get("kind") != "linear":  # a Gaussian prior has no squeeze to fit
        check_min_size(op.shape[-2:])
    bad = ~np.isfinite(y)
    if bad.any():
        if op.kind != "mask":
            raise ValueError(f"the measurements contain {int(bad.sum())} NaN/infinite values; only a "
                             "mask can treat them as missing pixels")
        observed = op.observed_full & ~bad
        op = ops.Mask(observed, shape=op.shape)
        y[bad] = 0
    if op.kind == "mask":
        if not op.observed_full.any():
            raise ValueError("the mask leaves no observed pixel: nothing to reconstruct from")
        y = y * op.observed_full  # y at unobserved pixels is ignored
    if model.architecture.get("kind") != "linear":  # a Gaussian prior has no fixed range
        if op.kind == "mask":
            check_scale(y[np.broadcast_to(op.observed_full, y.shape)], "the measurements")
        else:  # blur: y is an image; projections: their pseudo-inverse is one
            check_scale(y if op.kind == "blur" else np.asarray(op.pseudo_inverse(y)), "the measurements")
    return y, op


def check_scale(values: np.ndarray, what: str) -> None:
    """ValueError for an image far outside [0, 1] (raw 8- or 16-bit data): the priors model [0, 1]
    intensities, so a solve would return a meaningless image. The bounds leave room for noise,
    ringing and the bright tail that ``normalize`` (percentiles 1 and 99.8) maps above 1."""
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 0.0)
    if hi > SCALE_BOUNDS[1] or lo < SCALE_BOUNDS[0]:
        raise ValueError(f"{what} look like an image with intensities from about {lo:.4g} to {hi:.4g}, but the "
                         "priors work on images scaled to [0, 1]: scale it first, e.g. "
                         "x, scaling = nfp.normalize(image, model=model), and map results back with "
                         "scaling.restore(result.image)")
