"""Solves made of parts: an ensemble over symmetry frames, and overlapping tiles of a large image.

Each part is one call of ``solve`` (``engine.reconstruct_steps``, passed in so that this module
does not import the engine); progress is relayed on the scale of the whole job.
"""

from __future__ import annotations

import time

import numpy as np

from .. import tiling
from ..likelihood import effective_sigma, estimate_noise_sigma
from .density import log_density
from .result import Result, part


def ensemble(solve, y, op, model, frames, t0, sigma_eff, *, init, **kwargs):
    """The mean of one solve per symmetry frame (see ``frames.FRAMES``), with its log-density; the
    classical warm start is computed once for all of them."""
    start = init
    if isinstance(init, str) and init == "baseline":
        from ..baselines import warm_start

        start = warm_start(y, op, sigma_eff)
    results = []
    for index, frame in enumerate(frames):
        gen = solve(y, op, model, ensemble=1, init=start, _frame=frame, **kwargs)
        results.append((yield from part(gen, index, len(frames))))
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


def tiled(solve, y, op, model, tile, overlap, t0, *, init, noise_sigma, **kwargs):
    """Solve ``op``'s image in overlapping tiles (``tiling.plan_tiles``) and blend them."""
    h, w = op.shape[-2:]
    align = tiling.alignment(op, model)
    overlap = tiling.default_overlap(tile, align) if overlap is None else int(overlap)
    tiles = tiling.plan_tiles(h, w, tile, overlap, align)
    if isinstance(noise_sigma, str):  # one estimate for the whole image, not one per tile
        noise_sigma = estimate_noise_sigma(y, op)
    start = init
    if isinstance(init, str) and init == "baseline":  # one classical start for the whole image, so
        from ..baselines import warm_start              # tiles (and holes wider than one) agree

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
        gen = solve(y_t, op_t, model, init=init_t, noise_sigma=noise_sigma, tile=0,
                    _pixels=float(np.prod(op.shape)), **kwargs)
        results.append((yield from part(gen, index, len(tiles))))
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
