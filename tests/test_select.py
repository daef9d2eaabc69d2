"""Per-image selection by measurement splitting (solvers/select.py) and image-adaptive flows (adapt.py)."""

import numpy as np
import pytest
import torch

import napari_flow_prior as nfp
from napari_flow_prior import operators as ops
from napari_flow_prior.solvers import engine
from napari_flow_prior.solvers import select as selection


def operator(kind, shape):
    return ops.Mask.random(shape, 0.5, seed=0) if kind == "mask" else ops.Blur(shape, sigma=1.0)


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2))


@pytest.mark.parametrize("kind", ["mask", "blur"])
def test_held_out_measurements_never_reach_a_fit(model, image, kind, monkeypatch):
    """Changing only the held-out measurements changes no fit (the classical candidates for the
    start, the images at every step): only their scores move."""
    op = operator(kind, image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    held = selection.hold_out(y, op, seed=0)
    assert 0 < held.mean() < 0.5 and not (held & ~np.broadcast_to(op.observed_full, op.shape)).any() \
        if kind == "mask" else 0 < held.mean() < 0.5
    fits = []
    real = engine.reconstruct_steps

    def recorded(*args, **kwargs):
        images = []
        marks, callback = kwargs["_watch"]
        kwargs["_watch"] = (marks, lambda it, x: (images.append(x.cpu().numpy().copy()), callback(it, x)))
        fits.append((np.array(kwargs["init"]), images))
        return (yield from real(*args, **kwargs))

    real_classical, candidates = selection._kept_classical, []

    def first_classical(*args):  # every candidate recorded; the first one starts the fits
        found = list(real_classical(*args))
        candidates.append(found)
        return found[:1]

    monkeypatch.setattr(selection, "_kept_classical", first_classical)
    reports = []
    for values in (y, np.where(held, 1.0 - y, y).astype(np.float32)):
        monkeypatch.setattr(engine, "reconstruct_steps", recorded)
        result = nfp.reconstruct(values, op, model, noise_sigma=0.01, seed=0)
        reports.append(result.params["selection"])
    assert len(candidates[0]) == len(candidates[1]) > 1  # the classical methods of the start ...
    for (name_a, point_a, a), (name_b, point_b, b) in zip(*candidates):
        assert (name_a, point_a) == (name_b, point_b)
        np.testing.assert_array_equal(a, b)  # ... never see the held-out values either
    half = len(fits) // 2
    assert half == len(reports[0]["grid"]) >= 2
    for (start_a, images_a), (start_b, images_b) in zip(fits[:half], fits[half:]):
        np.testing.assert_array_equal(start_a, start_b)
        assert len(images_a) == len(images_b) > 3
        for a, b in zip(images_a, images_b):
            np.testing.assert_array_equal(a, b)
    assert reports[0]["grid"] != reports[1]["grid"]  # the scores do see the held-out values


def test_the_report_and_one_progress_scale(model, image):
    op = operator("mask", image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    seen = []
    result = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=20, tol=0, callback=seen.append)
    report = result.params["selection"]
    assert set(report) >= {"weight", "iterations", "held_out_score", "default_weight", "default_iterations", "grid"}
    assert report["default_iterations"] == 20 and 0 <= report["iterations"] <= 20
    assert abs(report["held_out"] - selection.HOLD_OUT * 0.5) < 0.1  # a share of the observed half
    steps = [p.iteration for p in seen]
    assert steps == sorted(steps) and len({p.total for p in seen}) == 1 and steps[-1] == seen[-1].total
    assert report["iterations"] == 20  # given: only the weight is chosen
    assert "prior weight" in selection.summary(report)
    chosen = min(row["scores"][-1][1] for row in report["grid"])  # the caller fixed the iterations
    assert report["held_out_score"] == chosen


def test_choice_is_off_or_skipped_where_it_does_not_apply(model, image):
    op = operator("mask", image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    off = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=10, select="off")
    assert "selection" not in off.params
    given = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=10, weight=1.0)
    assert given.params["selection"] == {"skipped": "weight and iterations given by the caller"}
    np.testing.assert_array_equal(given.image, nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=10,
                                                               weight=1.0, select="off").image)
    latent = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=5, method="latent")
    assert "keeps its settings" in latent.params["selection"]["skipped"]
    with pytest.raises(ValueError, match="select must be 'auto' or 'off'"):
        nfp.reconstruct(y, op, model, select="sometimes")


def test_a_stack_chooses_once(model, image, monkeypatch):
    op = operator("mask", image.shape)
    stack = np.stack([op.measure(image * f, noise_sigma=0.01, seed=i) for i, f in enumerate((0.8, 1.0, 0.9))])
    calls = []
    real = selection.choose

    def counted(*args, **kwargs):
        calls.append(1)
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(selection, "choose", counted)
    seen = []
    result = nfp.reconstruct(stack, op, model, noise_sigma=0.01, iterations=10, channel_axis=0,
                             callback=seen.append)
    assert len(calls) == 1 and result.image.shape == stack.shape and np.isfinite(result.image).all()
    steps = [p.iteration for p in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1].total
    alone = nfp.reconstruct(stack[0], op, model, noise_sigma=0.01, select="off",
                            weight=result.params["selection"]["weight"],
                            iterations=max(1, result.params["selection"]["iterations"]))
    if result.params["selection"]["iterations"] > 0:  # plane 0 solved with the middle plane's choice
        np.testing.assert_allclose(result.image[0], alone.image, atol=1e-6)


def test_a_prior_that_does_not_fit_the_image_does_not_lose_to_the_classical_start(image):
    """An untrained flow is no prior for smooth blobs: the selection falls back to (nearly) the
    classical start, where the fixed defaults lose."""
    untrained = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=3).eval()
    with torch.no_grad():  # a prior that prefers noise: scale the top latent's spread up
        for name, p in untrained.named_parameters():
            if name.endswith("log_scale"):
                p.fill_(-1.5)
    op = operator("mask", image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    off = nfp.reconstruct(y, op, untrained, noise_sigma=0.01, weight=1.0, iterations=100, select="off")
    auto = nfp.reconstruct(y, op, untrained, noise_sigma=0.01)
    assert auto.params["selection"]["iterations"] < 10
    from napari_flow_prior.baselines import warm_start

    start = np.clip(warm_start(y, op, 0.01), 0, 1)
    assert psnr(off.image, image) < psnr(start, image) - 0.5, "the test needs a prior that hurts"
    assert psnr(auto.image, image) >= psnr(start, image) - 0.1


def test_adapting_leaves_the_loaded_model_unchanged(model, image):
    op = operator("blur", image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=15, adapt=True, select="off")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    adapted = result.adapted_model.state_dict()
    moved = [k for k in adapted if not torch.equal(adapted[k], before[k])]
    assert moved and all(k.endswith(("loc", "log_scale")) or ".net." in k for k in moved)
    assert np.isfinite(result.image).all()
    plain = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=15, select="off")
    assert plain.adapted_model is None and np.abs(plain.image - result.image).max() > 0
    with pytest.raises(ValueError, match="adapt= does not apply to method 'latent'"):
        nfp.reconstruct(y, op, model, method="latent", adapt=True)
