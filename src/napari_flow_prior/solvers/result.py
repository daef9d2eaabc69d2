"""What a solve reports: ``Progress`` while it runs, a ``Result`` at the end, ``Cancelled`` if stopped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
    adapted_model: object | None = None  # map with adapt=True: the flow adapted to this image (save_model it)


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


def relay(steps, losses: list[float], total: int):
    """Re-yield an optimiser's or sampler's (iteration, loss) as ``Progress``, recording the losses,
    and return the generator's value."""
    while True:
        try:
            it, value = next(steps)
        except StopIteration as stop:
            return stop.value
        losses.append(value)
        yield Progress(it, total, value)


def part(gen, index: int, parts: int):
    """Re-yield the progress of part ``index`` of ``parts`` (a tile, a plane, an ensemble member) on
    the scale of the whole job and return the part's result; closing the outer generator closes
    this one."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(index * p.total + p.iteration, parts * p.total, p.loss)


def rescaled(gen, start: int, length: int, grand: int):
    """Re-yield a solve's progress mapped onto ``[start, start + length]`` of a job of ``grand``
    steps, and return its value."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(start + round(length * p.iteration / max(p.total, 1)), grand, p.loss)
