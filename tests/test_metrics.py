import numpy as np
import pytest

from napari_flow_prior.metrics import psnr, ssim


def test_psnr_known_value_and_clipping():
    ref = np.full((16, 16), 0.5)
    assert psnr(ref, ref + 0.1) == pytest.approx(20.0)
    assert psnr(ref, ref) == float("inf")
    # estimates are clipped to [0, data_range] before scoring
    over = np.full((16, 16), 1.0)
    assert psnr(over, over + 5.0) == float("inf")
    assert psnr(ref * 255, ref * 255 + 25.5, data_range=255) == pytest.approx(20.0)
    with pytest.raises(ValueError):
        psnr(ref, ref[:8])


def test_ssim_gray_and_channels():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 32, 32))
    assert ssim(ref, ref) == pytest.approx(1.0)
    noisy = np.clip(ref + 0.2 * rng.standard_normal(ref.shape), 0, 1)
    s3 = ssim(ref, noisy)
    assert 0 < s3 < 1
    assert isinstance(ssim(ref[0], noisy[0]), float)
    assert ssim(ref[:1], noisy[:1]) == pytest.approx(ssim(ref[0], noisy[0]))
