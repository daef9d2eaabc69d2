"""How a layer's array maps to model inputs: stack axes, RGB or grayscale, channel by channel.

A 2-D layer is one plane; every axis before the last two of a grayscale layer is a stack axis (z,
time, channels split by napari) and runs plane by plane; an RGB(A) layer (``rgb=True``, shape
``(..., H, W, 3|4)``) runs with a 3-channel model at once or with a 1-channel model channel by
channel (alpha is dropped). Layer data is only ever read (``canonical`` copies it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..solvers.checks import MIN_SIDE, check_min_size  # noqa: F401  (MIN_SIDE: re-exported; one minimum, one message)


@dataclass
class _Layout:
    """How a layer's array maps to model inputs: ``lead`` stack axes, ``c_in`` image channels
    (1 grayscale, 3 RGB), and whether a 1-channel model runs channel by channel."""

    lead: tuple[int, ...]
    hw: tuple[int, int]
    c_in: int
    rgb: bool
    split: bool

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.lead, dtype=np.int64)) if self.lead else 1

    def jobs(self) -> list[tuple[int, int | None]]:
        """(plane, channel) pairs; channel None means all channels at once."""
        if self.split:
            return [(n, c) for n in range(self.n_planes) for c in range(self.c_in)]
        return [(n, None) for n in range(self.n_planes)]

    def canonical(self, data) -> np.ndarray:
        """(N, C_in, H, W) float32 view of the layer data (a copy: the layer is never touched)."""
        array = np.asarray(data)
        if self.rgb:
            array = np.moveaxis(array[..., :3], -1, -3)
        return np.array(array, dtype=np.float32).reshape(self.n_planes, self.c_in, *self.hw)

    def restore_shape(self, stack: np.ndarray) -> np.ndarray:
        """(N, C_in, H, W) -> the layer's layout (RGB channels last)."""
        out = stack.reshape(*self.lead, self.c_in, *self.hw)
        if self.rgb:
            return np.moveaxis(out, -3, -1)
        return out.reshape(*self.lead, *self.hw)


def layout_for(shape, rgb: bool, model_channels: int, name: str = "the layer", min_side: bool = True) -> _Layout:
    """Check that a layer of ``shape`` fits a model of ``model_channels`` channels (and, with
    ``min_side``, the flows' minimum image size: the library's own check and message)."""
    shape = tuple(int(s) for s in shape)
    if rgb:
        if len(shape) < 3 or shape[-1] not in (3, 4):
            raise ValueError(f"{name}: an RGB layer needs a last axis of 3 or 4, got shape {shape}")
        hw, lead, c_in = shape[-3:-1], shape[:-3], 3
        if model_channels == 3:
            split = False
        elif model_channels == 1:
            split = True
        else:
            raise ValueError(f"{name} is RGB but the model has {model_channels} channels; "
                             "use a 1-channel or an RGB (3-channel) model")
    else:
        if len(shape) < 2:
            raise ValueError(f"{name} must have at least 2 dimensions, got shape {shape}")
        if model_channels != 1:
            raise ValueError(f"channel mismatch: the model has {model_channels} channels but {name} is "
                             "a single-channel (grayscale) layer; choose a 1-channel model, or open "
                             "the data as an RGB layer")
        hw, lead, c_in, split = shape[-2:], shape[:-2], 1, False
    if min_side:
        check_min_size(hw, name)
    return _Layout(lead, (hw[0], hw[1]), c_in, rgb, split)



def plane_text(layout: _Layout, n: int, c: int | None) -> str:
    text = f"plane {n + 1}/{layout.n_planes}" if layout.n_planes > 1 else ""
    if c is not None:
        text = (text + " " if text else "") + f"channel {'RGB'[c]}"
    return text



def as_missing(missing, layout: _Layout) -> np.ndarray | None:
    """(N, H, W) or (H, W) bool, True = missing."""
    if missing is None:
        return None
    missing = np.asarray(missing)
    if missing.dtype != bool:
        missing = missing != 0
    if missing.shape == layout.hw:
        return missing
    if missing.shape == tuple(layout.lead) + layout.hw:
        return missing.reshape(layout.n_planes, *layout.hw)
    raise ValueError(f"the mask layer has shape {missing.shape}, but the image needs {layout.hw} "
                     f"(one mask for every plane){' or ' + str(tuple(layout.lead) + layout.hw) if layout.lead else ''}")


def nonfinite_missing(data, layout: _Layout) -> np.ndarray:
    """(N, H, W) bool: pixels that are NaN or infinite in any channel (measured data's holes)."""
    return ~np.isfinite(layout.canonical(data)).all(axis=1)
