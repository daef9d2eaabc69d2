"""Image quality metrics with an explicit data range (numpy in, float out).

Images are (H, W) or (C, H, W), channels first. The estimate is clipped to [0, data_range] before
comparison, so reconstructions that overshoot the valid range are scored as they would be
displayed; the reference is used as given.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["psnr", "ssim"]


def _pair(reference, estimate, data_range):
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference shape {ref.shape} != estimate shape {est.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    return ref, np.clip(np.nan_to_num(est, nan=0.0), 0.0, data_range)


def psnr(reference, estimate, data_range: float = 1.0) -> float:
    """PSNR = 10 log10(data_range^2 / mean((reference - clip(estimate))^2)) in dB; inf if equal."""
    ref, est = _pair(reference, estimate, data_range)
    mse = float(np.mean((ref - est) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(reference, estimate, data_range: float = 1.0) -> float:
    """SSIM of Wang et al. (Gaussian window sigma 1.5, population covariance), channel-averaged.

    (C, H, W) images use ``channel_axis=0``; images need H, W >= 7.
    """
    ref, est = _pair(reference, estimate, data_range)
    kwargs = dict(data_range=data_range, gaussian_weights=True, sigma=1.5,
                  use_sample_covariance=False)
    if ref.ndim == 3:
        if ref.shape[0] == 1:
            ref, est = ref[0], est[0]
        else:
            kwargs["channel_axis"] = 0
    elif ref.ndim != 2:
        raise ValueError(f"expected (H, W) or (C, H, W) images, got shape {ref.shape}")
    return float(structural_similarity(ref, est, **kwargs))
