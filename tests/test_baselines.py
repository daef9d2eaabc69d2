import json

import numpy as np
import pytest
import torch

from napari_flow_prior import baselines as B
from napari_flow_prior import operators as O
from napari_flow_prior.metrics import psnr


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    # CI-sized problems: thread start-up costs more than the work (and spins on busy runners)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smooth_image(shape=(64, 64)):
    h, w = shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = 0.5 + 0.25 * np.sin(2 * np.pi * xx) * np.cos(3 * yy) + 0.1 * xx
    if len(shape) == 3:
        img = np.stack([img * (0.8 + 0.1 * c) for c in range(shape[0])])
    return img


def _op(kind, shape):
    if kind == "mask":
        return O.Mask.random(shape, missing_fraction=0.5, seed=0)
    if kind == "blur":
        return O.Blur(shape, sigma=1.5)
    if kind == "cs":
        return O.GaussianProjection(shape, ratio=0.3, seed=0, block=16)
    rng = np.random.default_rng(0)
    n = int(np.prod(shape))
    return O.Matrix(rng.standard_normal((n // 3, n)) / np.sqrt(n), shape)


def test_registry_complete():
    assert set(B.BASELINES) == {"mask", "blur", "cs", "matrix"}
    assert B.BASELINES["mask"] == ["biharmonic", "tv_inpaint"]
    assert B.BASELINES["blur"] == ["wiener", "richardson_lucy", "tv_deblur"]
    assert set(B.BASELINES["cs"]) == {"lasso_dct", "lasso_wavelet", "tv_cs", "pseudo_inverse"}
    names = {n for names in B.BASELINES.values() for n in names}
    assert names == set(B.DEFAULT_PARAMS) == set(B.PARAM_GRIDS)
    for name, grid in B.PARAM_GRIDS.items():
        for param, values in grid.items():
            assert param in B.DEFAULT_PARAMS[name] and 4 <= len(values) <= 8
    for kind, expected in [("mask", "biharmonic"), ("blur", "wiener"), ("cs", "lasso_dct")]:
        op = _op(kind, (16, 16))
        assert B.matching_baseline(op) == expected and expected in B.BASELINES[kind]
    with pytest.raises(ValueError):
        B.run_baseline("nope", np.zeros((4, 4)), _op("mask", (4, 4)))


@pytest.mark.parametrize("kind", ["mask", "blur", "cs", "matrix"])
def test_baselines_improve_on_smooth_image(kind):
    shape = (32, 32) if kind == "matrix" else (64, 64)
    x = smooth_image(shape)
    if kind == "blur":  # blur barely hurts a smooth image: add edges
        x[20:44, 16:40] += 0.2
    op = _op(kind, shape)
    y = op.measure(x, noise_sigma=0.01, seed=0)
    start = psnr(x, y) if kind in ("mask", "blur") else psnr(x, op.pseudo_inverse(y))
    margin = 1.0 if kind == "blur" else 3.0
    for name in B.BASELINES[kind]:
        out = B.run_baseline(name, y, op)
        assert out.shape == op.shape and out.dtype == np.float32
        assert np.isfinite(out).all()
        score = psnr(x, out)
        if name != "pseudo_inverse":
            assert score > start + margin, (name, score, start)
        if name == "biharmonic":
            assert score > 30


def test_channels():
    shape = (2, 40, 48)
    x = smooth_image(shape)
    for kind in ("mask", "blur", "cs"):
        op = _op(kind, shape)
        y = op.measure(x, noise_sigma=0.01, seed=1)
        out = B.run_baseline(B.matching_baseline(op), y, op)
        assert out.shape == shape and psnr(x, out) > 25
    per_channel = O.Mask(np.random.default_rng(0).random(shape) > 0.5)
    out = B.run_baseline("biharmonic", per_channel.forward(x), per_channel)
    assert psnr(x, out) > 30


@pytest.mark.parametrize("kind", ["mask", "blur", "cs", "matrix"])
def test_no_nan_on_constant_images(kind):
    shape = (24, 24)
    op = _op(kind, shape)
    for value in (0.0, 0.5, 1.0):
        y = op.forward(np.full(shape, value))
        for name in B.BASELINES[kind]:
            out = B.run_baseline(name, y, op, n_iter=20) if "n_iter" in _params(name) else \
                B.run_baseline(name, y, op)
            assert np.isfinite(out).all(), (name, value)
            if kind in ("mask", "blur"):  # (20 iterations are too few to converge for cs)
                assert np.abs(out - value).max() < 0.15, (name, value)


def _params(name):
    import inspect

    return inspect.signature(B._FUNCTIONS[name]).parameters


def test_haar_is_orthonormal_on_odd_sizes():
    rng = np.random.default_rng(0)
    for shape in [(37, 45), (2, 16, 9), (1, 1), (5, 64)]:
        x = rng.standard_normal(shape)
        c = B.haar_forward(x)
        assert np.linalg.norm(c) == pytest.approx(np.linalg.norm(x))
        np.testing.assert_allclose(B.haar_inverse(c), x, atol=1e-12)
        v = rng.standard_normal(shape)
        assert np.vdot(B.haar_forward(x), v) == pytest.approx(np.vdot(x, B.haar_inverse(v)))


def test_tune_oracle_and_params_file(tmp_path, monkeypatch):
    x = smooth_image((32, 32))
    op = _op("blur", (32, 32))
    cases = [(x, op.measure(x, 0.01, seed=s), op) for s in range(2)]
    best, scores = B.tune("wiener", cases, grid={"balance": [1e-3, 0.1]}, return_scores=True)
    assert best == max(scores, key=lambda s: s[1])[0] and len(scores) == 2
    params, est, score = B.oracle("richardson_lucy", x, cases[0][1], op,
                                  grid={"num_iter": [2, 10]})
    assert params["num_iter"] in (2, 10) and score == pytest.approx(psnr(x, est))
    assert B.tune("biharmonic", [(x, *_mask_case(x))]) == {}

    path = tmp_path / "baseline_params.json"
    monkeypatch.setattr(B, "PARAMS_FILE", path)
    y = cases[0][1]
    default = B.run_baseline("wiener", y, op, noise_sigma=0.01)
    np.testing.assert_array_equal(default, B.wiener(y, op, **B.DEFAULT_PARAMS["wiener"]))
    B.save_tuned_params({B.params_key("wiener", "blur", 0.01): {"balance": 0.3}})
    assert json.loads(path.read_text()) == {"wiener/blur/0.01": {"balance": 0.3}}
    tuned = B.wiener(y, op, balance=0.3)
    np.testing.assert_array_equal(B.run_baseline("wiener", y, op, noise_sigma=0.01), tuned)
    np.testing.assert_array_equal(B.run_baseline("wiener", y, op, noise_sigma=0.02), tuned)
    np.testing.assert_array_equal(B.run_baseline("wiener", y, op), default)
    explicit = B.run_baseline("wiener", y, op, params={}, noise_sigma=0.01)
    np.testing.assert_array_equal(explicit, default)


def _mask_case(x):
    op = O.Mask.random(x.shape, 0.5)
    return op.forward(x), op


def test_tuned_parameters_follow_the_operator_setting(tmp_path):
    from napari_flow_prior.baselines import _resolve_params
    table = {"wiener/blur/0.01": {"balance": 0.5},
             "_by_operator": {"wiener/blur/0.01/sigma=1.0": {"balance": 0.03},
                              "wiener/blur/0.01/sigma=3.0": {"balance": 0.1},
                              "wiener/blur/0.03/sigma=1.0": {"balance": 1.0}}}
    path = tmp_path / "params.json"
    path.write_text(json.dumps(table))
    sharp, wide = O.Blur((16, 16), sigma=1.2), O.Blur((16, 16), sigma=2.9)
    assert _resolve_params("wiener", "blur", 0.01, path, op=sharp) == {"balance": 0.03}
    assert _resolve_params("wiener", "blur", 0.01, path, op=wide) == {"balance": 0.1}
    assert _resolve_params("wiener", "blur", 0.03, path, op=wide) == {"balance": 1.0}
    user_psf = O.Blur((16, 16), psf=np.ones((3, 3)))
    assert _resolve_params("wiener", "blur", 0.01, path, op=user_psf) == {"balance": 0.5}


def test_pull_push_fills_holes_and_keeps_observed_pixels():
    yy, xx = np.mgrid[0:67, 0:45] / 40.0  # odd sizes
    image = (0.5 + 0.4 * np.sin(3 * yy) * np.cos(2 * xx)).astype(np.float32)
    op = O.Mask.random(image.shape, 0.8, seed=0)
    y = op.forward(image)
    filled = B.pull_push(y, op)
    assert filled.shape == image.shape and np.isfinite(filled).all()
    assert np.array_equal(filled[op.observed], y[op.observed])
    assert psnr(image, filled) > psnr(image, np.where(op.observed, y, y[op.observed].mean())) + 10
    assert psnr(image, filled) > 35


def test_warm_start_switches_to_pull_push_for_large_masks(monkeypatch):
    image = np.full((32, 32), 0.3, np.float32)
    op = O.Mask.random(image.shape, 0.5, seed=0)
    calls = []
    monkeypatch.setattr(B, "pull_push", lambda y, op: calls.append("pull_push") or y)
    monkeypatch.setattr(B, "run_baseline", lambda name, y, op, **kw: calls.append(name) or y)
    B.warm_start(op.forward(image), op, 0.01)
    monkeypatch.setattr(B, "FAST_WARM_START_PIXELS", 16 * 16)
    B.warm_start(op.forward(image), op, 0.01)
    assert calls == ["biharmonic", "pull_push"]
