"""The public entry points over ``engine.reconstruct_steps``: one image to the end, channels,
stacks plane by plane, and dask arrays chunk by chunk (lazily, on any dask scheduler)."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from ..devices import resolve_device
from ..flows import as_model
from . import select as selection
from .density import is_dask
from .engine import reconstruct_steps
from .result import Progress, Result, part, rescaled, run_to_end

PLANE_STEPS = 1000  # a stack whose planes take different numbers of steps: progress per plane on this scale


def reconstruct(y, op, model, *, channel_axis: int | None = None, callback=None, **kwargs) -> Result:
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
    if is_dask(y):
        if channel_axis is not None:
            raise ValueError("channel_axis is not supported for dask input; put channels on a stack axis")
        return _reconstruct_dask(y, op, model, **kwargs)
    if channel_axis is None:
        return run_to_end(reconstruct_steps(y, op, model, **kwargs), callback)
    return run_to_end(reconstruct_stack_steps(y, op, model, axis=channel_axis, **kwargs), callback)


def reconstruct_stack_steps(y_stack, op, model, *, axis: int = 0, **kwargs) -> Iterator[Progress]:
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
    n = len(planes)
    if not (selection.check_select(kwargs.get("select", "auto")) and n > 1
            and selection.applies(kwargs.get("method", "map"), op.kind, kwargs) is None):
        results = []
        for index, plane in enumerate(planes):
            results.append((yield from part(reconstruct_steps(plane, op, model, **kwargs), index, n)))
    else:  # the middle plane chooses the settings (engine's select), the other planes take its choice
        results = [None] * n
        order = [n // 2] + [i for i in range(n) if i != n // 2]
        for k, index in enumerate(order):
            chosen = {} if k == 0 else {"_chosen": choice_of(results[n // 2], kwargs)}
            gen = reconstruct_steps(planes[index], op, model, **kwargs, **chosen)
            results[index] = yield from rescaled(gen, k * PLANE_STEPS, PLANE_STEPS, n * PLANE_STEPS)
    first = results[0]
    return Result(
        image=np.moveaxis(np.stack([r.image for r in results]), 0, axis),
        log_density=np.stack([r.log_density for r in results]),
        losses=[v for r in results for v in r.losses], n_iter=sum(r.n_iter for r in results),
        seconds=sum(r.seconds for r in results), device=first.device, method=first.method,
        params={**first.params, "planes": len(results), "axis": axis}, noise_sigma=first.noise_sigma,
        std=None if first.std is None else np.moveaxis(np.stack([r.std for r in results]), 0, axis))


def choice_of(result: Result, kwargs: dict) -> tuple[dict, dict]:
    """The settings a plane's selection chose (those the caller left to the defaults), and its report."""
    report = result.params.get("selection", {})
    chosen = {k: report[k] for k in ("weight", "iterations", "adapt") if k in report and kwargs.get(k) is None}
    return chosen, report


def reconstruct_stack(y_stack, op, model, *, axis: int = 0, callback=None, **kwargs) -> Result:
    """``reconstruct_stack_steps`` run to the end."""
    return run_to_end(reconstruct_stack_steps(y_stack, op, model, axis=axis, **kwargs), callback)


# ------------------------------------------------------------------ dask arrays (optional dependency)
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
