"""The reconstruction engine on tiny models and images (CI-sized)."""

import copy

import numpy as np
import pytest
import torch

import napari_flow_prior as nfp
from napari_flow_prior import operators as ops


def misfit(op, x, y):
    return float(np.sum((op.forward(np.asarray(x, np.float32)) - y) ** 2))


OPERATORS = {
    "mask": lambda shape: ops.Mask.random(shape, missing_fraction=0.6, seed=1),
    "blur": lambda shape: ops.Blur(shape, sigma=1.0),
    "cs": lambda shape: ops.GaussianProjection(shape, ratio=0.4, seed=1, block=8),
}


@pytest.mark.parametrize("method", ["map", "latent", "mle", "posterior"])
@pytest.mark.parametrize("kind", OPERATORS)
def test_methods_lower_the_data_misfit(model, image, kind, method):
    op = OPERATORS[kind](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    if method == "mle" and kind == "blur":
        with pytest.raises(ValueError, match="map"):
            nfp.reconstruct(y, op, model, method=method)
        return
    start = np.full(image.shape, 0.5, np.float32)
    result = nfp.reconstruct(y, op, model, method=method, noise_sigma=0.01, iterations=25)
    assert result.image.shape == image.shape and result.image.dtype == np.float32
    assert np.isfinite(result.image).all()
    assert misfit(op, result.image, y) < misfit(op, start, y)
    assert result.log_density.shape == image.shape
    assert result.n_iter == len(result.losses) and 0 < result.n_iter <= 25
    assert result.method == method and result.device == "cpu"


def test_mle_keeps_observed_pixels_exactly(model, image):
    op = ops.Mask.random(image.shape, missing_fraction=0.5, seed=2)
    y = op.measure(image, noise_sigma=0.0)
    y_dead = y.copy()
    y_dead[~op.observed] = 123.0  # values at unobserved pixels must be ignored
    result = nfp.reconstruct(y_dead, op, model, method="mle", iterations=20)
    assert np.array_equal(result.image[op.observed], image[op.observed])
    assert not np.allclose(result.image[~op.observed], 123.0)


def test_mle_stays_on_the_measurement_constraint(model, image):
    op = ops.GaussianProjection(image.shape, ratio=0.3, seed=0, block=8)
    y = op.forward(image)
    result = nfp.reconstruct(y, op, model, method="mle", iterations=20)
    assert np.abs(op.forward(result.image) - y).max() < 1e-3


def test_deterministic_with_seed(model, image):
    op = ops.Blur(image.shape, sigma=1.5)
    y = op.measure(image, noise_sigma=0.02, seed=3)
    a = nfp.reconstruct(y, op, model, iterations=10, seed=4)
    b = nfp.reconstruct(y, op, model, iterations=10, seed=4)
    assert np.array_equal(a.image, b.image)


def test_progress_generator_and_callback(model, image):
    op = ops.Mask.random(image.shape, 0.5, seed=0)
    y = op.measure(image, 0.01, seed=0)
    seen = []
    result = nfp.reconstruct(y, op, model, iterations=6, tol=0, callback=seen.append, select="off")
    assert [p.iteration for p in seen] == list(range(1, 7)) and all(p.total == 6 for p in seen)
    assert result.losses == [p.loss for p in seen]


def test_cancel_inside_the_objective_and_by_closing(model, image):
    op = ops.Blur(image.shape, sigma=1.0)
    y = op.measure(image, 0.01, seed=0)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(nfp.Cancelled):
        nfp.reconstruct(y, op, model, iterations=100, cancel=cancel)
    assert calls["n"] == 4  # stopped at the first evaluation after the request

    gen = nfp.reconstruct_steps(y, op, model, iterations=100, tol=0)
    next(gen)
    next(gen)
    gen.close()  # a GUI's cancel: the generator ends, nothing else runs
    with pytest.raises(StopIteration):
        next(gen)


def test_recovers_from_non_finite_values(model, image):
    op = ops.Blur(image.shape, sigma=1.0)
    y = op.measure(image, 0.01, seed=0)

    class Flaky(torch.nn.Module):
        """Delegates to the model but returns NaN on its 3rd to 5th evaluations."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.inner, name)

        def log_prob(self, x):
            self.calls += 1
            out = self.inner.log_prob(x)
            return out * float("nan") if 3 <= self.calls <= 5 else out

    result = nfp.reconstruct(y, op, Flaky(model), iterations=15)
    assert np.isfinite(result.image).all() and np.isfinite(result.losses).all()


def test_constant_images_never_give_nan(model):
    for value in (0.0, 0.5, 1.0):
        x = np.full((16, 16), value, np.float32)
        for op in (ops.Mask.random(x.shape, 0.8, seed=0), ops.Blur(x.shape, sigma=2.0),
                   ops.GaussianProjection(x.shape, ratio=0.2, seed=0, block=8)):
            for method in ("map", "latent"):
                r = nfp.reconstruct(op.measure(x, 0.01, seed=0), op, model, method=method, iterations=8)
                assert np.isfinite(r.image).all() and np.isfinite(r.log_density).all()


def test_bad_inputs_give_clear_errors(model, image):
    op = ops.Mask.random(image.shape, 0.5, seed=0)
    with pytest.raises(ValueError, match="shape"):
        nfp.reconstruct(np.zeros((16, 15), np.float32), op, model)
    with pytest.raises(ValueError, match="channel"):
        op3 = ops.Mask.random((3, 16, 16), 0.5, seed=0)
        nfp.reconstruct(np.zeros((3, 16, 16), np.float32), op3, model)
    with pytest.raises(ValueError, match="no observed pixel"):
        ops.Mask(np.zeros(image.shape, bool))
    with pytest.raises(ValueError, match="ratio"):
        ops.GaussianProjection(image.shape, ratio=1.5)
    with pytest.raises(ValueError, match="method"):
        nfp.reconstruct(op.forward(image), op, model, method="magic")
    blur = ops.Blur(image.shape, sigma=1.0)
    y = blur.forward(image)
    y[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nfp.reconstruct(y, blur, model)
    with pytest.raises(ValueError, match="device"):
        nfp.reconstruct(blur.forward(image), blur, model, device="tpu")
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        nfp.reconstruct(blur.forward(image), blur, model, device="cpu", cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph must be"):
        nfp.reconstruct(blur.forward(image), blur, model, cuda_graph="yes")
    with pytest.raises(ValueError, match="one axis more"):
        nfp.reconstruct_stack(op.forward(image), op, model, iterations=2)
    with pytest.raises(ValueError, match="axis 5 is out of range"):
        nfp.reconstruct_stack(np.stack([op.forward(image)] * 2), op, model, axis=5, iterations=2)
    with pytest.raises(ValueError, match="axis 7 is out of range"):
        nfp.reconstruct(np.stack([op.forward(image)] * 2, -1), op, model, channel_axis=7, iterations=2)
    with pytest.raises(ValueError, match=r"observed has shape \(3, 3\)"):
        nfp.normalize(image, observed=np.ones((3, 3), bool))
    for bad, match in ((dict(iterations=0), "iterations must be a positive integer"),
                       (dict(iterations=2.5), "iterations must be a positive integer"),
                       (dict(weight=-1.0), "weight .* >= 0"), (dict(weight=float("inf")), "weight"),
                       (dict(lr=float("nan")), "lr must be a finite number > 0"), (dict(lr=0.0), "lr"),
                       (dict(tol=-1.0), "tol"), (dict(noise_sigma=float("inf")), "noise_sigma must be a finite"),
                       (dict(init=np.full(image.shape, np.nan)), "init image has NaN")):
        with pytest.raises(ValueError, match=match):
            nfp.reconstruct(blur.forward(image), blur, model, **bad)


def test_images_outside_the_unit_range_are_refused(model, image):
    raw = (image * 255).astype(np.uint8)  # 8-bit data passed without normalize
    for op in (ops.Mask.random(image.shape, 0.5, seed=0), ops.Blur(image.shape, sigma=1.0),
               ops.GaussianProjection(image.shape, ratio=0.5, seed=0, block=8)):
        y = op.forward(raw.astype(np.float32))
        with pytest.raises(ValueError, match=r"scaled to \[0, 1\].*nfp.normalize"):
            nfp.reconstruct(y, op, model, iterations=2)
        scaled, scaling = nfp.normalize(raw, model=model)
        result = nfp.reconstruct(op.forward(scaled), op, model, iterations=2)
        assert np.isfinite(scaling.restore(result.image)).all()
    with pytest.raises(ValueError, match="image's pixels"):
        nfp.log_density(raw, model)
    noisy = image + np.random.default_rng(0).normal(0, 0.1, image.shape).astype(np.float32)
    assert np.isfinite(nfp.log_density(noisy, model)).all()  # noise and over/undershoot are fine


def test_nan_pixels_are_missing_for_a_mask(model, image):
    op = ops.Mask.random(image.shape, 0.3, seed=0)
    y = op.forward(image)
    y[5, 5] = np.nan
    original = y.copy()
    result = nfp.reconstruct(y, op, model, method="mle", iterations=10)
    assert np.isfinite(result.image).all()
    observed = op.observed.copy()
    observed[5, 5] = False
    assert np.array_equal(result.image[observed], image[observed])
    assert np.array_equal(np.isnan(y), np.isnan(original)) and np.array_equal(y[observed], original[observed])


def test_stacks_and_channels(model, image):
    op = ops.Blur(image.shape, sigma=1.0)
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    y = np.stack([op.measure(p, 0.01, seed=i) for i, p in enumerate(stack)])
    seen = []
    result = nfp.reconstruct_stack(y, op, model, iterations=5, tol=0, callback=seen.append, select="off")
    assert result.image.shape == (3, 16, 16) and result.log_density.shape == (3, 16, 16)
    assert seen[-1].iteration == seen[-1].total == 15
    by_channel = nfp.reconstruct(np.moveaxis(y, 0, -1), op, model, channel_axis=-1, iterations=5, tol=0, select="off")
    assert by_channel.image.shape == (16, 16, 3)
    assert np.allclose(by_channel.image[..., 1], result.image[1])


def test_noise_auto_estimates_sigma():
    x = np.full((64, 64), 0.4, np.float32)
    op = ops.Mask.random(x.shape, 0.3, seed=0)
    y = op.measure(x, noise_sigma=0.05, seed=1)
    estimate = nfp.estimate_noise_sigma(y, op)
    assert 0.04 < estimate < 0.06
    result = nfp.reconstruct(y, op, _tiny(), noise_sigma="auto", iterations=3)
    assert 0.04 < result.noise_sigma < 0.06
    with pytest.raises(ValueError, match="number"):
        cs = ops.GaussianProjection(x.shape, ratio=0.2)
        nfp.reconstruct(cs.forward(x), cs, _tiny(), noise_sigma="auto")
    # 80% missing at random leaves about 6 aligned 2x2 blocks of 4096 here: overlapping windows fill in
    yy, xx = np.mgrid[0:256, 0:256] / 256
    smooth = (0.3 + 0.4 * yy * xx).astype(np.float32)
    sparse = ops.Mask.random(smooth.shape, 0.8, seed=0)
    assert 0.025 < nfp.estimate_noise_sigma(sparse.measure(smooth, noise_sigma=0.03, seed=1), sparse) < 0.035
    with pytest.raises(ValueError, match="too few fully observed"):
        very = ops.Mask.random(smooth.shape, 0.95, seed=0)
        nfp.estimate_noise_sigma(very.measure(smooth, noise_sigma=0.03, seed=1), very)


def _tiny():
    return nfp.build_model("glow", levels=2, steps=1, hidden=4, seed=0).eval()


def test_normalize_uses_observed_pixels_and_keeps_input(model):
    raw = np.linspace(100, 1100, 400, dtype=np.float32).reshape(20, 20)
    observed = np.ones(raw.shape, bool)
    observed[:, 10:] = False
    raw[:, 10:] = 1e6  # garbage where unobserved
    before = raw.copy()
    scaled, scaling = nfp.normalize(raw, observed=observed, model=model)
    assert np.array_equal(raw, before)
    assert scaled[observed].min() == 0 and scaled[observed].max() == 1 and np.all(scaled[~observed] == 0)
    assert np.allclose(scaling.restore(scaled)[observed], np.clip(raw[observed], scaling.low, scaling.high).ravel(), rtol=1e-5)
    # a C-channel model scales each channel on its own, as the trainer does (a dim and a bright channel)
    colour = nfp.build_model("glow", channels=2, levels=2, steps=1, hidden=4, seed=0)
    two = np.stack([np.linspace(0, 10, 400), np.linspace(1000, 5000, 400)]).reshape(2, 20, 20).astype(np.float32)
    scaled2, scaling2 = nfp.normalize(two, model=colour)
    assert scaling2.low.shape == (2, 1, 1)
    for c in range(2):
        assert scaled2[c].min() == 0 and scaled2[c].max() == 1
    np.testing.assert_allclose(scaling2.restore(scaled2)[:, 5:15], two[:, 5:15], rtol=1e-5)


def test_log_density_matches_log_prob(model, image):
    density = nfp.log_density(image, model)
    assert density.shape == image.shape
    expected = model.log_prob(torch.as_tensor(image[None, None])).item()
    assert density.sum() == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="NaN"):
        nfp.log_density(np.full((4, 4), np.nan), model)


def test_model_given_by_path_or_name(model, image, tmp_path, monkeypatch):
    path = nfp.save_model(model, tmp_path / "blobs.safetensors")
    op = nfp.operators.Mask.random(image.shape, 0.5, seed=0)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    by_object = nfp.reconstruct(y, op, model, iterations=5)
    by_path = nfp.reconstruct(y, op, str(path), iterations=5)
    np.testing.assert_allclose(by_path.image, by_object.image, atol=1e-6)
    monkeypatch.setenv("NAPARI_FLOW_PRIOR_MODELS", str(tmp_path))
    np.testing.assert_allclose(nfp.log_density(image, "blobs"), nfp.log_density(image, model), atol=1e-5)
    with pytest.raises(TypeError, match="model must be a FlowModel, a model name or a .safetensors path"):
        nfp.reconstruct(y, op, None)
    with pytest.raises(FileNotFoundError, match="no model named or at 'no-such-prior'"):
        nfp.log_density(image, "no-such-prior")


def map_objective(model, op, y, x, sigma, weight):
    """||A x - y||^2 / (2 sigma^2) - weight * log p(x), per pixel: what method 'map' minimises."""
    xt = torch.as_tensor(np.asarray(x, np.float32))
    with torch.no_grad():
        data = (op.forward(xt) - torch.as_tensor(y)).pow(2).sum() / (2 * sigma**2)
        return float((data - weight * model.log_prob(xt.reshape(1, 1, *x.shape)).sum()) / x.size)


@pytest.mark.parametrize("kind", OPERATORS)
def test_map_in_latent_space_minimises_the_same_objective(model, image, kind):
    op = OPERATORS[kind](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    from napari_flow_prior.baselines import warm_start

    start = warm_start(y, op, 0.01)
    result = nfp.reconstruct(y, op, model, space="latent", weight=0.3, noise_sigma=0.01, iterations=25)
    assert result.params["space"] == "latent" and np.isfinite(result.image).all()
    assert map_objective(model, op, y, result.image, 0.01, 0.3) < map_objective(model, op, y, start, 0.01, 0.3)


def test_model_files_carry_their_own_solver_settings(model, image, tmp_path):
    from napari_flow_prior.flows.files import save_model
    from napari_flow_prior.solvers import solver_defaults

    own = {"map": {"mask": {"space": "latent", "weight": 0.7}}}
    path = save_model(copy.deepcopy(model), tmp_path / "own.safetensors", solver=own)
    loaded = nfp.load_model(path)
    assert loaded.metadata["solver"] == own
    assert solver_defaults("map", "mask", loaded) == {**solver_defaults("map", "mask"), "space": "latent", "weight": 0.7}
    assert solver_defaults("map", "blur", loaded) == solver_defaults("map", "blur")  # other operators keep theirs
    op = OPERATORS["mask"](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    result = nfp.reconstruct(y, op, loaded, iterations=3, select="off")
    assert result.params["space"] == "latent" and result.params["weight"] == 0.7
    result = nfp.reconstruct(y, op, loaded, iterations=3, weight=0.2, space="image")  # the caller's word wins
    assert result.params["space"] == "image" and result.params["weight"] == 0.2
    for bad in ({"map": {"mask": {"weight": "strong"}}}, {"map": {"disk": {}}}, {"fast": {}}, [1]):
        with pytest.raises(ValueError, match="solver settings"):
            save_model(copy.deepcopy(model), tmp_path / "bad.safetensors", solver=bad)
    assert not (tmp_path / "bad.safetensors").exists()


def test_image_space_map_keeps_the_iterates_in_the_unit_box(model, image, tmp_path):
    """Deblurring a black-and-white image pushes unconstrained iterates below 0 and above 1, where
    a flow's density is arbitrary; ``box`` (the default) projects them back onto [0, 1]."""
    from napari_flow_prior.flows.files import save_model

    sharp = (image > 0.5).astype(np.float32)
    op = ops.Blur(sharp.shape, sigma=1.0)
    y = op.measure(sharp, noise_sigma=0.01, seed=0)
    free = nfp.reconstruct(y, op, model, box=False, space="image", iterations=30)
    assert free.image.min() < -1e-3 or free.image.max() > 1 + 1e-3
    boxed = nfp.reconstruct(y, op, model, space="image", iterations=30)
    assert boxed.params["box"] is True
    assert boxed.image.min() >= 0 and boxed.image.max() <= 1
    from napari_flow_prior.baselines import warm_start

    start = np.clip(warm_start(y, op, 0.01), 0, 1)  # the solve's own (projected) start
    weight = boxed.params["weight"]
    assert map_objective(model, op, y, boxed.image, 0.01, weight) < map_objective(model, op, y, start, 0.01, weight)
    own = save_model(copy.deepcopy(model), tmp_path / "own.safetensors", solver={"map": {"blur": {"box": False}}})
    assert nfp.reconstruct(y, op, nfp.load_model(own), space="image", iterations=2).params["box"] is False
    with pytest.raises(ValueError, match="solver settings"):
        save_model(copy.deepcopy(model), tmp_path / "bad.safetensors", solver={"map": {"blur": {"box": 1}}})


def test_lr_decay_or_a_constant_step(model, image, tmp_path):
    """Adam's step decays (cosine, to 5%) over the budget by default; lr_decay=False keeps it: on a
    far-away minimum the constant run travels the full lr per step."""
    from napari_flow_prior.flows.files import save_model
    from napari_flow_prior.solvers.optimize import minimize as _minimize

    def travel(decay):
        p = torch.zeros(1, requires_grad=True)
        for _ in _minimize([p], lambda: (p - 100).pow(2).sum(), iterations=10, optimizer="adam", lr=1.0,
                           tol=0.0, cancel=None, lr_decay=decay):
            pass
        return float(p)

    assert travel(False) == pytest.approx(10.0, abs=0.05)
    assert 5.0 < travel(True) < 6.5  # the mean of the cosine from 1 to 0.05
    op = OPERATORS["mask"](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    assert nfp.reconstruct(y, op, model, iterations=2).params["lr_decay"] is True
    own = save_model(copy.deepcopy(model), tmp_path / "own.safetensors", solver={"map": {"mask": {"lr_decay": False}}})
    assert nfp.reconstruct(y, op, nfp.load_model(own), iterations=2).params["lr_decay"] is False
    with pytest.raises(ValueError, match="lr_decay must be True or False"):
        nfp.reconstruct(y, op, model, lr_decay="no")
    with pytest.raises(ValueError, match="does not apply to method 'posterior'"):
        nfp.reconstruct(y, op, model, method="posterior", lr_decay=False)


def test_space_argument_is_checked(model, image):
    op = OPERATORS["mask"](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    with pytest.raises(ValueError, match="space must be one of"):
        nfp.reconstruct(y, op, model, space="fourier", iterations=2)
    with pytest.raises(ValueError, match="'map' only"):
        nfp.reconstruct(y, op, model, method="latent", space="latent", iterations=2)


def test_latent_start_that_does_not_invert_starts_from_the_flow_mode():
    """A start far outside the prior's domain (a checkerboard for the digit prior) encodes to a
    latent code of ~4e3 that float32 decodes to ~1e5: the latent-space solve must notice, start
    from z = 0 instead, say so, and still fit the data (before: 5 steps, then an image of 3e11)."""
    from napari_flow_prior.solvers.problem import encode_start as _encode_start

    model = nfp.load_model("digits")
    yy, xx = np.mgrid[0:28, 0:28]
    checker = ((yy + xx) % 2).astype(np.float32)
    assert _encode_start(model, torch.as_tensor(checker).reshape(1, 1, 28, 28)) is None
    smooth = (xx / 27).astype(np.float32)
    assert _encode_start(model, torch.as_tensor(smooth).reshape(1, 1, 28, 28)) is not None

    op = ops.Mask(np.ones((28, 28), bool), shape=(28, 28))  # all observed: the start is the checkerboard
    y = op.measure(checker, noise_sigma=0.01, seed=0)
    for method in ("map", "latent"):
        with pytest.warns(RuntimeWarning, match="does not invert"):
            r = nfp.reconstruct(y, op, model, method=method, space="latent" if method == "map" else None,
                                noise_sigma=0.01, iterations=60, device="cpu", domain_check=False)
        assert "z = 0" in r.params["fallback"]
        assert np.isfinite(r.image).all() and np.abs(r.image).max() < 2
        assert r.losses[-1] < r.losses[0] and r.n_iter == 60  # optimised from G(0), not stuck
    r = nfp.reconstruct(op.measure(smooth, noise_sigma=0.01, seed=0), op, model, space="latent",
                        iterations=5, device="cpu", domain_check=False)
    assert "fallback" not in r.params


def test_symmetry_frames_are_the_dihedral_group_and_invert():
    from napari_flow_prior.solvers import FRAMES, from_frame, to_frame

    x = torch.arange(12.0).reshape(1, 1, 3, 4)  # not square: quarter turns swap height and width
    seen = {tuple(to_frame(x, f).flatten().tolist()) for f in FRAMES}
    assert len(seen) == 8 and FRAMES[0] == (0, False)
    for f in FRAMES:
        assert torch.equal(from_frame(to_frame(x, f), f), x)


def test_ensemble_averages_solves_with_the_prior_in_each_frame(model, image):
    """A member in frame F solves what the plain solver solves for the problem seen in F (image,
    mask and start turned), turned back; the ensemble is the members' mean."""
    from napari_flow_prior.solvers import FRAMES, from_frame, to_frame

    op = OPERATORS["mask"](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    start = np.full(image.shape, 0.4, np.float32)
    kwargs = dict(noise_sigma=0.01, iterations=12, space="image", select="off")
    plain = nfp.reconstruct(y, op, model, init=start, **kwargs)
    turn = lambda a: to_frame(torch.as_tensor(np.array(a)), FRAMES[1]).numpy()  # noqa: E731
    turned = nfp.reconstruct(turn(y), ops.Mask(turn(op.observed_full)), model, init=turn(start), **kwargs)
    member = from_frame(torch.as_tensor(turned.image), FRAMES[1]).numpy()
    assert np.abs(member - plain.image).max() > 1e-3  # the frames' solves differ ...
    steps = []
    both = nfp.reconstruct(y, op, model, init=start, ensemble=2, callback=steps.append, **kwargs)
    np.testing.assert_allclose(both.image, (plain.image + member) / 2, atol=1e-4)  # ... and are averaged
    np.testing.assert_allclose(both.log_density, nfp.log_density(both.image, model), rtol=1e-5, atol=1e-5)
    assert both.params["frames"] == [[0, False], [2, False]] and both.params["ensemble"] == 2
    assert both.n_iter == 24 and [s.total for s in steps] == [24] * 24
    assert [s.iteration for s in steps] == list(range(1, 25))
    five = nfp.reconstruct(y, op, model, ensemble=5, **kwargs)  # quarter turns too
    assert five.n_iter == 5 * 12 and len(five.params["frames"]) == 5 and np.isfinite(five.image).all()
    tiled = nfp.reconstruct(y, op, model, ensemble=2, tile=8, overlap=4, **kwargs)  # each member in tiles
    assert tiled.params["tiles"] > 1 and tiled.params["ensemble"] == 2 and tiled.image.shape == image.shape
    assert np.isfinite(tiled.image).all() and tiled.n_iter == 2 * tiled.params["tiles"] * 12


def test_ensemble_is_checked(model, image, tmp_path):


    from napari_flow_prior.flows.files import save_model

    op = OPERATORS["mask"](image.shape)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="ensemble must be an integer from 1 to 8"):
            nfp.reconstruct(y, op, model, ensemble=bad, iterations=2)
    oriented = save_model(copy.deepcopy(model), tmp_path / "oriented.safetensors",
                          training={"config": {"augment": False}})
    with pytest.raises(ValueError, match="trained without flips and rotations"):
        nfp.reconstruct(y, op, nfp.load_model(oriented), ensemble=2, iterations=2)
    own = save_model(copy.deepcopy(model), tmp_path / "own.safetensors", solver={"map": {"mask": {"ensemble": 3}}})
    assert nfp.reconstruct(y, op, nfp.load_model(own), iterations=2).params["ensemble"] == 3


def test_langevin_samples_the_gaussian_posterior_of_a_linear_prior():
    """For a linear flow x = G z the posterior of x given y = A x + noise is Gaussian with a
    closed form; the sampler's mean and per-pixel spread must match it (Metropolis-adjusted, so
    only Monte Carlo error remains)."""
    from napari_flow_prior.solvers.langevin import langevin

    torch.manual_seed(0)
    shape, n, sigma, temperature = (1, 2, 3), 6, 0.3, 0.8
    g = torch.randn(n, n, dtype=torch.float64) * 0.4 + torch.eye(n, dtype=torch.float64)
    model = nfp.build_model("linear", matrix=g, shape=shape).double()
    op = ops.Mask(np.array([[True, False, True], [False, True, False]]))
    a = torch.as_tensor(np.diag(op.observed.ravel().astype(float)))
    y = torch.tensor([[0.7, 0.0, -0.4], [0.0, 0.2, 0.0]], dtype=torch.float64)
    prior_cov = temperature ** 2 * g @ g.T
    cov = torch.linalg.inv(torch.linalg.inv(prior_cov) + a.T @ a / sigma ** 2)
    mean = cov @ a.T @ y.flatten() / sigma ** 2

    chains = 128
    code = nfp.Latent([torch.zeros(chains, *shape, dtype=torch.float64, requires_grad=True)], shape[1:])
    misfit = lambda x: (op.forward(x[:, 0]) - y).pow(2).flatten(1).sum(1) / 2  # noqa: E731
    gen = langevin(code, model.decode, misfit, sigma=sigma, iterations=800, step=0.1, temperature=temperature,
                   anneal=0.2, keep=0.8, support=None, generator=torch.Generator().manual_seed(0))
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    got_mean, got_std = (t.flatten() for t in stop.value.value[:2])
    assert 0.3 < stop.value.value[2]["acceptance"] < 0.9  # the steps adapted towards 0.574
    want_std = cov.diagonal().sqrt()
    assert (np.abs(got_mean - mean) < 0.08 * want_std).all(), (got_mean, mean)
    np.testing.assert_allclose(got_std, want_std, rtol=0.05)


def test_posterior_gives_the_mean_and_spread_of_samples(model, image):
    missing = np.zeros(image.shape, bool)
    missing[4:12, 4:12] = True  # a hole: inside it only the prior speaks
    op = ops.Mask.from_missing(missing)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    kwargs = dict(method="posterior", noise_sigma=0.01, iterations=200, chains=4, seed=2)
    steps = []
    result = nfp.reconstruct(y, op, model, callback=steps.append, **kwargs)
    assert result.std.shape == image.shape and result.std.dtype == np.float32 and (result.std >= 0).all()
    # the data pin the observed pixels down to about their noise; the prior alone holds the hole
    assert np.median(result.std[missing]) > 2.5 * np.median(result.std[~missing])
    assert 0.2 < result.params["acceptance"] < 0.9 and len(result.params["step"]) == 4
    assert result.params["chains"] == 4 and result.n_iter == 200 and [s.iteration for s in steps] == list(range(1, 201))
    short = {**kwargs, "iterations": 20}
    first = nfp.reconstruct(y, op, model, **short)
    assert np.array_equal(first.image, nfp.reconstruct(y, op, model, **short).image)  # seeded
    assert not np.array_equal(first.image, nfp.reconstruct(y, op, model, **{**short, "seed": 3}).image)
    scattered = ops.Mask.random(image.shape, missing_fraction=0.6, seed=1)  # every tile sees pixels
    tiled = nfp.reconstruct(scattered.measure(image, 0.01, seed=0), scattered, model, tile=8, overlap=4, **short)
    assert tiled.params["tiles"] > 1 and tiled.std.shape == image.shape and np.isfinite(tiled.std).all()
    assert nfp.reconstruct(y, op, model, method="map", iterations=3).std is None
    stack = nfp.reconstruct_stack(np.stack([y, y]), op, model, axis=0, **short)
    assert stack.std.shape == (2, *image.shape) and np.array_equal(stack.std[0], first.std)
    calls = {"n": 0}

    def cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(nfp.Cancelled):
        nfp.reconstruct(y, op, model, cancel=cancel, **kwargs)
    assert calls["n"] == 4


def test_posterior_settings_are_checked(model, image):
    op = ops.Mask.random(image.shape, missing_fraction=0.6, seed=1)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="chains must be an integer from 1 to 64"):
            nfp.reconstruct(y, op, model, method="posterior", chains=bad, iterations=2)
    with pytest.raises(ValueError, match="temperature must be a positive number"):
        nfp.reconstruct(y, op, model, method="posterior", temperature=0, iterations=2)
    with pytest.raises(ValueError, match="weight= does not apply to method 'posterior'"):
        nfp.reconstruct(y, op, model, method="posterior", weight=1.0, iterations=2)
    with pytest.raises(ValueError, match="chains= does not apply to method 'map'"):
        nfp.reconstruct(y, op, model, chains=4, iterations=2)


def test_minimize_ends_on_the_lowest_objective_it_saw():
    from napari_flow_prior.solvers.optimize import minimize as _minimize

    p = torch.nn.Parameter(torch.tensor([0.1], dtype=torch.float64))
    objective = lambda: (p ** 2).sum()  # noqa: E731 - Adam with a step of 5 overshoots and climbs
    losses = [loss for _, loss in _minimize([p], objective, iterations=20, optimizer="adam", lr=5.0,
                                            tol=0, cancel=None)]
    assert max(losses) > 10 * min(losses)  # the run did climb away from its best point
    assert float(objective()) == pytest.approx(min(losses))


def _with_typical(model, images):
    """A copy of ``model`` whose metrics record the typical log-density of ``images``."""
    from napari_flow_prior.domain import typical_log_density

    m = copy.deepcopy(model)
    m.metadata = {**m.metadata, "metrics": {"typical_log_density": typical_log_density(m, images)}}
    return m


def test_domain_check_returns_the_classical_start_for_an_image_outside_the_prior(model, image):
    """The tiny blob prior, asked to deblur white noise, would paint blobs into what the blur hides;
    its reconstruction is far less likely than the blobs it knows, so the result is Wiener's."""
    from napari_flow_prior.baselines import warm_start
    from napari_flow_prior.domain import MARGIN_BITS

    blobs = [image, np.flip(image, 1).copy(), image.T.copy()]
    prior = _with_typical(model, blobs)
    typical = prior.metadata["metrics"]["typical_log_density"]
    assert typical["n_images"] == 3 and typical["q01"] <= typical["median"]
    op = ops.Blur(image.shape, sigma=1.0)

    y = op.measure(image, noise_sigma=0.01, seed=0)
    inside = nfp.reconstruct(y, op, prior, noise_sigma=0.01, iterations=20)
    assert inside.params["domain"]["in_domain"] is True and "fallback" not in inside.params
    assert inside.params["domain"]["threshold"] == pytest.approx(typical["q01"] - MARGIN_BITS * np.log(2))

    noise = np.random.default_rng(3).random(image.shape).astype(np.float32)
    y = op.measure(noise, noise_sigma=0.01, seed=0)
    with pytest.warns(RuntimeWarning, match="outside the prior's domain"):
        outside = nfp.reconstruct(y, op, prior, noise_sigma=0.01, iterations=20, ensemble=2)
    report = outside.params["domain"]
    assert report["in_domain"] is False and report["log_density"] < report["threshold"]
    assert "classical reconstruction (wiener)" in outside.params["fallback"]
    np.testing.assert_allclose(outside.image, warm_start(y, op, 0.01), atol=1e-6)
    np.testing.assert_allclose(outside.log_density, nfp.log_density(np.clip(outside.image, 0, 1), prior), atol=1e-5)

    kept = nfp.reconstruct(y, op, prior, noise_sigma=0.01, iterations=20, domain_check=False)
    assert "domain" not in kept.params and not np.allclose(kept.image, outside.image)
    bare = nfp.reconstruct(y, op, model, noise_sigma=0.01, iterations=20)  # no typical range recorded
    assert bare.params["domain"]["in_domain"] is None and "fallback" not in bare.params


def test_domain_check_falls_back_to_tv_for_compressed_sensing(model, image):
    """Outside the domain, compressed sensing gets TV (the best classical method on the validation
    crops, 1.8 to 3.0 dB above the Lasso-DCT warm start), named in the warning."""
    from napari_flow_prior.baselines import fallback, run_baseline, warm_start

    prior = _with_typical(model, [image, np.flip(image, 1).copy(), image.T.copy()])
    op = ops.GaussianProjection(image.shape, ratio=0.5, seed=0, block=8)
    noise = np.random.default_rng(3).random(image.shape).astype(np.float32)
    y = op.measure(noise, noise_sigma=0.01, seed=0)
    with pytest.warns(RuntimeWarning, match=r"classical reconstruction \(tv_cs\)"):
        outside = nfp.reconstruct(y, op, prior, noise_sigma=0.01, iterations=20)
    assert outside.params["domain"]["in_domain"] is False
    tv = run_baseline("tv_cs", y, op, noise_sigma=0.01)
    np.testing.assert_allclose(outside.image, tv, atol=1e-6)
    assert not np.allclose(tv, warm_start(y, op, 0.01), atol=1e-3)
    mask = ops.Mask.random(image.shape, missing_fraction=0.5, seed=0)
    name, start = fallback(mask.forward(image), mask, 0.01)  # other operators: the warm start
    assert name == "biharmonic"
    np.testing.assert_array_equal(start, warm_start(mask.forward(image), mask, 0.01))


def test_shipped_priors_carry_their_typical_log_density():
    for name in ("nuclei", "medical", "digits"):
        typical = nfp.load_model(name).metadata["metrics"]["typical_log_density"]
        assert typical["n_images"] >= 4 and np.isfinite(typical["q01"]) and typical["q01"] <= typical["median"]


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                "allocate 40000000000000 bytes. Error code 12")],
                         ids=["cuda", "cpu"])
def test_out_of_memory_in_a_whole_image_solve_falls_back_to_tiles(model, monkeypatch, error):
    """A failed allocation in an automatic whole-image solve (simulated: the first solve raises it, as
    CUDA or as the CPU allocator does) gives the same result as asking for the tiles the fallback
    chooses: half the whole image's estimate, and within the caller's memory budget."""
    from napari_flow_prior import tiling
    from napari_flow_prior.solvers import engine

    yy, xx = np.mgrid[0:48, 0:48]
    image = (0.2 + 0.6 * np.exp(-((yy - 20.0) ** 2 + (xx - 27.0) ** 2) / 60)).astype(np.float32)
    op = ops.Mask.random(image.shape, missing_fraction=0.5, seed=0)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    real, calls = engine.minimize, []

    def out_of_memory_once(params, objective, **kwargs):
        calls.append(tuple(params[0].shape))
        if len(calls) == 1:
            raise error
        return real(params, objective, **kwargs)

    monkeypatch.setattr(engine, "minimize", out_of_memory_once)
    args = dict(noise_sigma=0.01, iterations=5, device="cpu", space="image", ensemble=1, select="off")
    whole = tiling.estimate_solve_bytes(model, op.shape, False)
    for budget in ("1G", whole):  # a roomy budget, and one the whole image's estimate just fits
        calls.clear()
        with pytest.warns(RuntimeWarning, match=r"out of memory on cpu for the whole 48x48 image: solving in 24x24 tiles"):
            fallen = nfp.reconstruct(y, op, model, memory_budget=budget, **args)
        assert calls[0][-2:] == (48, 48) and all(shape[-2:] == (24, 24) for shape in calls[1:]) and len(calls) > 2
        assert tiling.estimate_solve_bytes(model, (24, 24), True) <= whole / 2
        tiled = nfp.reconstruct(y, op, model, tile=24, memory_saving=True, **args)
        np.testing.assert_allclose(fallen.image, tiled.image, atol=1e-6)
        assert np.isfinite(fallen.image).all() and fallen.image.shape == image.shape

    calls.clear()
    with pytest.raises(type(error)):  # an explicit tile setting is the user's: no fallback
        nfp.reconstruct(y, op, model, tile=0, **args)


def test_a_runtime_error_that_is_not_about_memory_is_not_taken_for_one(model, monkeypatch):
    from napari_flow_prior.solvers import engine

    def broken(params, objective, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(engine, "minimize", broken)
    op = ops.Mask.random((48, 48), missing_fraction=0.5, seed=0)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        nfp.reconstruct(np.zeros((48, 48), np.float32), op, model, noise_sigma=0.01, iterations=5,
                        device="cpu", space="image", ensemble=1)


@pytest.mark.parametrize("kind", ["mask", "blur"])
@pytest.mark.parametrize("method", ["map", "latent", "posterior"])
def test_photon_limited_data_lower_the_poisson_misfit(model, image, kind, method):
    from napari_flow_prior.likelihood import negative_log_likelihood

    op = OPERATORS[kind](image.shape)
    y = op.measure(image, noise_sigma=0.005, seed=0, noise="poisson", photons=50.0)

    def poisson_misfit(x):
        return float(negative_log_likelihood(torch.as_tensor(op.forward(np.asarray(x, np.float32)), dtype=torch.float64),
                                             torch.as_tensor(y, dtype=torch.float64), 0.005, 50.0))

    result = nfp.reconstruct(y, op, model, method=method, noise_sigma=0.005, photons=50.0, iterations=25)
    assert np.isfinite(result.image).all() and result.params["photons"] == 50.0
    assert poisson_misfit(result.image) < poisson_misfit(np.full(image.shape, 0.5, np.float32))


def test_photons_need_nonnegative_measurements(model, image):
    op = OPERATORS["cs"](image.shape)
    with pytest.raises(ValueError, match="photons.*nonnegative"):
        nfp.reconstruct(op.measure(image), op, model, photons=20.0)
    with pytest.raises(ValueError, match="photons"):
        nfp.reconstruct(image, ops.Blur(image.shape, sigma=1.0), model, photons=0)


def test_auto_noise_with_photons_estimates_the_read_noise(model):
    """A flat image: shot noise of variance 0.5 / 200 plus read noise 0.03; 'auto' keeps the read
    noise's share of the estimated variance."""
    flat = np.full((128, 128), 0.5, np.float32)
    op = ops.Blur(flat.shape, sigma=1.0)
    y = op.measure(flat, noise_sigma=0.03, seed=3, noise="poisson", photons=200.0)
    result = nfp.reconstruct(y, op, model, noise_sigma="auto", photons=200.0, iterations=1, domain_check=False)
    assert result.noise_sigma == pytest.approx(0.03, rel=0.25)


def test_normalize_counts_keeps_zero_photons_at_zero():
    raw = np.array([[100.0, 140.0], [300.0, np.nan]])  # offset 100, gain 2: 0, 20, 100 photons
    y, scaling, photons = nfp.normalize_counts(raw, gain=2.0, offset=100.0, observed=np.isfinite(raw))
    assert photons == pytest.approx(np.percentile([0.0, 20.0, 100.0], 99.8))
    assert y[0, 0] == 0 and y[1, 1] == 0 and y[0, 1] * photons == pytest.approx(20.0)
    assert np.allclose(scaling.restore(y)[np.isfinite(raw)], raw[np.isfinite(raw)])
    assert np.isnan(raw[1, 1])  # the input is not modified
    with pytest.raises(ValueError, match="gain"):
        nfp.normalize_counts(raw, gain=0.0)


def test_channels_last_rgb_with_a_one_channel_model_names_the_shape_and_channel_axis(model):
    """(48, 48, 3) data with a 1-channel model: the error names the shape and suggests channel_axis=-1."""
    rgb = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    op = ops.Blur(rgb.shape, sigma=1.0)
    with pytest.raises(ValueError, match=r"shape \(48, 48, 3\) has 48 channel\(s\).*channel_axis=-1"):
        nfp.reconstruct(rgb, op, model, iterations=2)
    plane = ops.Blur(rgb.shape[:2], sigma=1.0)
    y = np.stack([plane.forward(rgb[..., c]) for c in range(3)], axis=-1)
    assert nfp.reconstruct(y, plane, model, channel_axis=-1, iterations=2).image.shape == (48, 48, 3)
