"""Likelihood-regularized reconstruction: y = A x + noise -> x, with a flow prior p(x).

Methods (``reconstruct(..., method=...)``):

- ``"map"``  minimise ||A x - y||^2 / (2 sigma^2) - weight * log p(x) (full log p, log-dets
  included), over the image x (``space="image"``) or over its latent code z with x = G(z)
  (``space="latent"``), from a classical warm start;
- ``"latent"``  minimise ||A G(z) - y||^2 + weight * ||z||^2 over the latent z (Asim et al.),
  from z = 0 or from the encoded pseudo-inverse (``init="pinv"``);
- ``"mle"``  maximise p(x) subject to A x = y: only the unobserved pixels move for a mask; x stays
  in y's affine space by projection for Matrix and GaussianProjection;
- ``"posterior"``  the mean of p(x | y), sampled by annealed Langevin dynamics over the latent
  code with ``chains`` chains in one batch (``posterior.langevin``); ``Result.std`` is the
  samples' per-pixel standard deviation, where the data leave the image open.

``reconstruct_steps`` is the engine: a generator that yields ``Progress`` after each optimiser
step and returns a ``Result``; closing it, or a ``cancel`` callable returning True, stops it
within one evaluation of the objective. Images are in [0, 1]; see ``normalize``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch

from . import operators as ops
from . import posterior
from .devices import available_devices, resolve_device
from .flows import FlowModel, Latent, load_model
from .likelihood import check_photons, effective_sigma, negative_log_likelihood
from .normalization import DEFAULT as DEFAULT_NORMALIZATION
from .normalization import Scaling, counts_scaling, percentile_scaling

METHODS = ("map", "latent", "mle", "posterior")
NOISE_FLOOR = 1e-3  # the smallest sigma the MAP data term uses (noise-free data is still quantised)
# memory_saving="auto" switches memory-saving gradients on for images of at least this many pixels
# whose plain-autograd solve would take more than half the memory budget (see docs/scale.md)
MEMORY_SAVING_PIXELS = 256 * 256


class Cancelled(Exception):
    """Raised when a reconstruction is cancelled through its ``cancel`` callable."""


@dataclass
class Progress:
    iteration: int
    total: int
    loss: float


@dataclass
class Result:
    image: np.ndarray
    log_density: np.ndarray
    losses: list[float]
    n_iter: int
    seconds: float
    device: str
    method: str
    params: dict = field(default_factory=dict)
    noise_sigma: float | None = None
    std: np.ndarray | None = None  # method "posterior": per-pixel standard deviation of the samples


# Defaults per (method, operator kind): iterations, weight, optimiser, learning rate. Adam with a
# cosine-decaying step: strong-Wolfe L-BFGS stalled on these non-convex objectives in our tests.
# The prior weight lambda = 0.3 won on every validation crop and headline operator of the medical
# prior (benchmarks/tune_solver.py, results/tune_solver.md): a flow's -log p favours smooth images,
# and the full weight over-smooths.
# The same objective optimised over z (x = G(z)) follows another path and, stopped after the same
# iterations, lands elsewhere: on the medical prior's validation crops image space was better on
# every operator, on the digits prior latent space (where image-space MAP collapses towards the
# black background). A model file may therefore carry its own settings per method and operator,
# chosen on its validation images (``solver`` metadata; benchmarks/tune_solver.py), which replace
# these for that model.
# ``box``: image-space iterates are projected onto [0, 1] after every step, the support of the
# data a prior is trained on (the library's intensity range). Outside it a flow's density is
# unconstrained: with the longer-trained digits prior, free deblurring iterates reached pixels of
# -0.36 and log-densities down to -1e21, 14.3 dB against 25.5 in the box (box_diagnosis.py).
# ``ensemble``: how many solves to average, each with the prior seen in another symmetry frame
# (``FRAMES``); 1 is a single solve.
# ``lr_decay``: Adam's step decays (cosine) to 5% of ``lr`` over the iteration budget; False keeps
# it constant, which a model file may choose (the medical prior's inpainting: +0.32 dB on validation
# with 8 frames at 100 iterations; the larger late steps keep the iterate off the flatter, blurrier
# optima that a converging step settles into).
_MAP = dict(iterations=300, weight=0.3, optimizer="adam", lr=0.01, lr_decay=True, space="image", box=True, ensemble=1)
_MLE = dict(iterations=300, optimizer="adam", lr=0.01, lr_decay=True, ensemble=1)
_LATENT = dict(iterations=300, weight=0.0, optimizer="adam", lr=0.01, lr_decay=True, ensemble=1)
# posterior: Langevin steps per chain, chains, the prior's temperature T, and lr = the step factor
# (eta = lr * sigma_t^2; see posterior.py)
_POSTERIOR = dict(iterations=300, chains=8, temperature=1.0, lr=0.5, ensemble=1)
SPACES = ("image", "latent")
DEFAULTS = {
    ("map", "mask"): _MAP, ("map", "blur"): _MAP, ("map", "cs"): _MAP, ("map", "matrix"): _MAP,
    ("latent", "mask"): _LATENT, ("latent", "blur"): _LATENT, ("latent", "cs"): _LATENT,
    ("latent", "matrix"): _LATENT,
    ("mle", "mask"): _MLE, ("mle", "cs"): _MLE, ("mle", "matrix"): _MLE,
    ("posterior", "mask"): _POSTERIOR, ("posterior", "blur"): _POSTERIOR, ("posterior", "cs"): _POSTERIOR,
    ("posterior", "matrix"): _POSTERIOR,
}


# The symmetry frames of an ensemble, as (quarter turns, mirrored): the identity first, then the
# half turn and the two mirrors, then the quarter turns and the two transposes. A prior trained with
# flips and 90-degree rotations rates an image and its rotations alike only on average: each frame
# puts the image's pixels at other positions of the flow's squeeze grid and coupling masks, so the
# MAP estimates of the frames differ in their errors, and their mean has fewer of them (medical
# prior, 8 frames, validation: +0.75 dB for inpainting, +0.71 dB for deblurring; docs/evidence.md
# section 10).
FRAMES = ((0, False), (2, False), (0, True), (2, True), (1, False), (3, False), (1, True), (3, True))
Frame = tuple[int, bool]


def to_frame(x: torch.Tensor, frame: Frame) -> torch.Tensor:
    """The image (..., H, W) seen in ``frame``: turned ``frame[0]`` quarter turns, then mirrored
    left-right if ``frame[1]``."""
    turns, mirrored = frame
    x = torch.rot90(x, turns, (-2, -1)) if turns else x
    return x.flip(-1) if mirrored else x


def from_frame(x: torch.Tensor, frame: Frame) -> torch.Tensor:
    """The inverse of ``to_frame``."""
    turns, mirrored = frame
    x = x.flip(-1) if mirrored else x
    return torch.rot90(x, -turns, (-2, -1)) if turns else x


def is_integer(value) -> bool:
    """An int or numpy integer, not a bool: what a count setting may be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int, float or numpy number, not a bool: what a numeric setting may be."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_ensemble(count) -> None:
    """ValueError unless ``count`` is an ensemble size: an integer from 1 to len(FRAMES)."""
    if not is_integer(count) or not 1 <= count <= len(FRAMES):
        raise ValueError(f"ensemble must be an integer from 1 to {len(FRAMES)}, got {count}")


def symmetry_frames(model: FlowModel, count: int) -> tuple[Frame, ...]:
    """The first ``count`` of ``FRAMES`` for an ensemble with ``model``; a ValueError when the model
    was trained without flips and rotations (its metadata says so) and ``count`` > 1: then the
    other frames show it images unlike its training data (a digit upside down)."""
    check_ensemble(count)
    augmented = ((model.metadata.get("training") or {}).get("config") or {}).get("augment", True)
    if count > 1 and not augmented:
        raise ValueError(f"ensemble={count}: the model {model.metadata.get('name')!r} was trained without "
                         "flips and rotations, so it has no symmetry frames to average over; use ensemble=1")
    return FRAMES[:count]


ModelLike = FlowModel | str | os.PathLike


def as_model(model: ModelLike) -> FlowModel:
    """The model itself, or the shipped/user model of that name, or the ``.safetensors`` file at
    that path (loaded), so every public function takes any of them."""
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if isinstance(model, FlowModel) or hasattr(model, "log_prob"):  # a model, or a wrapper of one
        return model
    raise TypeError(f"model must be a FlowModel, a model name or a .safetensors path, got {type(model).__name__}")


def normalize(image, observed=None, model: ModelLike | None = None) -> tuple[np.ndarray, Scaling]:
    """Scale an image to the [0, 1] range of ``model`` (its ``normalization`` metadata: percentiles
    over the observed, finite pixels), returning the scaled image and the ``Scaling`` whose
    ``restore`` maps results back to the input's units. The input is never modified. A (C, H, W)
    image for a C-channel model is scaled channel by channel, as the trainer scales its data."""
    norm = dict(DEFAULT_NORMALIZATION)
    channel_axis = None
    if model is not None:
        model = as_model(model)
        norm.update(model.metadata.get("normalization") or {})
        shape = np.shape(image)
        if model.channels > 1 and len(shape) == 3 and shape[0] == model.channels:
            channel_axis = 0
    scaling = percentile_scaling(image, norm["low_pct"], norm["high_pct"], observed=observed,
                                 channel_axis=channel_axis)
    scaled = scaling.apply(image, clip=bool(norm.get("clip", True)))
    if observed is not None:
        scaled = np.where(np.broadcast_to(observed, scaled.shape), scaled, 0).astype(np.float32)
    return scaled, scaling


def normalize_counts(image, gain: float, offset: float = 0.0, observed=None,
                     model: ModelLike | None = None) -> tuple[np.ndarray, Scaling, float]:
    """Scale photon-count data (e.g. a camera image: ``gain`` input units per detected photon, on a
    baseline ``offset``) to [0, 1] for ``reconstruct(..., photons=photons)``: returns the scaled
    image (counts / photons, not clipped, unobserved pixels 0), the ``Scaling`` back to the input's
    units and ``photons``, the count at intensity 1 (the model's upper normalisation percentile of
    the counts). The input is never modified."""
    norm = dict(DEFAULT_NORMALIZATION)
    if model is not None:
        norm.update(as_model(model).metadata.get("normalization") or {})
    scaling, photons = counts_scaling(image, gain, offset, norm["high_pct"], observed=observed)
    scaled = scaling.apply(image)
    if observed is not None:
        scaled = np.where(np.broadcast_to(observed, scaled.shape), scaled, 0)
    return np.asarray(scaled, np.float32), scaling, photons


def diagonal_details(y: np.ndarray) -> np.ndarray:
    """The finest diagonal Haar details (x00 - x01 - x10 + x11) / 2 of every 2x2 block of the last
    two axes (an odd last row/column is left out); for white noise of standard deviation sigma
    they have standard deviation sigma."""
    y = np.asarray(y, np.float64)
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    return (y[..., 0:h:2, 0:w:2] - y[..., 0:h:2, 1:w:2] - y[..., 1:h:2, 0:w:2] + y[..., 1:h:2, 1:w:2]) / 2


def estimate_noise_sigma(y: np.ndarray, op) -> float:
    """Noise standard deviation of measured data from its finest diagonal Haar details (the
    estimator of scikit-image's estimate_sigma), using only fully observed 2x2 blocks for a mask:
    those of the aligned grid, or, where a sparse mask leaves fewer than 64 of them (80% missing at
    random observes 1 block in 600), every fully observed 2x2 window."""
    if op.kind not in ("mask", "blur"):
        raise ValueError("noise_sigma='auto' needs image-shaped measurements (mask or blur); "
                         f"give a number for {op.kind!r} measurements")
    y = np.asarray(y, np.float64).reshape((-1, *op.shape[-2:]))
    observed = np.ones(y.shape, bool)
    if op.kind == "mask":
        observed = np.broadcast_to(op.observed_full.reshape((-1, *op.shape[-2:])), y.shape)
    h, w = (y.shape[1] // 2) * 2, (y.shape[2] // 2) * 2
    full = observed[:, :h, :w].reshape(y.shape[0], h // 2, 2, w // 2, 2).all(axis=(2, 4))
    values = diagonal_details(y)[full]
    if values.size < 64:  # every 2x2 window, overlapping
        windows = observed[:, :-1, :-1] & observed[:, :-1, 1:] & observed[:, 1:, :-1] & observed[:, 1:, 1:]
        details = (y[:, :-1, :-1] - y[:, :-1, 1:] - y[:, 1:, :-1] + y[:, 1:, 1:]) / 2
        values = details[windows]
    if values.size < 16:
        raise ValueError(f"too few fully observed 2x2 pixel blocks ({values.size}) to estimate the noise; "
                         "give noise_sigma as a number")
    return float(np.median(np.abs(values)) / 0.6745)


def check_solver_settings(solver) -> None:
    """ValueError unless ``solver`` is {method: {operator kind: {setting: value}}} with only the
    (method, kind) pairs and setting names of ``DEFAULTS``, each value of its default's type."""
    if not isinstance(solver, dict):
        raise ValueError(f"expected a mapping, got {type(solver).__name__}")
    methods = sorted({m for m, _ in DEFAULTS})
    for method, kinds in solver.items():
        if method not in methods or not isinstance(kinds, dict):
            raise ValueError(f"unknown method {method!r} or not a mapping of operator kinds "
                             f"(expected one of {methods})")
        for kind, settings in kinds.items():
            if (method, kind) not in DEFAULTS or not isinstance(settings, dict):
                pairs = ", ".join(f"{m}/{k}" for m, k in DEFAULTS)
                raise ValueError(f"unknown method/operator {method}/{kind} (expected one of {pairs})")
            for key, value in settings.items():
                default = DEFAULTS[(method, kind)].get(key)
                if isinstance(default, float):
                    kind_ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                else:
                    kind_ok = isinstance(value, type(default)) and isinstance(value, bool) == isinstance(default, bool)
                if default is None or not kind_ok or (key == "space" and value not in SPACES):
                    raise ValueError(f"{method}/{kind}: setting {key}={value!r} is not one of "
                                     f"{sorted(DEFAULTS[(method, kind)])} with a value like {default!r}")


def solver_defaults(method: str, kind: str, model: FlowModel | None = None) -> dict:
    """The settings ``reconstruct`` uses when the caller gives none: ``DEFAULTS`` for (method,
    operator kind), updated by the model's own ``solver`` metadata for that pair if it has any."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "mle" and kind == "blur":
        raise ValueError("method 'mle' needs measurements that fix part of the image exactly (mask, "
                         "compressed sensing); for deblurring use method='map'")
    kind = kind if kind in ("mask", "blur", "cs") else "matrix"
    settings = dict(DEFAULTS[(method, kind)])
    if model is not None:
        own = (model.metadata.get("solver") or {}).get(method, {}).get(kind, {})
        settings.update({k: v for k, v in own.items() if k in settings})
    return settings


def _check_inputs(y, op, model: FlowModel):
    if not isinstance(op, ops.LinearOperator):
        raise TypeError(f"op must be an operator from napari_flow_prior.operators, got {type(op).__name__}")
    y = np.array(y, dtype=np.float64 if model.dtype == torch.float64 else np.float32, copy=True)
    if tuple(y.shape) != tuple(op.out_shape):
        raise ValueError(f"measurements have shape {y.shape} but the operator produces {tuple(op.out_shape)}")
    channels = op.shape[0] if len(op.shape) == 3 else 1
    if channels != model.channels:
        raise ValueError(f"the image has {channels} channel(s) but the model is for {model.channels}; "
                         "use channel_axis= to run a 1-channel model on each channel")
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
            _check_scale(y[np.broadcast_to(op.observed_full, y.shape)], "the measurements")
        else:  # blur: y is an image; projections: their pseudo-inverse is one
            _check_scale(y if op.kind == "blur" else np.asarray(op.pseudo_inverse(y)), "the measurements")
    return y, op


def _check_scale(values: np.ndarray, what: str) -> None:
    """ValueError for an image far outside [0, 1] (raw 8- or 16-bit data): the priors model [0, 1]
    intensities, so a solve would return a meaningless image. The bounds leave room for noise,
    ringing and the bright tail that ``normalize`` (percentiles 1 and 99.8) maps above 1."""
    lo, hi = np.percentile(values, [1, 99]) if values.size else (0.0, 0.0)
    if hi > SCALE_BOUNDS[1] or lo < SCALE_BOUNDS[0]:
        raise ValueError(f"{what} look like an image with intensities from about {lo:.4g} to {hi:.4g}, but the "
                         "priors work on images scaled to [0, 1]: scale it first, e.g. "
                         "x, scaling = nfp.normalize(image, model=model), and map results back with "
                         "scaling.restore(result.image)")


SCALE_BOUNDS = (-2.0, 3.0)  # 1st and 99th percentile of an image the solvers accept


FALLBACK_WHY = ("an image far outside the prior's domain encodes to a huge latent code that float32 "
                "cannot decode back (see Result.params['fallback'])")
ROUND_TRIP_TOL = 1e-3  # largest |G(f(x0)) - x0| (on the [0, 1] scale) of a usable latent start


def _encode_start(model: FlowModel, x0: torch.Tensor) -> Latent | None:
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


def _graphed_gradient(params, objective):
    """Capture ``objective()`` and its backward pass as one CUDA graph, or return None when the
    objective cannot be captured.

    On a GPU the solver loop is bound by launching the thousands of small kernels of the flow's
    forward and backward passes, not by arithmetic; a graph replays them all with one launch. The
    returned function replays the graph: the loss tensor it returns and ``p.grad`` of every
    parameter are rewritten in place (so they must not be zeroed or set to None in between)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: fills caches, cuDNN/cuFFT plans, autograd state
            for _ in range(2):
                for p in params:
                    p.grad = None
                objective().backward()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:
            p.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = objective()
            loss.backward()
    except Exception as err:  # noqa: BLE001 - any capture failure falls back to plain execution
        torch.cuda.synchronize()
        for p in params:
            p.grad = None
        warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {err}); solving without it",
                      RuntimeWarning, stacklevel=3)
        return None

    def replay():
        graph.replay()
        return loss
    return replay


def _minimize(params, objective, *, iterations, optimizer, lr, tol, cancel, graph=False, project=None,
              lr_decay=True):
    """Generator: minimise ``objective()`` over ``params``; yields (iteration, loss).

    A non-finite loss or parameter steps back to the last good point with half the step size.
    Stops after ``iterations`` steps or when the relative change of the parameters,
    ||p_k - p_(k-1)|| / ||p_k||, stays below ``tol`` for 5 steps; then the parameters are those
    of the lowest objective evaluated, if the end point's is higher (an unstable run can climb
    away from a good point: a digit's compressed-sensing objective went from -2.8 to +16). ``graph`` (Adam on CUDA only)
    evaluates objective and gradient by replaying a CUDA graph (``_graphed_gradient``).
    ``project()``, if given, runs after every step (without autograd) to restore a constraint.
    ``lr_decay``: Adam's step decays (cosine) to 5% of ``lr`` over ``iterations``; else it is constant.
    """
    def make():
        if optimizer == "lbfgs":
            # One iteration = up to 4 L-BFGS steps (torch's line search never moves with max_iter=1);
            # no absolute tolerances: objectives are per pixel and can be tiny; stopping is ours.
            return torch.optim.LBFGS(params, lr=lr, max_iter=4, history_size=20, line_search_fn="strong_wolfe",
                                     tolerance_grad=0.0, tolerance_change=0.0)
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=lr)
        raise ValueError(f"unknown optimizer {optimizer!r}; expected 'lbfgs' or 'adam'")

    opt = make()
    good = [p.detach().clone() for p in params]
    previous, calm = math.inf, 0
    best, best_value = None, math.inf

    def relative_change():
        num = sum(float((p.detach() - g).pow(2).sum()) for p, g in zip(params, good))
        den = sum(float(p.detach().pow(2).sum()) for p in params)
        return math.sqrt(num / max(den, 1e-24))

    def closure():
        if cancel is not None and cancel():
            raise Cancelled("reconstruction cancelled")
        opt.zero_grad(set_to_none=True)
        loss = objective()
        if torch.isfinite(loss):
            loss.backward()
        return loss

    replay = _graphed_gradient(params, objective) if graph and optimizer == "adam" else None

    def graphed_step():
        if cancel is not None and cancel():
            raise Cancelled("reconstruction cancelled")
        loss = replay()
        if torch.isfinite(loss):
            opt.step()
        return loss

    def restore_best():
        if best is None:
            return
        with torch.no_grad():
            end = float(objective())
            if not (math.isfinite(end) and end <= best_value):
                for p, b in zip(params, best):
                    p.copy_(b)

    for it in range(1, iterations + 1):
        if optimizer == "adam" and lr_decay:  # cosine decay to 5% of the step over the iteration budget
            for group in opt.param_groups:
                group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations)))
        loss = graphed_step() if replay is not None else opt.step(closure)
        if project is not None:
            with torch.no_grad():
                project()
        value = float(loss.detach())
        finite = math.isfinite(value) and all(torch.isfinite(p).all() for p in params)
        if not finite:
            with torch.no_grad():
                for p, g in zip(params, good):
                    p.copy_(g)
            lr /= 2
            opt = make()
            yield it, previous
            continue
        calm = calm + 1 if relative_change() < tol else 0
        if value < best_value:  # the loss was evaluated at the step's start point, ``good``
            best_value = value
            best = [g.clone() for g in good]
        for p, g in zip(params, good):
            g.copy_(p.detach())
        previous = value
        yield it, value
        if calm >= 5:
            break
    restore_best()


def reconstruct_steps(
    y,
    op,
    model: ModelLike,
    *,
    method: str = "map",
    noise_sigma: float | str = 0.01,
    iterations: int | None = None,
    weight: float | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    lr_decay: bool | None = None,
    space: str | None = None,
    box: bool | None = None,
    ensemble: int | None = None,
    chains: int | None = None,
    temperature: float | None = None,
    init: str | np.ndarray = "baseline",
    tol: float = 1e-5,
    device: str = "auto",
    seed: int = 0,
    cancel: Callable[[], bool] | None = None,
    memory_saving: bool | str = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    memory_budget: int | str | None = None,
    cuda_graph: bool | str = "auto",
    domain_check: bool = True,
    photons: float | None = None,
    _pixels: float | None = None,
    _frame: Frame | None = None,
) -> Iterator[Progress]:
    """Reconstruct one image from measurements ``y = op(x) + noise``; see the module docstring.

    Scale: ``memory_saving`` (True, False or "auto": on for images of ``MEMORY_SAVING_PIXELS`` or
    more whose plain solve would take over half of ``memory_budget``) recomputes the flow's activations by inversion in the backward pass instead of storing them.
    ``tile``: None solves the whole image when its estimated memory fits ``memory_budget`` (bytes
    or "4G"; default from the free RAM / GPU memory) and otherwise in overlapping tiles blended
    without seams; 0 always solves the whole image; an integer solves in tiles of that side with
    ``overlap`` (default a quarter tile). Tiles align with the flow's squeeze grid and a
    GaussianProjection's blocks; an unaligned request is a ValueError (see ``tiling``). A failed
    allocation (CUDA or CPU) in an automatic whole-image solve falls back to tiles of half its
    estimated memory, with a warning.
    ``cuda_graph`` (True, False or "auto": on for Adam on a CUDA device) replays each objective
    and gradient evaluation as one CUDA graph; if capture fails the solve runs without it.

    ``weight`` is the prior weight (lambda for map, gamma for latent); ``chains`` and
    ``temperature`` (posterior only) are the number of Langevin chains and the prior's temperature
    T (``posterior.py``), whose step factor is ``lr``; ``space`` ("image" or
    "latent", map only) is where map optimises; ``box`` (map in image space) keeps the iterates
    in [0, 1], the prior's support (see ``_MAP``); ``lr_decay`` (Adam) lets the step decay to 5% of
    ``lr`` over the budget (cosine) or, False, keeps it constant; ``ensemble`` (1 to 8) averages that many
    solves, each with the prior seen in another of the symmetry ``FRAMES`` (for priors trained with
    flips and rotations; the time grows in proportion); settings left as None come from
    ``solver_defaults`` (the model's own, else ``DEFAULTS``); ``init`` is "baseline" (the
    operator's matching classical reconstruction, ``baselines.warm_start``: a warm start that
    saves iterations; pull-push instead of biharmonic for masks on planes over 512x512), "pinv" (the pseudo-inverse, observed mean in the holes of a mask),
    "zero" (z = 0 where the solve is in latent space, a flat 0.5 image otherwise) or an image; a
    latent-space solve whose start does not invert exactly (``ROUND_TRIP_TOL``) starts from z = 0
    with a warning and ``Result.params["fallback"]``.
    ``domain_check``: ``Result.params["domain"]`` compares the reconstruction's log-density with the
    model's validation images (``domain.domain_report``); where it is far below them the prior does
    not describe the image, and the result is a classical reconstruction instead
    (``baselines.fallback``: TV for compressed sensing, else the warm start), with a warning and
    ``Result.params["fallback"]`` (False keeps the flow's reconstruction).
    ``photons``: None for Gaussian noise of ``noise_sigma``; a number for photon-limited data,
    y = Poisson(photons * A x) / photons + N(0, noise_sigma^2) (``photons`` the expected count at
    intensity 1 of the [0, 1] image, ``noise_sigma`` the read noise, 0 for none): the data term is
    then the Poisson likelihood of ``likelihood.py`` (masks and blurs, whose measurements are
    nonnegative). Yields ``Progress``, returns ``Result``.
    """
    t0 = time.time()
    model = as_model(model)
    y, op = _check_inputs(y, op, model)
    settings = solver_defaults(method, op.kind, model)
    if space is not None and method != "map":
        raise ValueError(f"space= applies to method 'map' only, not {method!r}")
    for key, value in (("iterations", iterations), ("weight", weight), ("optimizer", optimizer), ("lr", lr),
                       ("lr_decay", lr_decay), ("space", space), ("box", box), ("ensemble", ensemble),
                       ("chains", chains), ("temperature", temperature)):
        if value is not None:
            if key in ("weight", "optimizer", "lr_decay", "chains", "temperature") and key not in settings:
                raise ValueError(f"{key}= does not apply to method {method!r}")
            settings[key] = value
    check_solve_values(settings["iterations"], settings.get("weight"), settings["lr"], tol)
    if not isinstance(settings.get("lr_decay", True), (bool, np.bool_)):
        raise ValueError(f"lr_decay must be True or False, got {settings['lr_decay']!r}")
    if method == "posterior":
        check_posterior(settings["chains"], settings["temperature"], settings["lr"])
    if method == "map" and settings["space"] not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {settings['space']!r}")
    photons = check_photons(photons)
    if photons is not None and op.kind not in ("mask", "blur"):
        raise ValueError(f"photons= (Poisson noise) needs nonnegative measurements, from a mask or a blur; "
                         f"{op.kind!r} measurements are not photon counts: give noise_sigma only")
    if isinstance(noise_sigma, str):
        if noise_sigma != "auto":
            raise ValueError(f"noise_sigma must be a number or 'auto', got {noise_sigma!r}")
        noise_sigma = estimate_noise_sigma(y, op)
        if photons is not None:  # the estimate holds both noises: keep the read noise's share
            noise_sigma = math.sqrt(max(noise_sigma ** 2 - effective_sigma(y, 0.0, photons, op) ** 2, 0.0))
    noise_sigma = float(noise_sigma)
    if not 0 <= noise_sigma < math.inf:
        raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma}")
    # what stands for the noise where one sigma is needed (warm start, fallback, posterior annealing)
    sigma_eff = effective_sigma(y, noise_sigma, photons, op)
    # the caller's arguments, passed on to the parts (ensemble members, tiles) of this solve
    passed = dict(method=method, noise_sigma=noise_sigma, iterations=iterations, weight=weight,
                  optimizer=optimizer, lr=lr, lr_decay=lr_decay, space=space, box=box, chains=chains,
                  temperature=temperature, photons=photons,
                  init=init, tol=tol, device=device, seed=seed, cancel=cancel, cuda_graph=cuda_graph)
    frames = symmetry_frames(model, settings["ensemble"]) if _frame is None else (_frame,)
    check_domain = domain_check and _frame is None  # once, on the whole result, not per member or tile
    if len(frames) > 1:  # each member decides its own memory saving and tiles
        member = dict(passed, memory_saving=memory_saving, tile=tile, overlap=overlap,
                      memory_budget=memory_budget, _pixels=_pixels)
        result = yield from _reconstruct_ensemble(y, op, model, frames, t0, **member)
        return _domain_guard(result, y, op, model, sigma_eff, check_domain)
    frame = frames[0]
    dev = resolve_device(device)
    from . import tiling

    image_hw = tuple(op.shape[-2:])
    budget = tiling.parse_bytes(memory_budget) if memory_budget is not None else tiling.default_memory_budget(dev)
    if memory_saving == "auto":  # pays when plain autograd would take a good part of the budget
        memory_saving = (image_hw[0] * image_hw[1] >= MEMORY_SAVING_PIXELS
                         and tiling.estimate_solve_bytes(model, op.shape, False) > budget / 2)
    memory_saving = bool(memory_saving)
    auto_tile = tile is None
    if auto_tile:
        tiled = model.architecture.get("kind") != "linear" and op.kind != "matrix"
        need = tiling.estimate_solve_bytes(model, op.shape, memory_saving)
        share = 1
        if method == "map" and settings["space"] == "latent":  # the decoder's graph is kept as well
            need += tiling.estimate_solve_bytes(model, op.shape, False)
            share = 2
        elif method == "posterior":  # the chains are one batch, each with its decoder graph
            share = int(settings["chains"])
            need *= share
        tile = tiling.choose_tile(model, op, budget // share, memory_saving) if tiled and need > budget else 0
    if cuda_graph not in (True, False, "auto"):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if cuda_graph is True and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; this solve runs on {dev}")
    use_graph = dev.type == "cuda" and settings.get("optimizer") == "adam" and cuda_graph is not False
    tile_kwargs = dict(passed, memory_saving=memory_saving, _frame=frame)
    if tile:
        result = yield from _reconstruct_tiled(y, op, model, int(tile), overlap, t0, **tile_kwargs)
        return _domain_guard(result, y, op, model, sigma_eff, check_domain)
    torch.manual_seed(seed)
    model = model.to(dev).eval()
    # channels-last convolutions: one forward+backward of the nuclei prior at 256x256 on 2 CPU
    # threads takes 0.135 s instead of 0.178 s (same values); the image follows below
    layout = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
    model = model.to(memory_format=layout)
    dtype = model.dtype
    for p in model.parameters():
        p.requires_grad_(False)
    shape = tuple(op.shape)
    image_shape = (1, model.channels, *shape[-2:])
    y_t = torch.as_tensor(y, device=dev, dtype=dtype)

    if isinstance(init, str):
        if init not in ("baseline", "pinv", "zero"):
            raise ValueError(f"init must be 'baseline', 'pinv', 'zero' or an image, got {init!r}")
        if init == "baseline":
            from .baselines import warm_start

            x0 = torch.as_tensor(warm_start(y, op, sigma_eff), device=dev, dtype=dtype)
        elif init == "pinv":
            x0 = op.pseudo_inverse(y_t)
        else:
            x0 = torch.full(shape, 0.5, device=dev, dtype=dtype)
        if op.kind == "mask" and init == "pinv":
            observed = torch.as_tensor(np.array(op.observed_full), device=dev)
            fill = y_t[observed].mean() if observed.any() else 0.5
            x0 = torch.where(observed, y_t, fill)
    else:
        x0 = torch.as_tensor(np.asarray(init), device=dev, dtype=dtype)
        if tuple(x0.shape) != shape:
            raise ValueError(f"init image has shape {tuple(x0.shape)}, expected {shape}")
        if not torch.isfinite(x0).all():
            raise ValueError("the init image has NaN or infinite pixels")
    x0 = x0.detach().clamp(0, 1).reshape(image_shape).contiguous(memory_format=layout)
    # the objective is a mean over pixels; a tile uses the whole image's count, so that its
    # per-pixel gradients (and Adam's steps, whose epsilon is not scale-free) match the whole image's
    n_pixels = float(np.prod(shape)) if _pixels is None else float(_pixels)
    sigma = noise_sigma if photons is not None else max(noise_sigma, NOISE_FLOOR)
    sigma_data = max(sigma_eff, NOISE_FLOOR)  # Gaussian: sigma; Poisson: the rms of its sigmas
    lam = float(settings.get("weight", 0.0))

    def data_term(x, batch=False):
        """-log p(y | x) less its minimum (||A x - y||^2 / (2 sigma^2) for Gaussian noise)."""
        return negative_log_likelihood(op.forward(x.reshape(-1, *shape) if batch else x.reshape(shape)), y_t,
                                       sigma, photons, batch=batch)

    def fall_back(what: str):
        settings["fallback"] = what
        warnings.warn(f"{what}: {FALLBACK_WHY}", RuntimeWarning, stacklevel=3)

    def latent_start():
        """z = f(x0), or z = 0 (the flow's mode, x = G(0)) where x0 does not invert or init is "zero"."""
        zero = isinstance(init, str) and init == "zero"
        start = to_frame(x0, frame)
        code = None if zero else _encode_start(model, start)
        if code is None and not zero:
            fall_back("the warm start does not invert exactly through the flow; started from z = 0")
        if code is None:
            hw = tuple(start.shape[-2:])
            code = Latent([torch.zeros((1, *s), device=dev, dtype=dtype) for s in model.latent_shapes(*hw)], hw)
        return code.map(lambda p: p.detach().clone().requires_grad_(True))

    project = None  # what keeps the iterates feasible after each step (image-space box)
    if method == "map":
        if settings["space"] == "latent":  # x = G(z); log p(G(z)) by re-encoding: exact, log-dets included
            code = latent_start()
            params = code.parts

            def image():
                return from_frame(model.decode(code), frame)
        else:
            x = x0.clone().requires_grad_(True)
            params = [x]
            if settings.get("box"):
                def project():
                    x.clamp_(0, 1)

            def image():
                return x

        def objective():
            x = image()
            return (data_term(x) - lam * model.log_prob(to_frame(x, frame)).sum()) / n_pixels

        def current():
            with torch.no_grad():
                return image().detach()
    elif method == "latent":
        latent = latent_start()
        params = latent.parts

        def objective():
            x = from_frame(model.decode(latent), frame)
            # ||A G(z) - y||^2 for Gaussian noise (2 sigma^2 times the data term)
            return (2 * sigma_data ** 2 * data_term(x) + lam * latent.squared_norm().sum()) / n_pixels

        def current():
            with torch.no_grad():
                return from_frame(model.decode(latent), frame)
    elif method == "posterior":
        n_chains = int(settings["chains"])
        code = latent_start().map(lambda p: p.detach().repeat(n_chains, *([1] * (p.dim() - 1))))
        noise = torch.Generator().manual_seed(seed)

        def samples(c):
            return from_frame(model.decode(c), frame)

        def misfit(x):  # ||A x - y||^2 / 2 per chain for Gaussian noise (sigma^2 times the data term)
            return sigma_data ** 2 * data_term(x, batch=True)

        def sampler():
            return posterior.langevin(code, samples, misfit, sigma=sigma_data, iterations=total,
                                      step=float(settings["lr"]), temperature=float(settings["temperature"]),
                                      generator=noise, cancel=cancel, cancelled=Cancelled, n_pixels=n_pixels)
    else:  # mle: maximise log p(x) on {x : A x = y}
        if op.kind == "mask":
            observed = torch.as_tensor(np.array(op.observed_full), device=dev).reshape(image_shape)
            free = x0.clone().requires_grad_(True)
            params = [free]

            def image():
                return torch.where(observed, y_t.reshape(image_shape), free)
        else:
            # x = x_p + (v - A^+ A v): x_p = A^+ y satisfies A x_p = y, the rest is in null(A)
            x_p = op.pseudo_inverse(y_t).reshape(image_shape)
            v = (x0 - x_p).clone().requires_grad_(True)
            params = [v]

            def image():
                null = v - op.pseudo_inverse(op.forward(v.reshape(shape))).reshape(image_shape)
                return x_p + null

        def objective():
            return -model.log_prob(to_frame(image(), frame)).sum() / n_pixels

        def current():
            with torch.no_grad():
                return image()

    losses: list[float] = []
    total = int(settings["iterations"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(model.memory_saving_mode(memory_saving))
        stack.enter_context(model.cached_constants())
        try:
            if method == "posterior":
                steps = sampler()
            else:
                steps = _minimize(params, objective, iterations=total, optimizer=settings["optimizer"],
                                  lr=float(settings["lr"]), tol=tol, cancel=cancel, graph=use_graph, project=project,
                                  lr_decay=bool(settings["lr_decay"]))
            outcome = yield from _progress(steps, losses, total)
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if (not _out_of_memory(error) or not auto_tile or model.architecture.get("kind") == "linear"
                    or op.kind == "matrix"):
                raise
            params = objective = current = None
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            # the estimate was too optimistic: tiles of at most half of it (so within the caller's budget,
            # which the whole image's estimate fitted)
            small = tiling.choose_tile(model, op, tiling.estimate_solve_bytes(model, op.shape, True) // 2, True)
            warnings.warn(f"out of memory on {dev} for the whole {image_hw[0]}x{image_hw[1]} image: "
                          f"solving in {small}x{small} tiles instead", RuntimeWarning, stacklevel=2)
            stack.close()
            result = yield from _reconstruct_tiled(y, op, model, small, overlap, t0,
                                                   **{**tile_kwargs, "memory_saving": True})
            return _domain_guard(result, y, op, model, sigma_eff, check_domain)

        if method == "posterior":
            x, std = (m.to(dtype).reshape(image_shape) for m in outcome[:2])
            settings.update(outcome[2])  # the sampler's acceptance rate and adapted steps
        else:
            x, std = current(), None
        if not torch.isfinite(x).all():  # cannot happen after the guard above; never return NaN
            x = torch.nan_to_num(x, nan=0.5, posinf=1.0, neginf=0.0)
        with torch.no_grad():
            density = model.log_density_map(x)[0, 0]
    image = x.reshape(shape).detach().cpu().numpy().astype(np.float32)
    params = {"method": method, **settings, "noise_sigma": noise_sigma, "photons": photons, "init": init if isinstance(init, str) else "image",
              "tol": tol, "seed": seed, "operator": op.describe(), "model": model.metadata.get("name"),
              "model_sha256": model.metadata.get("sha256"), "memory_saving": memory_saving, "tile": 0,
              "cuda_graph": use_graph, "frames": [list(frame)]}
    if std is not None:
        std = std.reshape(shape).cpu().numpy().astype(np.float32)
    result = Result(image=image, log_density=density.cpu().numpy().astype(np.float32), losses=losses,
                    n_iter=len(losses), seconds=time.time() - t0, device=str(dev), method=method,
                    params=params, noise_sigma=noise_sigma, std=std)
    return _domain_guard(result, y, op, model, sigma_eff, check_domain)


def _out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a plain RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


OUT_OF_DOMAIN = ("the reconstruction is far less likely under the prior ({value:.2f} nats/dim) than its "
                 "validation images (1st percentile {typical:.2f}): the image is outside the prior's domain, "
                 "or the measurements leave the prior too much to guess, so the result is the classical "
                 "reconstruction ({baseline}); choose a prior trained on images like this one, measure more, "
                 "or pass domain_check=False to keep the flow's result")


def _domain_guard(result: Result, y, op, model: FlowModel, noise_sigma: float, enabled: bool) -> Result:
    """``result`` with ``params["domain"]`` (``domain.domain_report``) or, for a reconstruction far
    outside the prior's domain, a classical reconstruction in its place (``baselines.fallback``,
    with a warning)."""
    if not enabled:
        return result
    from .baselines import fallback
    from .domain import MARGIN_BITS, domain_report

    report = domain_report(result.log_density, model)
    result.params["domain"] = report
    if report["in_domain"] is not False:
        return result
    typical = report["threshold"] + MARGIN_BITS * math.log(2)
    name, image = fallback(y, op, noise_sigma)
    what = OUT_OF_DOMAIN.format(value=report["log_density"], typical=typical, baseline=name)
    warnings.warn(what, RuntimeWarning, stacklevel=3)
    image = np.asarray(image, np.float32).reshape(op.shape)
    result.params["fallback"] = what
    result.params["flow_log_density"] = report["log_density"]
    result.image, result.std = image, None
    result.log_density = log_density(np.clip(image, 0, 1), model, device=result.device)
    return result


def _reconstruct_tiled(y, op, model, tile, overlap, t0, *, init, noise_sigma, **kwargs):
    """Solve ``op``'s image in overlapping tiles (``tiling.plan_tiles``) and blend them."""
    from . import tiling

    h, w = op.shape[-2:]
    align = tiling.alignment(op, model)
    overlap = tiling.default_overlap(tile, align) if overlap is None else int(overlap)
    tiles = tiling.plan_tiles(h, w, tile, overlap, align)
    if isinstance(noise_sigma, str):  # one estimate for the whole image, not one per tile
        noise_sigma = estimate_noise_sigma(y, op)
    start = init
    if isinstance(init, str) and init == "baseline":  # one classical start for the whole image, so
        from .baselines import warm_start               # tiles (and holes wider than one) agree

        start = warm_start(y, op, effective_sigma(y, noise_sigma, kwargs.get("photons"), op))
    if not isinstance(start, str):
        start = np.asarray(start)
        if tuple(start.shape) != tuple(op.shape):
            raise ValueError(f"init image has shape {tuple(start.shape)}, expected {tuple(op.shape)}")
    image = tiling.Blender(op.shape, overlap)
    density = tiling.Blender((h, w), overlap)
    std = tiling.Blender(op.shape, overlap)
    results = []
    # tiles inside a hole wider than a tile (no observed pixel) come last, filled from their
    # solved neighbours, the one with the most solved context first
    queue = [t for t in tiles if tiling.observes(op, t)]
    blind = [t for t in tiles if t not in queue]
    n_blind = len(blind)
    for index in range(len(tiles)):
        if queue:
            t = queue.pop(0)
            op_t, y_t = tiling.restrict(op, y, t)
        else:
            t = max(blind, key=lambda b: image.covered(b).sum())
            blind.remove(t)
            op_t, y_t = tiling.restrict_to_neighbours(image, t)
        init_t = start if isinstance(start, str) else start[..., t.r0:t.r1, t.c0:t.c1]
        gen = reconstruct_steps(y_t, op_t, model, init=init_t, noise_sigma=noise_sigma, tile=0,
                                _pixels=float(np.prod(op.shape)), **kwargs)
        results.append((yield from _part(gen, index, len(tiles))))
        image.add(t, results[-1].image)
        density.add(t, results[-1].log_density)
        if results[-1].std is not None:
            std.add(t, results[-1].std)
    first = results[0]
    params = {**first.params, "operator": op.describe(), "tile": tile, "overlap": overlap, "tiles": len(tiles),
              "tiles_inside_holes": n_blind, "init": init if isinstance(init, str) else "image"}
    return Result(image=image.result(), log_density=density.result(),
                  losses=[v for r in results for v in r.losses], n_iter=sum(r.n_iter for r in results),
                  seconds=time.time() - t0, device=first.device, method=first.method, params=params,
                  noise_sigma=first.noise_sigma, std=std.result() if first.std is not None else None)


def _reconstruct_ensemble(y, op, model, frames, t0, *, init, **kwargs):
    """The mean of one solve per symmetry frame (see ``FRAMES``), with its log-density; the
    classical warm start is computed once for all of them."""
    start = init
    if isinstance(init, str) and init == "baseline":
        from .baselines import warm_start

        start = warm_start(y, op, effective_sigma(y, kwargs["noise_sigma"], kwargs.get("photons"), op))
    results = []
    for index, frame in enumerate(frames):
        gen = reconstruct_steps(y, op, model, ensemble=1, init=start, _frame=frame, **kwargs)
        results.append((yield from _part(gen, index, len(frames))))
    image = np.mean([r.image for r in results], axis=0).astype(np.float32)
    first = results[0]
    std = None
    if first.std is not None:  # the members' samples pooled: within- plus between-member variance
        var = np.mean([r.std ** 2 + (r.image - image) ** 2 for r in results], axis=0)
        std = np.sqrt(var).astype(np.float32)
    params = {**first.params, "ensemble": len(frames), "frames": [list(f) for f in frames],
              "init": init if isinstance(init, str) else "image"}
    return Result(image=image, log_density=log_density(image, model, device=first.device),
                  losses=[v for r in results for v in r.losses], n_iter=sum(r.n_iter for r in results),
                  seconds=time.time() - t0, device=first.device, method=first.method, params=params,
                  noise_sigma=first.noise_sigma, std=std)


def _progress(steps, losses: list[float], total: int):
    """Re-yield an optimiser's or sampler's (iteration, loss) as ``Progress``, recording the losses,
    and return the generator's value."""
    while True:
        try:
            it, value = next(steps)
        except StopIteration as stop:
            return stop.value
        losses.append(value)
        yield Progress(it, total, value)


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


def _part(gen, index: int, parts: int):
    """Re-yield the progress of part ``index`` of ``parts`` (a tile, a plane) on the scale of the
    whole job and return the part's result; closing the outer generator closes this one."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(index * p.total + p.iteration, parts * p.total, p.loss)


def run_to_end(gen, callback=None):
    """Drive a progress generator to its end (``callback(progress)`` after each step) and return
    its value."""
    while True:
        try:
            progress = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(progress)


def reconstruct(y, op, model: ModelLike, *, channel_axis: int | None = None, callback=None, **kwargs) -> Result:
    """Run ``reconstruct_steps`` to the end (``callback(progress)`` after each step). ``model``
    (here and in every public function) is a ``FlowModel``, a model name or a ``.safetensors`` path.

    With ``channel_axis``, ``y`` holds several channels and a 1-channel model reconstructs each
    with the (single-channel) operator ``op``; the results are stacked on that axis.

    A dask array ``y`` (a stack of measurements: leading axes, then ``op.out_shape``) is processed
    lazily chunk by chunk (``dask.array.map_blocks``; each plane whole, large planes tiled inside
    the task by the memory budget), so it runs on any dask scheduler, a ``dask.distributed``
    cluster included: the Result's ``image`` (stack + ``op.shape``) and ``log_density`` (stack +
    (H, W)) are dask arrays, its losses are empty and ``n_iter`` is 0.
    """
    model = as_model(model)  # once, not per plane
    if _is_dask(y):
        if channel_axis is not None:
            raise ValueError("channel_axis is not supported for dask input; put channels on a stack axis")
        return _reconstruct_dask(y, op, model, **kwargs)
    if channel_axis is None:
        return run_to_end(reconstruct_steps(y, op, model, **kwargs), callback)
    return run_to_end(reconstruct_stack_steps(y, op, model, axis=channel_axis, **kwargs), callback)


def reconstruct_stack_steps(y_stack, op, model: ModelLike, *, axis: int = 0, **kwargs) -> Iterator[Progress]:
    """Plane by plane along ``axis`` (a z-stack, time series, or channels with a 1-channel model);
    yields the progress of every plane and returns a Result whose arrays are stacked on ``axis``."""
    model = as_model(model)
    y_stack = np.asarray(y_stack)
    if y_stack.ndim != len(op.out_shape) + 1:
        raise ValueError(f"a stack has one axis more than the operator's measurements {tuple(op.out_shape)}; "
                         f"got shape {y_stack.shape} (one image: use reconstruct)")
    if not -y_stack.ndim <= axis < y_stack.ndim:
        raise ValueError(f"axis {axis} is out of range for measurements of shape {y_stack.shape}")
    planes = np.moveaxis(y_stack, axis, 0)
    results = []
    for index, plane in enumerate(planes):
        results.append((yield from _part(reconstruct_steps(plane, op, model, **kwargs), index, len(planes))))
    first = results[0]
    return Result(
        image=np.moveaxis(np.stack([r.image for r in results]), 0, axis),
        log_density=np.stack([r.log_density for r in results]),
        losses=[v for r in results for v in r.losses], n_iter=sum(r.n_iter for r in results),
        seconds=sum(r.seconds for r in results), device=first.device, method=first.method,
        params={**first.params, "planes": len(results), "axis": axis}, noise_sigma=first.noise_sigma,
        std=None if first.std is None else np.moveaxis(np.stack([r.std for r in results]), 0, axis))


def reconstruct_stack(y_stack, op, model: ModelLike, *, axis: int = 0, callback=None, **kwargs) -> Result:
    """``reconstruct_stack_steps`` run to the end."""
    return run_to_end(reconstruct_stack_steps(y_stack, op, model, axis=axis, **kwargs), callback)


def log_density(image, model: ModelLike, device: str = "auto") -> np.ndarray:
    """Per-pixel log-density (H, W) in nats of an image in [0, 1] ((H, W) or (C, H, W)), summed
    over channels; its sum is log p(image).

    A dask array is a stack of such images (leading axes, then (H, W) for a 1-channel model or
    (C, H, W)): the result is a lazy dask array of the stack's (..., H, W) maps, computed chunk by
    chunk with each plane whole.
    """
    model = as_model(model)
    if _is_dask(image):
        return _log_density_dask(image, model, device)
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (C, H, W) image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite pixels")
    if model.architecture.get("kind") != "linear":
        _check_scale(image, "the image's pixels")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    with torch.no_grad():
        x = torch.as_tensor(image[None], device=dev, dtype=model.dtype)
        return model.log_density_map(x)[0, 0].cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------ dask arrays (optional dependency)
def _is_dask(array) -> bool:
    return type(array).__module__.startswith("dask.") and hasattr(array, "map_blocks")


def _reconstruct_block(block, op, model, kwargs, n_stack):
    """One dask chunk: (stack..., *op.out_shape) -> (stack..., C + 1 [+ C], H, W): image, density
    and, for the posterior, its spread."""
    import copy

    # private copies: dask's threaded scheduler runs chunks concurrently, and the operators'
    # lazily filled caches and the model's solve-time switches are not thread-safe
    op, model = copy.deepcopy(op), copy.deepcopy(model)
    h, w = op.shape[-2:]
    c = op.shape[0] if len(op.shape) == 3 else 1
    stack = block.shape[:n_stack]
    planes = np.asarray(block).reshape(-1, *op.out_shape)
    depth = 2 * c + 1 if kwargs.get("method") == "posterior" else c + 1
    out = np.empty((planes.shape[0], depth, h, w), np.float32)
    for i, plane in enumerate(planes):
        result = run_to_end(reconstruct_steps(plane, op, model, **kwargs))
        out[i, :c] = result.image.reshape(c, h, w)
        out[i, c] = result.log_density
        if result.std is not None:
            out[i, c + 1:] = result.std.reshape(c, h, w)
    return out.reshape(*stack, depth, h, w)


def _reconstruct_dask(y, op, model, **kwargs) -> Result:
    import dask.array as da
    from dask.base import tokenize

    t0 = time.time()
    out_shape = tuple(op.out_shape)
    k = y.ndim - len(out_shape)
    if k < 0 or tuple(y.shape[k:]) != out_shape:
        raise ValueError(f"dask measurements of shape {y.shape} do not end with the operator's {out_shape}")
    single = k == 0
    if single:
        y, k = y[None], 1
    y = y.rechunk({i: -1 for i in range(k, y.ndim)})  # every plane whole in one chunk
    h, w = op.shape[-2:]
    c = op.shape[0] if len(op.shape) == 3 else 1
    posterior = kwargs.get("method") == "posterior"
    chunks = (*y.chunks[:k], (2 * c + 1 if posterior else c + 1,), (h,), (w,))
    out = da.map_blocks(_reconstruct_block, y, op, model, kwargs, k, dtype=np.float32, chunks=chunks,
                        drop_axis=list(range(k, y.ndim)), new_axis=list(range(k, k + 3)),
                        name="nfp-reconstruct-" + tokenize(y.name, op.describe(), kwargs, id(model)))
    image = out[..., :c, :, :] if len(op.shape) == 3 else out[..., 0, :, :]
    density = out[..., c, :, :]
    std = None
    if posterior:
        std = out[..., c + 1:, :, :] if len(op.shape) == 3 else out[..., c + 1, :, :]
    if single:
        image, density = image[0], density[0]
        std = None if std is None else std[0]
    method = kwargs.get("method", "map")
    sigma = kwargs.get("noise_sigma", 0.01)
    params = {"method": method, "dask": True, "chunks": [list(ch) for ch in y.chunks[:k]],
              "operator": op.describe(), "model": model.metadata.get("name")}
    return Result(image=image, log_density=density, losses=[], n_iter=0, seconds=time.time() - t0,
                  device=str(resolve_device(kwargs.get("device", "auto"))), method=method, params=params,
                  noise_sigma=None if isinstance(sigma, str) else float(sigma), std=std)


def _density_block(block, model, device, n_stack):
    stack = block.shape[:n_stack]
    planes = np.asarray(block, np.float32).reshape(-1, *block.shape[n_stack:])
    out = np.stack([log_density(p, model, device=device) for p in planes])
    return out.reshape(*stack, *out.shape[-2:])


def _log_density_dask(image, model, device):
    import dask.array as da
    from dask.base import tokenize

    plane_ndim = 2 if model.channels == 1 else 3
    k = image.ndim - plane_ndim
    if k < 0:
        raise ValueError(f"expected a stack of {plane_ndim}-D images, got shape {image.shape}")
    single = k == 0
    if single:
        image, k = image[None], 1
    image = image.rechunk({i: -1 for i in range(k, image.ndim)})
    drop = [k] if plane_ndim == 3 else []
    chunks = (*image.chunks[:k], image.chunks[-2], image.chunks[-1])
    out = da.map_blocks(_density_block, image, model, device, k, dtype=np.float32, chunks=chunks,
                        drop_axis=drop, name="nfp-log-density-" + tokenize(image.name, device, id(model)))
    return out[0] if single else out
