"""Per-pixel log-density maps of images under a prior, for numpy images and lazy dask stacks."""

from __future__ import annotations

import numpy as np
import torch

from ..devices import resolve_device
from ..flows import as_model
from .checks import check_scale


def is_dask(array) -> bool:
    return type(array).__module__.startswith("dask.") and hasattr(array, "map_blocks")


def log_density(image, model, device: str = "auto") -> np.ndarray:
    """Per-pixel log-density (H, W) in nats of an image in [0, 1] ((H, W) or (C, H, W)), summed
    over channels; its sum is log p(image).

    A dask array is a stack of such images (leading axes, then (H, W) for a 1-channel model or
    (C, H, W)): the result is a lazy dask array of the stack's (..., H, W) maps, computed chunk by
    chunk with each plane whole.
    """
    model = as_model(model)
    if is_dask(image):
        return _log_density_dask(image, model, device)
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (C, H, W) image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError("the image contains NaN or infinite pixels")
    if model.architecture.get("kind") != "linear":
        check_scale(image, "the image's pixels")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    with torch.no_grad():
        x = torch.as_tensor(image[None], device=dev, dtype=model.dtype)
        return model.log_density_map(x)[0, 0].cpu().numpy().astype(np.float32)


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
