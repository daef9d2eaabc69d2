"""The trainer on tiny synthetic data (seconds)."""

import json

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import napari_flow_prior as nfp
from napari_flow_prior.training import TrainConfig, make_dataset, run_to_end, train, train_steps


def blobs(n=3, size=96, seed=0):
    """Smooth random blob images: a structured, learnable toy domain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for _ in range(n):
        img = np.zeros((size, size))
        for cy, cx in rng.uniform(0, size, (25, 2)):
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)
        images.append((img / img.max() * 200 + 20).astype(np.uint8))
    return images


def tiny(**kw):
    base = dict(levels=2, steps_per_level=2, hidden=16, patch=16, batch=16, steps=60, val_every=30,
                warmup=10, lr=3e-3, val_block=32, checkpoint_every=20, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_validation_bpd(tmp_path):
    out = tmp_path / "toy.safetensors"
    model = train(blobs(), out, tiny(steps=80, val_every=80), domain="toy blobs", progress=False)
    log = json.loads((tmp_path / "toy.log.json").read_text())
    fresh = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=0).eval()
    data = make_dataset([b[None].astype(np.float32) / 255 for b in blobs()], tiny())
    from napari_flow_prior.training import validation_bpd

    before = validation_bpd(fresh, data.val, "cpu")
    assert log[-1]["val_bpd"] < before - 0.5, (before, log)
    loaded = nfp.load_model(out)
    assert loaded.metadata["domain"] == "toy blobs"
    assert loaded.metadata["normalization"] == {"low_pct": 1.0, "high_pct": 99.8, "clip": True}
    assert loaded.metadata["training"]["steps"] == 80
    assert (tmp_path / "toy.log.csv").exists()
    assert model.metadata["metrics"]["val_bpd"] == pytest.approx(min(r["val_bpd"] for r in log))
    typical = model.metadata["metrics"]["typical_log_density"]  # the solvers' domain check
    assert typical["n_images"] >= 1 and typical["q01"] <= typical["median"]


def test_validation_blocks_never_overlap_training_patches():
    planes = [b[None].astype(np.float32) / 255 for b in blobs(2)]
    data = make_dataset(planes, tiny())
    p = 16
    val_mask = [np.zeros(pl.shape[1:], bool) for pl in planes]
    # rebuild which pixels were held out: every training patch must avoid them
    for i, pl in enumerate(planes):
        rows, cols = pl.shape[1] // 32, pl.shape[2] // 32
        for r in range(rows):
            for c in range(cols):
                block = pl[:, r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
                if any(v.shape == block.shape and np.array_equal(v, block) for v in data.val):
                    val_mask[i][r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = True
    assert sum(m.sum() for m in val_mask) > 0
    for i, r, c in data.positions:
        assert not val_mask[i][r:r + p, c:c + p].any()


def test_a_single_small_image_holds_out_one_patch_block():
    plane = blobs(1, size=48)[0][None].astype(np.float32) / 255  # one 32x32 block: too small for blocks
    data = make_dataset([plane], tiny())
    assert len(data.val) == 1 and data.val[0].shape == (1, 16, 16)
    held = np.zeros((48, 48), bool)
    for r in range(3):
        for c in range(3):
            if np.array_equal(plane[:, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16], data.val[0]):
                held[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = True
    assert held.sum() == 256 and len(data.positions) > 0
    for _, r, c in data.positions:
        assert not held[r:r + 16, c:c + 16].any()
    with pytest.raises(ValueError, match="one 20x20 image has no room for a 16x16 validation block"):
        make_dataset([plane[:, :20, :20]], tiny())


def test_rgb_images_give_a_one_channel_model_each_colour_channel():
    from napari_flow_prior.training import load_planes

    grey = blobs(1)[0].astype(np.float32)
    colour = np.stack([grey, grey.T, 0.01 * grey[::-1]], -1)  # (H, W, 3), a dim blue channel
    planes, names = load_planes([colour], tiny())
    assert len(planes) == 3 and all(plane.shape == (1, 96, 96) for plane in planes)
    for plane, channel in zip(planes, (grey, grey.T, grey[::-1])):  # each scaled on its own
        np.testing.assert_allclose(plane[0], load_planes([channel], tiny())[0][0][0], atol=1e-6)
    assert load_planes([colour], tiny(channels=3))[0][0].shape == (3, 96, 96)


def test_resume_continues_exactly(tmp_path):
    images = blobs(2)
    straight = run_to_end(train_steps(images, tiny(steps=40)))
    ckpt = tmp_path / "run.ckpt"
    first = train_steps(images, tiny(steps=40), checkpoint=ckpt)
    for progress in first:
        if progress.step == 20:  # a checkpoint was just written; stop as a crash would
            break
    first.close()
    resumed = run_to_end(train_steps(images, tiny(steps=40), checkpoint=ckpt, resume=True))
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_non_finite_step_is_skipped(monkeypatch):
    images = blobs(2)
    calls = {"n": 0}
    real = nfp.FlowModel.log_prob

    def flaky(self, x):
        calls["n"] += 1
        out = real(self, x)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(nfp.FlowModel, "log_prob", flaky)
    seen = []
    gen = train_steps(images, tiny(steps=12, val_every=100))
    while True:
        try:
            seen.append(next(gen))
        except StopIteration as stop:
            model = stop.value
            break
    assert seen[-1].skipped == 1 and len(seen) == 12
    assert model.metadata["training"]["skipped_steps"] == 1
    for p in model.parameters():
        assert torch.isfinite(p).all()


def test_fine_tune_from_a_model(tmp_path):
    base, out = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    train(blobs(), base, tiny(steps=20), progress=False)
    train(blobs(seed=1), out, tiny(steps=10), init=str(base), progress=False)
    record = nfp.load_model(out).metadata["training"]
    assert record["init"] == str(base) and record["steps"] == 10
    assert record["previous"]["steps"] == 20  # the base model's training is kept with the fine-tune


def test_bad_data_is_rejected_clearly(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="cannot read image"):
        run_to_end(train_steps([bad], tiny()))
    bad_tiff = tmp_path / "broken.tif"  # tifffile's own error is a ValueError: still named with the file
    bad_tiff.write_bytes(b"not a TIFF either")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.tif: not a TIFF file"):
        run_to_end(train_steps([bad_tiff], tiny()))
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(small)
    with pytest.raises(ValueError, match="smaller than the 16x16 training patch"):
        run_to_end(train_steps([small], tiny()))
    with pytest.raises(FileNotFoundError):
        run_to_end(train_steps([tmp_path / "missing.tif"], tiny()))
    nan = np.full((64, 64), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        run_to_end(train_steps([nan], tiny()))
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    for bad, match in (({"steps": 0}, "steps must be a positive integer"),
                       ({"steps": None, "minutes": -1.0}, "minutes must be a positive number"),
                       ({"steps": None, "minutes": None}, "steps or a time budget"),
                       ({"lr": float("nan")}, "lr"), ({"batch": 0}, "batch")):
        with pytest.raises(ValueError, match=match):  # refused before any data is read
            run_to_end(train_steps([image], replace(tiny(), **bad)))


def test_level_step_finds_a_comb_but_not_a_sparse_image():
    from napari_flow_prior.training import level_step

    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (64, 64)) / 255
    assert level_step(full) == 1.0
    dim = rng.integers(0, 30, (64, 64))  # a dim 8-bit image with 30 levels, stretched to [0, 1]
    assert 7.0 <= level_step(np.round(dim * 255 / 29) / 255) <= 9.0
    # scattered levels (gaps of 1 to 6, like an MNIST digit) are no comb
    sparse = np.cumsum(rng.integers(1, 7, 60))
    assert level_step(rng.choice(sparse, (28, 28)) / 255) == 1.0
