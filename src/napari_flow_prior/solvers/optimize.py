"""The optimiser loop of the solvers: Adam or L-BFGS with step-back on non-finite values, a
stopping rule, the best point kept, and CUDA-graph replay of objective and gradient on a GPU."""

from __future__ import annotations

import math
import warnings

import torch

from .result import Cancelled


def graphed_gradient(params, objective):
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


def minimize(params, objective, *, iterations, optimizer, lr, tol, cancel, graph=False, project=None,
              lr_decay=True, lr_scales=None):
    """Generator: minimise ``objective()`` over ``params``; yields (iteration, loss).

    A non-finite loss or parameter steps back to the last good point with half the step size.
    Stops after ``iterations`` steps or when the relative change of the parameters,
    ||p_k - p_(k-1)|| / ||p_k||, stays below ``tol`` for 5 steps; then the parameters are those
    of the lowest objective evaluated, if the end point's is higher (an unstable run can climb
    away from a good point: a digit's compressed-sensing objective went from -2.8 to +16). ``graph`` (Adam on CUDA only)
    evaluates objective and gradient by replaying a CUDA graph (``graphed_gradient``).
    ``project()``, if given, runs after every step (without autograd) to restore a constraint.
    ``lr_decay``: Adam's step decays (cosine) to 5% of ``lr`` over ``iterations``; else it is constant.
    ``lr_scales`` (Adam): one factor per parameter on ``lr`` (e.g. small steps for a flow's own
    weights beside the image's).
    """
    def make():
        if optimizer == "lbfgs":
            # One iteration = up to 4 L-BFGS steps (torch's line search never moves with max_iter=1);
            # no absolute tolerances: objectives are per pixel and can be tiny; stopping is ours.
            return torch.optim.LBFGS(params, lr=lr, max_iter=4, history_size=20, line_search_fn="strong_wolfe",
                                     tolerance_grad=0.0, tolerance_change=0.0)
        if optimizer == "adam":
            if lr_scales is None:
                return torch.optim.Adam(params, lr=lr)
            return torch.optim.Adam([{"params": [p], "lr": lr * f, "scale": f} for p, f in zip(params, lr_scales)])
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

    replay = graphed_gradient(params, objective) if graph and optimizer == "adam" else None

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
                group["lr"] = group.get("scale", 1.0) * lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (it - 1) / iterations)))
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


def watched(steps, image, marks, callback):
    """Re-yield an optimiser's steps, calling ``callback(iteration, image())`` at the iterations ``marks``."""
    marks = set(marks)
    for it, value in steps:
        yield it, value
        if it in marks:
            with torch.no_grad():
                callback(it, image())
