"""Reading images from disk: TIFF, PNG, JPEG and NumPy files, and folders of them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".npz")


def image_files(paths) -> list[Path]:
    """Expand files and folders (one level, sorted) into the image files they hold."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"no such file or folder: {entry}")
    return found


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The array stored in one image file (no conversion); ValueError if it cannot be read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"unsupported file type {suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        elif suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                key = "images" if "images" in data.files else data.files[0]
                array = data[key]
        elif suffix in (".png", ".jpg", ".jpeg"):
            from PIL import Image

            with Image.open(path) as img:
                if img.mode in ("P", "LA", "PA", "I;16B"):
                    img = img.convert("RGBA" if "A" in img.mode else "L")
                array = np.asarray(img)
    except Exception as err:  # every reader has its own exception types (tifffile's is a ValueError)
        raise ValueError(f"cannot read image {path}: {err}") from None
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.number)) or array.ndim < 2:
        raise ValueError(f"{path} does not hold an image (dtype {array.dtype}, shape {array.shape})")
    return array


def as_planes(array: np.ndarray, channel_axis: int | None = None, name: str = "image") -> list[np.ndarray]:
    """Split an array into (C, H, W) planes: the last two axes (other than the channel axis) are
    spatial, every other axis is a stack. RGB(A) arrays of shape (H, W, 3|4) are read as channels
    when no channel axis is given."""
    array = np.asarray(array)
    if channel_axis is None and array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        channel_axis = -1
    if channel_axis is not None:
        array = np.moveaxis(array, channel_axis, 0)
        if array.ndim < 3:
            raise ValueError(f"{name}: a channel axis needs at least 3 dimensions, got shape {array.shape}")
        c = array.shape[0]
        array = np.moveaxis(array, 0, -3)  # (..., C, H, W)
        return [plane for plane in array.reshape(-1, c, *array.shape[-2:])]
    return [plane[None] for plane in array.reshape(-1, *array.shape[-2:])]
