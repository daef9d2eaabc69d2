"""Large images: a memory budget, tiles with overlap, and seamless blending.

The flow models are convolutional, so the solver runs on the whole image whenever its estimated
memory fits the budget (:func:`estimate_solve_bytes`, :func:`default_memory_budget`). Otherwise
the image is cut into overlapping tiles (:func:`plan_tiles`); each tile is solved as its own
problem with the operator restricted to it (:func:`restrict`), and the results are blended with
weights that ramp smoothly (a raised cosine) across the overlap and are 1 elsewhere, so every
output pixel is a convex combination that is dominated by the tile in whose centre it lies: the
tile borders, where a tile sees no context, get (almost) no weight, and there is no seam.

Tiles start on multiples of an alignment: ``2**levels`` (the flow's squeeze grid, so a tile sees
the same pixel blocks as the whole image) and, for a :class:`~.operators.GaussianProjection`, its
block size (its measurements belong to whole blocks); a tile size or overlap that breaks this
alignment is a ``ValueError``. A dense :class:`~.operators.Matrix` couples all pixels and cannot
be tiled.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from . import operators as ops

# bytes per pixel of image-sized state besides the flow (image, gradient, Adam moments, operator
# and data terms, density map, Python/torch slack), measured on CPU float32
_IMAGE_FLOATS = 24


def _steps_floats_per_position(kind: str, c: int, hidden: int) -> int:
    """Floats plain autograd keeps per spatial position for one flow step with c channels."""
    coupling = 2 * hidden + 2 * c  # net activations kept for backward + scale/shift terms
    if kind == "nice":
        return coupling + 2 * c
    return coupling + 4 * c  # + actnorm and 1x1 conv (or reversal) inputs


def estimate_solve_bytes(model, shape, memory_saving: bool = False, dtype_bytes: int | None = None) -> int:
    """Estimated peak memory (bytes) of one solve step (objective + gradient) on an image of
    ``shape`` ((H, W) or (C, H, W)) with ``model``, with or without memory-saving gradients.
    Conservative (calibrated with ``benchmarks/memory.py``)."""
    h, w = shape[-2:]
    arch = getattr(model, "architecture", {})
    s = dtype_bytes or (model.dtype.itemsize if hasattr(model, "dtype") else 4)
    c = int(arch.get("channels", shape[0] if len(shape) == 3 else 1))
    if arch.get("kind") == "linear":
        n = h * w * c
        return int(n * n * s * 3 + n * _IMAGE_FLOATS * s)
    kind, levels = arch.get("kind", "glow"), int(arch.get("levels", 3))
    steps, hidden = int(arch.get("steps", 8)), int(arch.get("hidden", 64))
    floats = _IMAGE_FLOATS * c * h * w
    positions = h * w
    for level in range(levels):
        positions /= 4
        c4 = 4 * c
        per_step = _steps_floats_per_position(kind, c4, hidden)
        if memory_saving:  # the chain's output, one step's graph in the backward pass, split
            floats += positions * (per_step + 8 * c4)
        else:
            floats += positions * (steps * per_step + 4 * c4)
        c = c4 - c4 // 2 if level < levels - 1 else c4
    return int(floats * s * 1.25)


def default_memory_budget(device=None) -> int:
    """Bytes a solve may use: 80% of the free memory of a CUDA device, else half of the
    available RAM (``psutil`` or ``/proc/meminfo``; 4 GiB when neither answers). The environment
    variable ``NFP_MEMORY_BUDGET`` (bytes, or with a K/M/G suffix) overrides it."""
    env = os.environ.get("NFP_MEMORY_BUDGET")
    if env:
        return parse_bytes(env)
    import torch

    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * 0.8)
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.5)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


def parse_bytes(value) -> int:
    """``1.5G`` / ``512M`` / ``100000`` -> bytes."""
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(f"cannot read a memory size from {value!r} (e.g. 4G, 512M)") from None


def alignment(op, model) -> int:
    """Tile origins must be multiples of this: the flow's squeeze grid, and a GaussianProjection's
    block."""
    levels = int(getattr(model, "architecture", {}).get("levels", 0) or 0)
    align = 2 ** levels
    if isinstance(op, ops.GaussianProjection):
        align = math.lcm(align, op.block)
    return align


@dataclass(frozen=True)
class Tile:
    """One tile: the region ``rows x cols`` (half-open) solved, within the image."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.r0, self.r1), slice(self.c0, self.c1)


def _starts(n: int, tile: int, overlap: int, align: int) -> list[int]:
    if tile >= n:
        return [0]
    stride = tile - overlap
    starts = list(range(0, n - tile, stride))
    last = ((n - tile) // align) * align  # the last tile reaches the edge (a shorter tile if needed)
    if not starts or last > starts[-1]:
        starts.append(last)
    return starts


def plan_tiles(height: int, width: int, tile: int, overlap: int, align: int = 1) -> list[Tile]:
    """Overlapping tiles covering (height, width); origins are multiples of ``align``, the last
    tile in each direction ends at the image edge (it may be larger than ``tile`` by less than
    ``align``). ValueError when ``tile`` or ``overlap`` is not a multiple of ``align`` or the
    overlap is not smaller than the tile."""
    tile, overlap = int(tile), int(overlap)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    if tile % align or overlap % align:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of {align} (the flow's "
                         "squeeze grid and the operator's blocks) so that tiles align with them")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    out = []
    rows, cols = _starts(height, tile, overlap, align), _starts(width, tile, overlap, align)
    for i, r0 in enumerate(rows):
        r1 = height if i == len(rows) - 1 else min(r0 + tile, height)
        for j, c0 in enumerate(cols):
            c1 = width if j == len(cols) - 1 else min(c0 + tile, width)
            out.append(Tile(r0, r1, c0, c1))
    return out


def _ramp(n: int, lo: int, hi: int) -> np.ndarray:
    """1-D weights over n samples: raised-cosine rise over the first ``lo``, fall over the last
    ``hi`` samples, 1 in between (a side at the image edge has lo/hi = 0)."""
    w = np.ones(n)
    for k, (length, idx) in enumerate(((lo, np.arange(lo)), (hi, np.arange(hi)))):
        if length:
            r = 0.5 - 0.5 * np.cos(np.pi * (idx + 0.5) / length)
            if k == 0:
                w[:length] = np.minimum(w[:length], r)
            else:
                w[n - length:] = np.minimum(w[n - length:], r[::-1])
    return np.maximum(w, 1e-6)


def tile_weights(t: Tile, height: int, width: int, overlap: int) -> np.ndarray:
    """Blending weights (h, w) of one tile: tapered over ``overlap`` pixels on sides that are
    inside the image, flat on sides at the image edge."""
    h, w = t.r1 - t.r0, t.c1 - t.c0
    wr = _ramp(h, overlap if t.r0 > 0 else 0, overlap if t.r1 < height else 0)
    wc = _ramp(w, overlap if t.c0 > 0 else 0, overlap if t.c1 < width else 0)
    return np.outer(wr, wc)


class Blender:
    """Accumulate weighted tiles of (..., H, W) arrays and return their normalised sum."""

    def __init__(self, shape, overlap: int):
        self.shape = tuple(shape)
        self.overlap = overlap
        self.acc = np.zeros(self.shape, np.float64)
        self.wsum = np.zeros(self.shape[-2:], np.float64)

    def add(self, t: Tile, values) -> None:
        wt = tile_weights(t, *self.shape[-2:], self.overlap)
        rs, cs = t.slices
        self.acc[..., rs, cs] += np.asarray(values, np.float64) * wt
        self.wsum[rs, cs] += wt

    def result(self) -> np.ndarray:
        return (self.acc / self.wsum).astype(np.float32)

    def covered(self, t: Tile) -> np.ndarray:
        """(h, w) bool: the pixels of ``t`` that tiles added so far reach."""
        return self.wsum[t.slices] > 0

    def partial(self, t: Tile) -> np.ndarray:
        """The blend so far inside ``t`` (0 where no tile reached)."""
        rs, cs = t.slices
        return (self.acc[..., rs, cs] / np.maximum(self.wsum[rs, cs], 1e-300)).astype(np.float32)


# ------------------------------------------------------------------ operators restricted to a tile
def _projection_offsets(op: ops.GaussianProjection) -> np.ndarray:
    """(C, n_block_rows, n_block_cols + 1)-style offsets: start of every block's measurements in y."""
    c = op.shape[0] if len(op.shape) == 3 else 1
    h, w = op.shape[-2:]
    b = op.block
    n_br, n_bc = -(-h // b), -(-w // b)
    bh = np.minimum(b, h - b * np.arange(n_br))
    bw = np.minimum(b, w - b * np.arange(n_bc))
    m_of = np.array([[op.measurements_per_block(p * q, op.ratio) for q in bw] for p in bh])
    m_of = np.broadcast_to(m_of, (c, n_br, n_bc))
    offsets = (np.cumsum(m_of.ravel()) - m_of.ravel()).reshape(c, n_br, n_bc)
    return offsets, m_of


def restrict(op, y, t: Tile, shape=None):
    """``(op_tile, y_tile)``: the operator and measurements of the sub-image ``t``.

    Mask: the mask's window. Blur: the same PSF on the window (reflect boundary at the window's
    edge: keep an overlap of at least the PSF radius so that the blending discards it).
    GaussianProjection: the same block matrices and the measurements of the blocks inside the
    window (the window must start on block boundaries and end on one or at the image edge).
    """
    rs, cs = t.slices
    shape = tuple(op.shape) if shape is None else tuple(shape)
    sub = (*shape[:-2], t.r1 - t.r0, t.c1 - t.c0)
    y = np.asarray(y)
    if isinstance(op, ops.Mask):
        observed = np.broadcast_to(op.observed_full, shape)[..., rs, cs]
        return ops.Mask(np.ascontiguousarray(observed), shape=sub), np.ascontiguousarray(y[..., rs, cs])
    if isinstance(op, ops.Blur):
        sub_op = ops.Blur(sub, psf=op.psf) if op.sigma is None else ops.Blur(sub, sigma=op.sigma)
        return sub_op, np.ascontiguousarray(y[..., rs, cs])
    if isinstance(op, ops.GaussianProjection):
        h, w = shape[-2:]
        b = op.block
        if t.r0 % b or t.c0 % b or (t.r1 % b and t.r1 != h) or (t.c1 % b and t.c1 != w):
            raise ValueError(f"tile rows {t.r0}:{t.r1}, columns {t.c0}:{t.c1} do not align with the "
                             f"GaussianProjection's {b}x{b} blocks")
        sub_op = ops.GaussianProjection(sub, ratio=op.ratio, seed=op.seed, block=b)
        sub_op._mats = {k: op._mats[k] for k in sub_op._mats}  # the very same block matrices
        sub_op._pinv_mats = None
        sub_op._cache.clear()
        offsets, m_of = _projection_offsets(op)
        rb = slice(t.r0 // b, -(-t.r1 // b))
        cb = slice(t.c0 // b, -(-t.c1 // b))
        starts, counts = offsets[:, rb, cb].ravel(), m_of[:, rb, cb].ravel()
        index = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, counts)])
        return sub_op, np.ascontiguousarray(y[index])
    raise ValueError(f"a {type(op).__name__} operator couples all pixels and cannot be tiled; "
                     "solve the whole image (tile=0) or raise memory_budget")


def observes(op, t: Tile) -> bool:
    """Whether the measurements see any pixel of ``t``: only a Mask can leave a tile blind, when
    the tile lies wholly inside a missing region."""
    if isinstance(op, ops.Mask):
        return bool(np.broadcast_to(op.observed_full, op.shape)[..., t.r0:t.r1, t.c0:t.c1].any())
    return True


def restrict_to_neighbours(blend: Blender, t: Tile):
    """``(Mask, y)`` for a tile that observes nothing (see :func:`observes`): the blended result of
    the tiles solved so far, where they overlap ``t``, serves as its measurements, so a hole larger
    than a tile is filled inwards from its edges, continuous with its neighbours. ValueError when
    no solved tile overlaps ``t``."""
    covered = blend.covered(t)
    if not covered.any():
        raise ValueError(f"tile rows {t.r0}:{t.r1}, columns {t.c0}:{t.c1} lies inside the missing region "
                         "and no solved tile overlaps it: use an overlap > 0 or a larger tile")
    sub = (*blend.shape[:-2], t.r1 - t.r0, t.c1 - t.c0)
    return ops.Mask(covered, shape=sub), np.where(covered, blend.partial(t), 0).astype(np.float32)


def tileable(model, op) -> bool:
    """Whether the image can be solved in tiles: not for a dense linear flow (one Gaussian over the
    whole image) nor for a dense matrix operator (every measurement sees every pixel)."""
    return model.architecture.get("kind") != "linear" and op.kind != "matrix"


def choose_tile(model, op, memory_budget: int, memory_saving: bool) -> int:
    """The largest aligned tile side whose solve fits the budget (at least 4 alignments)."""
    align = alignment(op, model)
    h, w = op.shape[-2:]
    c = (op.shape[0],) if len(op.shape) == 3 else ()
    side = max(h, w)
    while side > 4 * align and estimate_solve_bytes(model, (*c, side, side), memory_saving) > memory_budget:
        side = int(side * 0.75)
    return max(4 * align, (side // align) * align)


def default_overlap(tile: int, align: int) -> int:
    """A quarter of the tile, rounded up to the alignment."""
    return min(-(-max(tile // 4, 1) // align) * align, max(tile - align, 0))
