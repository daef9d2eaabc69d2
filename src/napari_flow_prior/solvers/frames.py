"""Symmetry frames: an image turned and mirrored, so an ensemble sees it through the prior many ways.

A prior trained with flips and 90-degree rotations rates an image and its rotations alike only on
average: each frame puts the image's pixels at other positions of the flow's squeeze grid and
coupling masks, so the MAP estimates of the frames differ in their errors, and their mean has
fewer of them (medical prior, 8 frames, validation: +0.75 dB for inpainting, +0.71 dB for
deblurring; docs/evidence.md section 10).
"""

from __future__ import annotations

import torch

from .checks import MAX_ENSEMBLE, check_ensemble

# (quarter turns, mirrored): the identity first, then the half turn and the two mirrors, then the
# quarter turns and the two transposes
FRAMES = ((0, False), (2, False), (0, True), (2, True), (1, False), (3, False), (1, True), (3, True))
Frame = tuple[int, bool]
assert len(FRAMES) == MAX_ENSEMBLE


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


def symmetry_frames(model, count: int) -> tuple[Frame, ...]:
    """The first ``count`` of ``FRAMES`` for an ensemble with ``model``; a ValueError when the model
    was trained without flips and rotations (its metadata says so) and ``count`` > 1: then the
    other frames show it images unlike its training data (a digit upside down)."""
    check_ensemble(count)
    augmented = ((model.metadata.get("training") or {}).get("config") or {}).get("augment", True)
    if count > 1 and not augmented:
        raise ValueError(f"ensemble={count}: the model {model.metadata.get('name')!r} was trained without "
                         "flips and rotations, so it has no symmetry frames to average over; use ensemble=1")
    return FRAMES[:count]
