"""``reconstruct_steps``: the driver of one image's reconstruction, as a generator of ``Progress``.

It reads as its steps: check the inputs, settle the settings and the noise, then either average an
ensemble of symmetry frames, solve in tiles, or solve the whole image (falling back to tiles when
memory runs out); last, the domain check. The methods' objectives live in ``map``, ``latent``,
``mle`` and ``posterior``; ensembles and tiles in ``parts``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .. import tiling
from ..devices import resolve_device
from ..flows import FlowModel, as_model
from ..flows.settings import SPACES, solver_defaults
from ..likelihood import check_photons, effective_sigma, estimate_noise_sigma
from . import latent, map, mle, parts, posterior
from . import select as selection
from .checks import check_inputs, check_posterior, check_solve_values
from .frames import Frame, symmetry_frames
from .density import log_density
from .guard import domain_guard
from .optimize import minimize, watched
from .problem import Setup, start_image
from .result import Progress, Result, relay, rescaled

NOISE_FLOOR = 1e-3  # the smallest sigma the MAP data term uses (noise-free data is still quantised)
# memory_saving="auto" switches memory-saving gradients on for images of at least this many pixels
# whose plain-autograd solve would take more than half the memory budget (see docs/scale.md)
MEMORY_SAVING_PIXELS = 256 * 256
BUILDERS = {"map": map.build, "latent": latent.build, "mle": mle.build, "posterior": posterior.build}
# the settings a caller may give, each applying to the methods whose defaults hold it
SETTING_NAMES = ("iterations", "weight", "optimizer", "lr", "lr_decay", "space", "box", "ensemble", "chains",
                 "temperature", "adapt")


def reconstruct_steps(
    y,
    op,
    model: FlowModel | str,
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
    select: bool | str = "auto",
    adapt: bool | None = None,
    _pixels: float | None = None,
    _frame: Frame | None = None,
    _keep: np.ndarray | None = None,
    _watch: tuple[int, Callable] | None = None,
    _chosen: tuple[dict, dict] | None = None,
) -> Iterator[Progress]:
    """Reconstruct one image from measurements ``y = op(x) + noise``; yields ``Progress`` after each
    optimiser step and returns a ``Result``. Closing the generator, or a ``cancel`` callable
    returning True, stops it within one evaluation of the objective (``Cancelled``).

    ``method``: "map", "latent", "mle" or "posterior" (see their modules). ``weight`` is the prior
    weight (lambda for map, gamma for latent); ``chains`` and ``temperature`` (posterior only) are
    the number of Langevin chains and the prior's temperature T, whose step factor is ``lr``;
    ``space`` ("image" or "latent", map only) is where map optimises; ``box`` (map in image space)
    keeps the iterates in [0, 1], the prior's support; ``lr_decay`` (Adam) lets the step decay to 5%
    of ``lr`` over the budget (cosine) or, False, keeps it constant; ``ensemble`` (1 to 8) averages
    that many solves, each with the prior seen in another symmetry frame (``frames.FRAMES``; the
    time grows in proportion). Settings left as None come from ``solver_defaults`` (the model's
    own, else ``flows.settings.DEFAULTS``).

    ``init`` is "baseline" (the operator's matching classical reconstruction, a warm start that
    saves iterations; pull-push instead of biharmonic for masks on planes over 512x512), "pinv"
    (the pseudo-inverse, observed mean in the holes of a mask), "zero" (z = 0 where the solve is in
    latent space, a flat 0.5 image otherwise) or an image; a latent-space solve whose start does
    not invert exactly starts from z = 0 with a warning and ``Result.params["fallback"]``.

    ``noise_sigma``: the Gaussian noise's sigma on the [0, 1] scale, or "auto" (estimated from the
    measurements). ``photons``: None for Gaussian noise; a number for photon-limited data,
    y = Poisson(photons * A x) / photons + N(0, noise_sigma^2) (``photons`` the expected count at
    intensity 1, ``noise_sigma`` the read noise), with the Poisson likelihood as data term (masks
    and blurs).

    Scale: ``memory_saving`` (True, False or "auto": on for images of ``MEMORY_SAVING_PIXELS`` or
    more whose plain solve would take over half of ``memory_budget``) recomputes the flow's
    activations by inversion in the backward pass instead of storing them. ``tile``: None solves the
    whole image when its estimated memory fits ``memory_budget`` (bytes or "4G"; default from the
    free RAM / GPU memory) and otherwise in overlapping tiles blended without seams; 0 always solves
    the whole image; an integer solves in tiles of that side with ``overlap`` (default a quarter
    tile), aligned with the flow's squeeze grid and a GaussianProjection's blocks. A failed
    allocation in an automatic whole-image solve falls back to tiles, with a warning.
    ``cuda_graph`` (True, False or "auto": on for Adam on a CUDA device) replays each objective and
    gradient evaluation as one CUDA graph.

    ``adapt`` (map): True solves with a copy of the flow whose normalisations and last couplings
    adapt to the image (``adapt.py``; ``Result.adapted_model`` holds it, the loaded model is left
    as it was); None: the model's setting, or the selection's choice.

    ``select`` ("auto" or "off"): "auto" chooses, per image, the prior weight and the iteration
    budget that the caller left to the defaults, by measurement splitting (``select``: a held-out
    share of the measurements scores a grid of weights reaching down to almost no prior), then
    refits on all measurements; the choice and its scores are ``Result.params["selection"]``
    (method map, masks and blurs; elsewhere the defaults stand, and the report says why).

    ``domain_check``: ``Result.params["domain"]`` compares the reconstruction's log-density with the
    model's validation images (``domain.domain_report``); far below them, the result is a classical
    reconstruction instead (``baselines.fallback``), with a warning and ``Result.params["fallback"]``
    (False keeps the flow's reconstruction).
    """
    t0 = time.time()
    model = as_model(model)
    y, op = check_inputs(y, op, model)
    given = dict(iterations=iterations, weight=weight, optimizer=optimizer, lr=lr, lr_decay=lr_decay, space=space,
                 box=box, ensemble=ensemble, chains=chains, temperature=temperature, adapt=adapt)
    settings = resolve_settings(method, op.kind, model, given, tol)
    photons = check_photons(photons)
    if photons is not None and op.kind not in ("mask", "blur"):
        raise ValueError(f"photons= (Poisson noise) needs nonnegative measurements, from a mask or a blur; "
                         f"{op.kind!r} measurements are not photon counts: give noise_sigma only")
    noise_sigma = resolve_noise(noise_sigma, y, op, photons)
    sigma_eff = effective_sigma(y, noise_sigma, photons, op)  # where one sigma stands for the noise
    report, scale, start_name = None, None, None
    if _frame is None and _keep is None and selection.check_select(select):  # once per image, not per part
        options = dict(method=method, init=init, tol=tol, device=device, cancel=cancel, cuda_graph=cuda_graph,
                       memory_saving=memory_saving)
        report, scale = yield from choose_settings(y, op, model, settings, given, noise_sigma, photons, seed,
                                                   sigma_eff, options, _chosen)
        if report.get("classical"):  # a classical method, tuned on the held-out split, beat every solve
            init, start_name = selection.classical_image(y, op, report, sigma_eff), report["classical"]["classical"]
        if report.get("iterations") == 0:  # the classical start beat every prior-weighted step
            result = classical_start(y, op, model, method, init, sigma_eff, noise_sigma, device, t0, start_name)
            result.params["selection"] = report
            return result
    solve = solve_parts(y, op, model, method, settings, given, noise_sigma=noise_sigma, photons=photons,
                        sigma_eff=sigma_eff, init=init, tol=tol, device=device, seed=seed, cancel=cancel,
                        cuda_graph=cuda_graph, memory_saving=memory_saving, tile=tile, overlap=overlap,
                        memory_budget=memory_budget, t0=t0, pixels=_pixels, frame=_frame, keep=_keep, watch=_watch)
    result = yield from (rescaled(solve, *scale) if scale else solve)
    result = domain_guard(result, y, op, model, sigma_eff, domain_check and _frame is None)
    if report is not None:
        result.params["selection"] = report
    return result


def choose_settings(y, op, model, settings, given, noise_sigma, photons, seed, sigma_eff, options, chosen=None):
    """Generator: the per-image selection (``select.choose``) where it applies, its overrides
    written into ``settings`` and ``given``; returns (report, progress scale of the refit or None).
    ``chosen``: another plane's (overrides, report), taken as they are."""
    why_not = selection.applies(options["method"], op.kind, given)
    if why_not:
        return {"skipped": why_not}, None
    # one progress scale for the job: the selection's fits, then the refit (its default length)
    fits = 0 if chosen else selection.planned_steps(op, model, settings, given)
    refit = int(settings["iterations"]) * int(settings["ensemble"])
    passed = {k: v for k, v in given.items() if k not in ("weight", "iterations", "ensemble")}
    overrides, report = chosen or (yield from rescaled(
        selection.choose(reconstruct_steps, y, op, model, settings, given, noise_sigma, photons, seed, sigma_eff,
                         **options, **passed), 0, fits, fits + refit))
    given.update(overrides)
    settings.update(overrides)
    return report, (fits, refit, fits + refit)


def solve_parts(y, op, model, method, settings, given, *, noise_sigma, photons, sigma_eff, init, tol, device, seed,
                cancel, cuda_graph, memory_saving, tile, overlap, memory_budget, t0, pixels, frame, keep, watch):
    """Generator: the solve with its settings, as an ensemble over symmetry frames, as tiles, or the
    whole image at once (tiles after an out-of-memory error); returns the ``Result``."""
    # the caller's arguments, passed on to the parts (ensemble members, tiles) of this solve
    passed = dict(method=method, noise_sigma=noise_sigma, photons=photons, init=init, tol=tol, device=device,
                  seed=seed, cancel=cancel, cuda_graph=cuda_graph, select="off",
                  **{k: v for k, v in given.items() if k != "ensemble"})
    frames = symmetry_frames(model, settings["ensemble"]) if frame is None else (frame,)
    if len(frames) > 1:  # each member decides its own memory saving and tiles
        member = dict(passed, memory_saving=memory_saving, tile=tile, overlap=overlap,
                      memory_budget=memory_budget, _pixels=pixels)
        return (yield from parts.ensemble(reconstruct_steps, y, op, model, frames, t0, sigma_eff, **member))
    plan = plan_solve(model, op, method, settings, device, memory_saving, tile, memory_budget, cuda_graph)
    part_kwargs = dict(passed, memory_saving=plan.memory_saving, _frame=frames[0])
    if plan.tile:
        return (yield from parts.tiled(reconstruct_steps, y, op, model, plan.tile, overlap, t0, **part_kwargs))
    failed = False
    try:
        return (yield from solve_whole(y, op, model, method, settings, plan, frames[0], init=init,
                                       noise_sigma=noise_sigma, photons=photons, sigma_eff=sigma_eff, tol=tol,
                                       seed=seed, cancel=cancel, n_pixels=pixels, t0=t0, keep=keep, watch=watch))
    except RuntimeError as error:  # torch.OutOfMemoryError is one
        if not (out_of_memory(error) and tile is None and tiling.tileable(model, op)):
            raise
        failed = True  # handled below, once the failed solve's tensors are released with `error`
    if failed:
        small = fallback_tile(model, op, plan.device)
        return (yield from parts.tiled(reconstruct_steps, y, op, model, small, overlap, t0,
                                       **{**part_kwargs, "memory_saving": True}))


def resolve_settings(method: str, kind: str, model: FlowModel, given: dict, tol: float) -> dict:
    """The method's settings: the model's defaults for (method, operator kind), updated by the
    settings the caller gave (not None); ValueError for one that does not apply or is invalid."""
    settings = solver_defaults(method, kind, model)
    if given.get("space") is not None and method != "map":
        raise ValueError(f"space= applies to method 'map' only, not {method!r}")
    for key, value in given.items():
        if value is None:
            continue
        if key in ("weight", "optimizer", "lr_decay", "chains", "temperature", "adapt") and key not in settings:
            raise ValueError(f"{key}= does not apply to method {method!r}")
        settings[key] = value
    check_solve_values(settings["iterations"], settings.get("weight"), settings["lr"], tol)
    if not isinstance(settings.get("lr_decay", True), (bool, np.bool_)):
        raise ValueError(f"lr_decay must be True or False, got {settings['lr_decay']!r}")
    if method == "posterior":
        check_posterior(settings["chains"], settings["temperature"], settings["lr"])
    if method == "map" and settings["space"] not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {settings['space']!r}")
    return settings


def resolve_noise(noise_sigma, y, op, photons: float | None) -> float:
    """The Gaussian (read) noise sigma: the number given, or estimated from ``y`` ("auto"; with
    photons, the estimate less the Poisson noise's share)."""
    if isinstance(noise_sigma, str):
        if noise_sigma != "auto":
            raise ValueError(f"noise_sigma must be a number or 'auto', got {noise_sigma!r}")
        noise_sigma = estimate_noise_sigma(y, op)
        if photons is not None:  # the estimate holds both noises: keep the read noise's share
            noise_sigma = math.sqrt(max(noise_sigma ** 2 - effective_sigma(y, 0.0, photons, op) ** 2, 0.0))
    noise_sigma = float(noise_sigma)
    if not 0 <= noise_sigma < math.inf:
        raise ValueError(f"noise_sigma must be a finite number >= 0, got {noise_sigma}")
    return noise_sigma


@dataclass
class Plan:
    """Where and how one frame's solve runs: device, memory-saving gradients, tile side (0: the
    whole image) and CUDA-graph replay."""

    device: torch.device
    memory_saving: bool
    tile: int
    cuda_graph: bool


def plan_solve(model, op, method, settings, device, memory_saving, tile, memory_budget, cuda_graph) -> Plan:
    """Decide device, memory saving, tiles and CUDA graphs from the image's estimated memory and the
    budget (see ``tiling``)."""
    dev = resolve_device(device)
    h, w = op.shape[-2:]
    budget = tiling.parse_bytes(memory_budget) if memory_budget is not None else tiling.default_memory_budget(dev)
    if memory_saving == "auto":  # pays when plain autograd would take a good part of the budget
        memory_saving = h * w >= MEMORY_SAVING_PIXELS and tiling.estimate_solve_bytes(model, op.shape, False) > budget / 2
    memory_saving = bool(memory_saving)
    if tile is None:
        need = tiling.estimate_solve_bytes(model, op.shape, memory_saving)
        share = 1
        if method == "map" and settings["space"] == "latent":  # the decoder's graph is kept as well
            need += tiling.estimate_solve_bytes(model, op.shape, False)
            share = 2
        elif method == "posterior":  # the chains are one batch, each with its decoder graph
            share = int(settings["chains"])
            need *= share
        fits = need <= budget or not tiling.tileable(model, op)
        tile = 0 if fits else tiling.choose_tile(model, op, budget // share, memory_saving)
    if cuda_graph not in (True, False, "auto"):
        raise ValueError(f"cuda_graph must be True, False or 'auto', got {cuda_graph!r}")
    if cuda_graph is True and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device; this solve runs on {dev}")
    graph = dev.type == "cuda" and settings.get("optimizer") == "adam" and cuda_graph is not False
    return Plan(dev, memory_saving, int(tile), graph)


def solve_whole(y, op, model, method, settings, plan: Plan, frame: Frame, *, init, noise_sigma, photons, sigma_eff,
                tol, seed, cancel, n_pixels, t0, keep=None, watch=None):
    """Solve the whole image in one ``frame``: build the method's problem, run its optimiser (or
    sampler) with progress, and return the ``Result`` (image, log-density, provenance). ``keep``
    (boolean, ``op.out_shape``): only these measurements enter the data term; ``watch`` = (marks,
    callback): ``callback(iteration, image)`` at those optimiser steps."""
    dev = plan.device
    torch.manual_seed(seed)
    model = model.to(dev).eval()
    # channels-last convolutions: one forward+backward of the nuclei prior at 256x256 on 2 CPU
    # threads takes 0.135 s instead of 0.178 s (same values); the image follows below
    layout = torch.channels_last if dev.type == "cpu" else torch.contiguous_format
    model = model.to(memory_format=layout)
    for p in model.parameters():
        p.requires_grad_(False)
    shape = tuple(op.shape)
    x0 = start_image(init, y, op, sigma_eff, dev, model.dtype)
    x0 = x0.reshape(1, model.channels, *shape[-2:]).contiguous(memory_format=layout)
    setup = Setup(model=model, op=op, y=torch.as_tensor(y, device=dev, dtype=model.dtype), x0=x0, frame=frame,
                  n_pixels=float(np.prod(shape)) if n_pixels is None else float(n_pixels),
                  sigma=noise_sigma if photons is not None else max(noise_sigma, NOISE_FLOOR),
                  sigma_data=max(sigma_eff, NOISE_FLOOR), photons=photons, settings=settings,
                  start_at_zero=isinstance(init, str) and init == "zero", seed=seed, cancel=cancel,
                  keep=None if keep is None else torch.as_tensor(np.asarray(keep), device=dev))
    if method == "mle":  # its own exact solver (closed form or projected L-BFGS) and Result: see mle.solve
        return (yield from mle.solve(setup, plan, frame, init=init, noise_sigma=noise_sigma, tol=tol, t0=t0))
    problem = BUILDERS[method](setup)
    losses: list[float] = []
    total = int(settings["iterations"])
    with contextlib.ExitStack() as stack:
        stack.enter_context(model.memory_saving_mode(plan.memory_saving))
        stack.enter_context(model.cached_constants())
        if problem.sample is not None:
            mean, std, info = yield from relay(problem.sample(total), losses, total)
            x, std = mean.to(model.dtype).reshape(x0.shape), std.to(model.dtype).reshape(x0.shape)
            settings.update(info)  # the sampler's acceptance rate and adapted steps
        else:
            steps = minimize(problem.params, problem.objective, iterations=total, optimizer=settings["optimizer"],
                             lr=float(settings["lr"]), tol=tol, cancel=cancel, graph=plan.cuda_graph,
                             project=problem.project, lr_decay=bool(settings["lr_decay"]),
                             lr_scales=problem.lr_scales)
            if watch is not None:
                steps = watched(steps, problem.image, *watch)
            yield from relay(steps, losses, total)
            with torch.no_grad():
                x, std = problem.image(), None
        if not torch.isfinite(x).all():  # the optimiser steps back from non-finite points; never return NaN
            x = torch.nan_to_num(x, nan=0.5, posinf=1.0, neginf=0.0)
        with torch.no_grad():
            density = model.log_density_map(x)[0, 0]
    params = {"method": method, **settings, "noise_sigma": noise_sigma, "photons": photons,
              "init": init if isinstance(init, str) else "image", "tol": tol, "seed": seed,
              "operator": op.describe(), "model": model.metadata.get("name"),
              "model_sha256": model.metadata.get("sha256"), "memory_saving": plan.memory_saving, "tile": 0,
              "cuda_graph": plan.cuda_graph, "frames": [list(frame)]}
    return Result(image=x.reshape(shape).detach().cpu().numpy().astype(np.float32),
                  log_density=density.cpu().numpy().astype(np.float32), losses=losses, n_iter=len(losses),
                  seconds=time.time() - t0, device=str(dev), method=method, params=params, noise_sigma=noise_sigma,
                  std=None if std is None else std.reshape(shape).cpu().numpy().astype(np.float32),
                  adapted_model=setup.adapted)


def classical_start(y, op, model, method, init, sigma_eff, noise_sigma, device, t0, name=None) -> Result:
    """The solve's start as the result (selection found no prior-weighted step that helps): the
    classical reconstruction ``name`` made (the matching one for "baseline"), or the caller's image."""
    from ..baselines import warm_start_name

    dev = resolve_device(device)
    image = start_image(init, y, op, sigma_eff, torch.device("cpu"), torch.float32).numpy()
    name = name or (warm_start_name(op) if isinstance(init, str) else "image")
    params = {"method": method, "classical_start": name,
              "noise_sigma": noise_sigma, "operator": op.describe(), "model": model.metadata.get("name"),
              "model_sha256": model.metadata.get("sha256"), "iterations": 0}
    return Result(image=image.astype(np.float32), log_density=log_density(image, model, device=str(dev)), losses=[],
                  n_iter=0, seconds=time.time() - t0, device=str(dev), method=method, params=params,
                  noise_sigma=noise_sigma)


def out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA raises ``torch.OutOfMemoryError``; the CPU allocator a plain RuntimeError."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def fallback_tile(model, op, dev) -> int:
    """After a failed whole-image allocation: tiles of at most half its estimate (so within the
    caller's budget, which the whole image's estimate fitted), with a warning."""
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    small = tiling.choose_tile(model, op, tiling.estimate_solve_bytes(model, op.shape, True) // 2, True)
    h, w = op.shape[-2:]
    warnings.warn(f"out of memory on {dev} for the whole {h}x{w} image: solving in {small}x{small} tiles instead",
                  RuntimeWarning, stacklevel=3)
    return small
