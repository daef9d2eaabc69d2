"""The command line on tiny models and images."""

import json

import numpy as np
import pytest
import tifffile

import napari_flow_prior as nfp
from napari_flow_prior.cli import main


@pytest.fixture
def tiny_model(tmp_path):
    path = tmp_path / "tiny.safetensors"
    nfp.save_model(nfp.build_model("glow", levels=2, steps=1, hidden=8, seed=0).eval(), path, domain="test")
    return path


@pytest.fixture
def image_file(tmp_path):
    yy, xx = np.mgrid[0:24, 0:24]
    img = (1000 + 3000 * np.exp(-((yy - 10.0) ** 2 + (xx - 13.0) ** 2) / 30)).astype(np.uint16)
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, img)
    return path


@pytest.mark.parametrize("operator", ["mask:0.5", "blur:1.0", "cs:0.3"])
def test_reconstruct_simulate_writes_outputs(tmp_path, tiny_model, image_file, operator):
    out = tmp_path / "out"
    code = main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", operator,
                 "--simulate", "--iterations", "5", "--out", str(out), "--baseline", "--block", "8"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model_sha256"] == nfp.flows.files.file_sha256(tiny_model)
    assert report["operator"]["kind"] == operator.split(":")[0]
    assert set(report["metrics"]) >= {"flow"} and len(report["metrics"]) == 2
    recon = tifffile.imread(out / "reconstruction.tif")
    assert recon.shape == (24, 24) and np.isfinite(recon).all()
    assert recon.mean() > 500  # restored to the input's units, not [0, 1]
    assert tifffile.imread(out / "log_density.tif").shape == (24, 24)
    assert (out / ("back_projection.tif" if operator.startswith("cs") else "measurements.tif")).exists()


def test_reconstruct_space_option(tmp_path, tiny_model, image_file):
    out = tmp_path / "out"
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "mask:0.5",
                 "--simulate", "--iterations", "3", "--space", "latent", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["space"] == "latent"


@pytest.mark.parametrize("flag, box", [("--no-box", False), ("--box", True)])
def test_reconstruct_step_size_and_box_options(tmp_path, tiny_model, image_file, flag, box):
    out = tmp_path / "out"
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "blur:1.0",
                 "--simulate", "--iterations", "3", "--space", "image", "--lr", "0.02", flag,
                 "--out", str(out)]) == 0
    params = json.loads((out / "report.json").read_text())["params"]
    assert params["lr"] == 0.02 and params["box"] is box


def test_reconstruct_ensemble_option(tmp_path, tiny_model, image_file):
    out = tmp_path / "out"
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "mask:0.5",
                 "--simulate", "--iterations", "3", "--ensemble", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["ensemble"] == 2 and report["iterations"] == 6
    assert report["params"]["frames"] == [[0, False], [2, False]]


def test_reconstruct_posterior_writes_the_spread(tmp_path, tiny_model, image_file):
    import tifffile

    out = tmp_path / "out"
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "mask:0.5",
                 "--simulate", "--method", "posterior", "--iterations", "6", "--chains", "3",
                 "--temperature", "0.9", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "posterior" and report["iterations"] == 6
    assert report["params"]["chains"] == 3 and report["params"]["temperature"] == 0.9
    spread = tifffile.imread(out / "posterior_std.tif")  # in the input's units, like the reconstruction
    assert spread.shape == tifffile.imread(out / "reconstruction.tif").shape and (spread >= 0).all()
    assert spread.max() > 0


def test_reconstruct_measured_with_mask_file(tmp_path, tiny_model, image_file):
    missing = np.zeros((24, 24), np.uint8)
    missing[5:9, :] = 1  # dead rows
    mask_file = tmp_path / "missing.tif"
    tifffile.imwrite(mask_file, missing)
    out = tmp_path / "measured"
    code = main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "mask",
                 "--mask", str(mask_file), "--method", "mle", "--noise", "auto", "--iterations", "5",
                 "--out", str(out)])
    assert code == 0
    recon = tifffile.imread(out / "reconstruction.tif")
    original = tifffile.imread(image_file).astype(np.float32)
    keep = missing == 0
    # observed pixels inside the normalisation range come back unchanged
    inside = keep & (original > np.percentile(original, 2)) & (original < np.percentile(original, 99))
    assert np.allclose(recon[inside], original[inside], rtol=1e-3)


@pytest.mark.parametrize("operator", ["mask:0.5", "blur:1.0"])
def test_reconstruct_with_a_multichannel_prior_keeps_the_layout(tmp_path, operator):
    colour = tmp_path / "colour.safetensors"
    nfp.save_model(nfp.build_model("glow", channels=3, levels=2, steps=1, hidden=8, seed=0).eval(), colour)
    rgb = tmp_path / "rgb.tif"  # (H, W, 3), channels last as an RGB file stores them
    image = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)
    image[..., 2] *= 100  # a channel of another range: scaled on its own
    tifffile.imwrite(rgb, image, photometric="rgb")
    out = tmp_path / "out"
    assert main(["reconstruct", str(rgb), "--model", str(colour), "--operator", operator, "--simulate",
                 "--iterations", "3", "--out", str(out)]) == 0
    recon = tifffile.imread(out / "reconstruction.tif")
    assert recon.shape == (24, 24, 3) and np.isfinite(recon).all()
    assert recon[..., 2].mean() > 10 * recon[..., 0].mean()  # each channel back in its own units
    assert tifffile.imread(out / "log_density.tif").shape == (24, 24)
    assert main(["reconstruct", str(rgb), "--model", str(colour), "--operator", "mask:0.5",
                 "--mask", str(rgb), "--out", str(out)]) == 2  # a mask must be (H, W)


def test_rgb_image_with_a_one_channel_prior_runs_channel_by_channel(tmp_path, tiny_model, image_file):
    grey = tifffile.imread(image_file).astype(np.float32)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.stack([grey, grey[::-1], 100 * grey.T], -1), photometric="rgb")
    args = ["--model", str(tiny_model), "--operator", "mask:0.5", "--simulate", "--iterations", "3", "--baseline"]
    assert main(["reconstruct", str(rgb), *args, "--out", str(tmp_path / "rgb")]) == 0
    assert main(["reconstruct", str(image_file), *args, "--out", str(tmp_path / "red")]) == 0
    recon = tifffile.imread(tmp_path / "rgb" / "reconstruction.tif")
    assert recon.shape == (24, 24, 3)
    # the red channel is the grey image (same mask, same noise seed): the same result as alone
    np.testing.assert_allclose(recon[..., 0], tifffile.imread(tmp_path / "red" / "reconstruction.tif"), rtol=1e-5)
    assert recon[..., 2].mean() > 10 * recon[..., 0].mean()  # each channel back in its own units
    assert tifffile.imread(tmp_path / "rgb" / "baseline_biharmonic.tif").shape == (24, 24, 3)
    report = json.loads((tmp_path / "rgb" / "report.json").read_text())
    assert report["channel_by_channel"] and len(report["normalization"]["low"]) == 3
    assert 0 < report["metrics"]["flow"]["psnr"] < 100
    # the density command sums the channels' maps
    assert main(["density", str(rgb), "--model", str(tiny_model), "--out", str(tmp_path / "d")]) == 0
    model = nfp.load_model(tiny_model)
    channels = [grey, grey[::-1], 100 * grey.T]
    expected = sum(nfp.log_density(nfp.normalize(c, model=model)[0], model) for c in channels)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "d" / "rgb_log_density.tif"), expected, rtol=1e-5, atol=1e-5)


def test_errors_are_messages_not_tracebacks(tmp_path, tiny_model, image_file, capsys):
    assert main(["reconstruct", str(image_file), "--model", "no-such-model"]) == 2
    assert "no model named" in capsys.readouterr().err
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "warp:2"]) == 2
    assert "bad operator" in capsys.readouterr().err
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "cs:0.2"]) == 2
    assert "--simulate" in capsys.readouterr().err
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, np.ones((3, 3), np.float32))
    for operator in ("mask:0.5", "blur:2"):  # a PSF that would be ignored, or contradict the sigma
        assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", operator,
                     "--psf", str(psf)]) == 2
        assert "--psf is the blur's point-spread function" in capsys.readouterr().err
    missing = tmp_path / "missing.tif"
    tifffile.imwrite(missing, np.zeros(tifffile.imread(image_file).shape, np.uint8))
    for operator in ("blur", "mask:0.5"):
        assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", operator,
                     "--mask", str(missing)]) == 2
        assert "--mask gives the missing pixels" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    assert main(["reconstruct", str(image_file), "--model", str(junk)]) == 2
    assert "not a napari-flow-prior model" in capsys.readouterr().err


def test_nan_pixels_are_missing_for_a_mask_and_an_error_otherwise(tmp_path, tiny_model, image_file, capsys):
    image = tifffile.imread(image_file).astype(np.float32)
    image[3, 4] = image[10, 10] = np.nan
    bad = tmp_path / "dead.tif"
    tifffile.imwrite(bad, image)
    assert main(["reconstruct", str(bad), "--model", str(tiny_model), "--operator", "blur:1.0",
                 "--out", str(tmp_path / "no")]) == 2
    assert "2 NaN or infinite pixels" in capsys.readouterr().err
    assert main(["reconstruct", str(bad), "--model", str(tiny_model), "--operator", "mask:0.3", "--simulate",
                 "--out", str(tmp_path / "no")]) == 2
    assert "clean ground-truth" in capsys.readouterr().err
    out = tmp_path / "dead"
    assert main(["reconstruct", str(bad), "--model", str(tiny_model), "--operator", "mask:0.3",
                 "--iterations", "3", "--out", str(out)]) == 0
    recon = tifffile.imread(out / "reconstruction.tif")
    assert np.isfinite(recon).all()
    assert np.isnan(tifffile.imread(bad)[3, 4])  # the user's file is untouched


def test_density_command_writes_maps_and_a_summary(tmp_path, tiny_model, image_file, capsys):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([tifffile.imread(image_file)] * 2))
    out = tmp_path / "density"
    assert main(["density", str(image_file), str(stack), "--model", str(tiny_model), "--out", str(out)]) == 0
    one = tifffile.imread(out / "cells_log_density.tif")
    both = tifffile.imread(out / "stack_log_density.tif")
    assert one.shape == (24, 24) and both.shape == (2, 24, 24)
    model = nfp.load_model(tiny_model)
    scaled, _ = nfp.normalize(tifffile.imread(image_file), model=model)
    np.testing.assert_allclose(one, nfp.log_density(scaled, model), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1], one, rtol=1e-5, atol=1e-5)
    report = json.loads((out / "density.json").read_text())
    assert report["images"][0]["mean_nats_per_pixel"] == pytest.approx(float(one.mean()), rel=1e-5)
    colour = tmp_path / "colour.safetensors"  # a 3-channel prior: (H, W, 3) is one image, one map
    nfp.save_model(nfp.build_model("glow", channels=3, levels=2, steps=1, hidden=8, seed=0).eval(), colour)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(0).random((24, 24, 3)).astype(np.float32), photometric="rgb")
    assert main(["density", str(rgb), "--model", str(colour), "--out", str(out)]) == 0
    assert tifffile.imread(out / "rgb_log_density.tif").shape == (24, 24)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((24, 24), np.nan))
    assert main(["density", str(bad), "--model", str(tiny_model), "--out", str(out)]) == 2
    assert "NaN" in capsys.readouterr().err


def test_train_command(tmp_path, image_file, capsys):
    out = tmp_path / "mine.safetensors"
    big = tmp_path / "big.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(big, (rng.random((64, 64)) * 1000).astype(np.uint16))
    code = main(["train", str(big), "--out", str(out), "--steps", "6", "--patch", "16", "--levels", "2",
                 "--steps-per-level", "1", "--hidden", "8", "--batch", "4", "--val-every", "3"])
    assert code == 0
    model = nfp.load_model(out)
    assert model.metadata["training"]["steps"] == 6
    assert main(["train", str(image_file), "--out", str(out), "--patch", "32"]) == 2
    assert main(["train", str(big), "--out", str(out), "--steps", "0"]) == 2
    assert main(["train", str(big), "--out", str(out), "--init", str(out), "--levels", "5", "--steps", "2"]) == 2
    assert "--levels: the architecture of a fine-tuned prior is that of --init" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["digits", "tiny"])
def test_demo_runs_the_chosen_model_on_its_sample(tmp_path, tiny_model, capsys, model):
    from PIL import Image

    from napari_flow_prior.demo import FIGURE_CAPTION, FIGURE_PAD, FIGURE_SCALE, sample_image

    name, size = (str(tiny_model), 32) if model == "tiny" else ("digits", 28)
    out = tmp_path / "demo"
    assert main(["demo", "--model", name, "--size", str(size), "--iterations", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for case in ("inpainting 80% missing", "deblurring sigma 2", "compr. sensing m/n 0.2"):
        assert table.count(case) >= 3  # the flow and at least two baselines
    assert "flow prior (map)" in table and "nan" not in table.lower()
    # the figure's first panel is the ground truth: the model's own sample (a file model: nuclei)
    sheet = np.asarray(Image.open(out / "demo.png"))
    truth = sample_image("nuclei" if model == "tiny" else "digits", size)
    top, k = FIGURE_PAD + FIGURE_CAPTION, FIGURE_SCALE
    panel = sheet[top:top + k * size:k, FIGURE_PAD:FIGURE_PAD + k * size:k]
    np.testing.assert_array_equal(panel, (np.clip(truth, 0, 1) * 255).astype(np.uint8))


def test_reconstruct_photon_limited_simulation(tmp_path, tiny_model, image_file, capsys):
    out = tmp_path / "out"
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "blur:1.0", "--simulate",
                 "--noise", "0", "--photons", "30", "--iterations", "3", "--baseline", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["photons"] == 30.0 and np.isfinite(report["metrics"]["flow"]["psnr"])
    # measured counts take --gain and --offset instead
    assert main(["reconstruct", str(image_file), "--model", str(tiny_model), "--operator", "blur:1.0",
                 "--photons", "30", "--out", str(tmp_path / "measured")]) != 0
    assert "--photons is for --simulate" in capsys.readouterr().err


def test_reconstruct_measured_photon_counts(tmp_path, tiny_model, capsys):
    """A camera image: counts = (raw - offset) / gain; the report holds the photon count at 1, the
    reconstruction comes back in the camera's units."""
    yy, xx = np.mgrid[0:24, 0:24]
    truth = 0.2 + 0.7 * np.exp(-((yy - 10.0) ** 2 + (xx - 13.0) ** 2) / 30)
    op = nfp.operators.Blur(truth.shape, sigma=1.0)
    counts = np.random.default_rng(0).poisson(40 * op.forward(truth))
    raw = (100 + 2.0 * counts).astype(np.uint16)
    path = tmp_path / "camera.tif"
    tifffile.imwrite(path, raw)
    out = tmp_path / "out"
    assert main(["reconstruct", str(path), "--model", str(tiny_model), "--operator", "blur:1.0", "--gain", "2",
                 "--offset", "100", "--noise", "0", "--iterations", "3", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params"]["photons"] == pytest.approx(np.percentile(counts, 99.8))
    assert report["normalization"]["low"] == [100.0]
    recon = tifffile.imread(out / "reconstruction.tif")
    assert np.isfinite(recon).all() and abs(recon.mean() - raw.mean()) < 0.2 * raw.mean()
    assert main(["reconstruct", str(path), "--model", str(tiny_model), "--operator", "blur:1.0", "--gain", "2",
                 "--simulate", "--out", str(tmp_path / "x")]) != 0
    assert "--gain" in capsys.readouterr().err
    assert main(["reconstruct", str(path), "--model", str(tiny_model), "--operator", "blur:1.0", "--gain", "2",
                 "--offset", "60000", "--out", str(tmp_path / "y")]) != 0
    assert "check both" in capsys.readouterr().err
    assert main(["reconstruct", str(path), "--model", str(tiny_model), "--operator", "blur:1.0", "--offset", "100",
                 "--out", str(tmp_path / "z")]) != 0
    assert "give the camera's --gain too" in capsys.readouterr().err
