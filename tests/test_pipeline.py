"""pipeline.run: the one job behind the plugin, ``reconstruct`` and ``batch``."""
from __future__ import annotations

import numpy as np
import pytest

import napari_flow_prior as nfp
from napari_flow_prior import operators as ops
from napari_flow_prior import pipeline
from napari_flow_prior.solvers import run_to_end


@pytest.fixture(scope="module")
def model():
    return nfp.build_model("glow", levels=2, steps=1, hidden=8, seed=0).eval()


@pytest.fixture
def raw():
    yy, xx = np.mgrid[0:16, 0:16]
    return (200 + 600 * np.exp(-((yy - 7.0) ** 2 + (xx - 9.0) ** 2) / 18)).astype(np.float32)  # camera units


def test_simulate_scales_measures_solves_and_restores(model, raw):
    op = ops.Mask.random(raw.shape, 0.5, seed=0)
    before = raw.copy()
    outcome = run_to_end(pipeline.run(raw, op, model, simulate=True, noise_sigma=0.01, baseline=True,
                                      iterations=3, seed=0, domain_check=False))
    assert np.array_equal(raw, before)
    truth, scaling = nfp.normalize(raw, model=model)
    np.testing.assert_array_equal(outcome.truth, truth)
    np.testing.assert_array_equal(outcome.y, op.measure(truth, noise_sigma=0.01, seed=0))
    direct = nfp.reconstruct(outcome.y, op, model, noise_sigma=0.01, iterations=3, seed=0, domain_check=False)
    np.testing.assert_allclose(outcome.result.image, direct.image, atol=1e-6)
    np.testing.assert_allclose(outcome.reconstruction, scaling.restore(direct.image), rtol=1e-6)
    assert outcome.baseline_name == "biharmonic" and outcome.baseline.shape == raw.shape
    assert set(outcome.scores()) == {"psnr", "ssim", "baseline_psnr", "baseline_ssim"}
    assert outcome.provenance()["baseline"] == "biharmonic"


def test_measured_nan_pixels_are_missing_ones(model, raw):
    holes = raw.copy()
    holes[3:6, 3:6] = np.nan
    op = ops.Mask(np.ones(raw.shape, bool))
    outcome = run_to_end(pipeline.run(holes, op, model, iterations=2, domain_check=False))
    assert not outcome.op.observed_full[3:6, 3:6].any() and outcome.op.observed_full.sum() == raw.size - 9
    assert np.isfinite(outcome.reconstruction).all()
    assert np.isnan(holes[3:6, 3:6]).all()  # the input is untouched
    with pytest.raises(ValueError, match="only a mask"):
        run_to_end(pipeline.run(holes, ops.Blur(raw.shape, sigma=1.0), model, iterations=2))
    with pytest.raises(ValueError, match="clean ground-truth"):
        run_to_end(pipeline.run(holes, op, model, simulate=True, iterations=2))


def test_plugin_cli_and_batch_run_through_the_pipeline(model, raw, tmp_path, monkeypatch):
    """The GUI's worker, the reconstruct command and batch are callers of pipeline.run."""
    from napari_flow_prior import batch, jobs
    from napari_flow_prior.plugin import OperatorSpec, run_reconstruction

    calls = []
    real = pipeline.run

    def counted(*args, **kwargs):
        calls.append(kwargs.get("simulate"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run", counted)
    run_to_end(run_reconstruction(raw, model, OperatorSpec("mask", missing_fraction=0.5), iterations=2))
    assert calls == [True]
    path = tmp_path / "model.safetensors"
    nfp.save_model(model, path, domain="test")
    np.save(tmp_path / "image.npy", raw)
    jobs.reconstruct_file(tmp_path / "image.npy", model=str(path), operator="blur:1.0", out=tmp_path / "one",
                          iterations=2)
    assert calls == [True, False]
    (tmp_path / "many").mkdir()
    np.save(tmp_path / "many" / "a.npy", raw)
    report = batch.run_batch(tmp_path / "many", tmp_path / "out", model=str(path), operator="mask:0.5",
                             simulate=True, iterations=2, progress=False)
    assert report["done"] == 1 and calls == [True, False, True]
