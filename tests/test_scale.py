"""Scale: memory-saving gradients, tiles, dask arrays and the batch command."""

import json

import numpy as np
import pytest
import torch

import napari_flow_prior as nfp
from napari_flow_prior import operators as ops
from napari_flow_prior import tiling
from napari_flow_prior.flows.model import Chain

from .test_flows import perturb


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ------------------------------------------------------------------ memory-saving gradients
@pytest.mark.parametrize("kind,lu", [("glow", True), ("glow", False), ("realnvp", True), ("nice", True)])
def test_memory_saving_gradients_equal_autograd(kind, lu):
    model = perturb(nfp.build_model(kind, levels=2, steps=3, hidden=8, lu=lu, seed=0).double())
    x = torch.rand(2, 1, 12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grads(saving):
        model.memory_saving = saving
        model.zero_grad()
        v = x.clone().requires_grad_(True)
        out = model.log_prob(v)
        (out * torch.tensor([1.0, -0.5], dtype=torch.float64)).sum().backward()
        return out.detach(), v.grad, [p.grad for p in model.parameters()]

    out0, gx0, gp0 = grads(False)
    out1, gx1, gp1 = grads(True)
    assert model.memory_saving
    assert torch.allclose(out0, out1, rtol=1e-12)
    assert _rel(gx1, gx0) < 1e-4
    assert [g is None for g in gp0] == [g is None for g in gp1]
    for a, b in zip(gp1, gp0):
        if b is not None:
            assert _rel(a, b) < 1e-4


def test_memory_saving_with_frozen_parameters_and_cached_constants():
    model = perturb(nfp.build_model("glow", levels=2, steps=2, hidden=8, seed=0).double())
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    v0 = x.clone().requires_grad_(True)
    model.log_prob(v0).sum().backward()
    with model.memory_saving_mode(), model.cached_constants():
        v1 = x.clone().requires_grad_(True)
        model.log_prob(v1).sum().backward()
    assert not model.memory_saving  # restored by the context manager
    assert _rel(v1.grad, v0.grad) < 1e-4


def test_memory_saving_chain_stores_only_its_output():
    chain = perturb(Chain([layer for _ in range(6) for layer in (
        nfp.flows.layers.ActNorm(4), nfp.flows.layers.InvConv1x1LU(4), nfp.flows.layers.AffineCoupling(4, 8))]))
    chain.memory_saving = True
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y, ladj = chain(x)
    assert len(saved) == 1 and saved[0].shape == y.shape
    (y.sum() + ladj.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_build_model_memory_saving_flag_and_training_step():
    model = nfp.build_model("glow", levels=2, steps=2, hidden=8, seed=0, memory_saving=True).train()
    assert model.memory_saving and "memory_saving" not in model.architecture
    x = torch.rand(4, 1, 8, 8)
    for _ in range(2):  # the first pass initialises ActNorm (plain), the second saves memory
        model.zero_grad()
        (-model.log_prob(x).mean()).backward()
    with_grad = [p.grad is not None for p in model.parameters()]
    model.memory_saving = False
    model.zero_grad()
    (-model.log_prob(x).mean()).backward()
    assert with_grad == [p.grad is not None for p in model.parameters()] and sum(with_grad) > 10


# ------------------------------------------------------------------ tiles
@pytest.fixture(scope="module")
def tiny():
    return perturb(nfp.build_model("glow", levels=1, steps=2, hidden=8, seed=0), scale=0.05)


@pytest.fixture
def image():
    yy, xx = np.mgrid[0:64, 0:64]
    return (0.3 + 0.4 * np.sin(yy / 5.0) * np.cos(xx / 7.0) ** 2).astype(np.float32)


@pytest.mark.parametrize("kind", ["cs", "blur", "mask"])
def test_tiled_and_whole_image_agree_in_the_interior(tiny, image, kind):
    op = {"cs": lambda: ops.GaussianProjection(image.shape, ratio=0.5, seed=0, block=8),
          "blur": lambda: ops.Blur(image.shape, sigma=1.0),
          "mask": lambda: ops.Mask.random(image.shape, 0.5, seed=0)}[kind]()
    y = op.measure(image, noise_sigma=0.01, seed=0)
    kw = dict(noise_sigma=0.01, iterations=30, tol=0, init=np.full(image.shape, 0.5, np.float32))
    whole = nfp.reconstruct(y, op, tiny, tile=0, **kw)
    tiled = nfp.reconstruct(y, op, tiny, tile=32, overlap=16, **kw)
    assert tiled.params["tiles"] == 9 and whole.params["tile"] == 0
    diff = np.abs(whole.image - tiled.image)[8:-8, 8:-8]
    if kind == "mask":  # holes see only the prior, which couples neighbours over the iterations
        assert diff.mean() < 2e-3 and diff.max() < 0.05
    else:
        assert diff.max() < 5e-3
    assert abs(nfp.psnr(image, whole.image) - nfp.psnr(image, tiled.image)) < 0.05
    assert np.abs(whole.log_density - tiled.log_density)[8:-8, 8:-8].mean() < 0.05


def test_a_tile_inside_a_hole_is_filled_from_its_neighbours(tiny, image):
    missing = np.zeros(image.shape, bool)
    missing[10:54, 10:54] = True  # the centre tile (16:48, 16:48) observes nothing
    op = ops.Mask.from_missing(missing)
    y = op.measure(image, noise_sigma=0.01, seed=0)
    kw = dict(noise_sigma=0.01, iterations=30, tol=0, init=np.full(image.shape, 0.5, np.float32))
    whole = nfp.reconstruct(y, op, tiny, tile=0, **kw)
    tiled = nfp.reconstruct(y, op, tiny, tile=32, overlap=16, **kw)
    assert tiled.params["tiles"] == 9 and tiled.params["tiles_inside_holes"] == 1
    assert np.isfinite(tiled.image).all()
    assert np.abs(whole.image - tiled.image)[missing].mean() < 0.02
    blind = tiling.Tile(16, 48, 16, 48)
    with pytest.raises(ValueError, match="no solved tile overlaps"):
        tiling.restrict_to_neighbours(tiling.Blender(image.shape, 0), blind)
    blend = tiling.Blender(image.shape, 16)
    blend.add(tiling.Tile(0, 32, 0, 32), np.full((32, 32), 0.7))
    sub, y_t = tiling.restrict_to_neighbours(blend, blind)
    assert sub.observed_full.sum() == 16 * 16 and np.allclose(y_t[:16, :16], 0.7) and not y_t[16:].any()


def test_unaligned_tiles_are_an_error(tiny, image):
    op = ops.GaussianProjection(image.shape, ratio=0.5, seed=0, block=8)
    y = op.measure(image, seed=0)
    with pytest.raises(ValueError, match="multiples of 8"):
        nfp.reconstruct(y, op, tiny, tile=20, iterations=2)
    with pytest.raises(ValueError, match="align"):
        tiling.restrict(op, y, tiling.Tile(4, 36, 0, 32))
    with pytest.raises(ValueError, match="cannot be tiled"):
        mat = ops.Matrix(np.eye(16 * 16), (16, 16))
        tiling.restrict(mat, np.zeros(256), tiling.Tile(0, 8, 0, 8))


def test_restricted_projection_matches_the_whole_operator(image):
    op = ops.GaussianProjection((60, 52), ratio=0.3, seed=3, block=8)
    x = np.random.default_rng(0).random((60, 52)).astype(np.float32)
    y = op.forward(x)
    for t in tiling.plan_tiles(60, 52, 24, 8, 8):
        sub, y_t = tiling.restrict(op, y, t)
        assert np.allclose(sub.forward(x[t.slices]), y_t, atol=1e-5)


def test_plan_tiles_cover_and_blend_to_one():
    tiles = tiling.plan_tiles(70, 45, 32, 8, 4)
    cover = np.zeros((70, 45))
    for t in tiles:
        assert t.r0 % 4 == 0 and t.c0 % 4 == 0
        cover[t.slices] += 1
    assert cover.min() >= 1
    blend = tiling.Blender((70, 45), 8)
    for t in tiles:
        blend.add(t, np.full((t.r1 - t.r0, t.c1 - t.c0), 2.5))
    assert np.allclose(blend.result(), 2.5)


def test_memory_budget_chooses_tiles(tiny, image):
    op = ops.Mask.random(image.shape, 0.5, seed=0)
    y = op.measure(image, seed=0)
    big = nfp.reconstruct(y, op, tiny, iterations=2, memory_budget="8G")
    assert big.params["tile"] == 0
    need = tiling.estimate_solve_bytes(tiny, image.shape)
    small = nfp.reconstruct(y, op, tiny, iterations=2, memory_budget=need // 3)
    assert small.params["tiles"] > 1 and small.image.shape == image.shape
    assert tiling.parse_bytes("1.5K") == 1536 and tiling.default_memory_budget() > 0


# ------------------------------------------------------------------ dask
def test_dask_input_matches_numpy_and_runs_chunkwise(tiny):
    da = pytest.importorskip("dask.array")
    import dask
    from dask.callbacks import Callback

    rng = np.random.default_rng(0)
    stack = rng.random((4, 16, 16)).astype(np.float32)
    op = ops.Mask.random((16, 16), 0.5, seed=0)
    ys = np.stack([op.measure(p, noise_sigma=0.01, seed=i) for i, p in enumerate(stack)])
    reference = nfp.reconstruct_stack(ys, op, tiny, iterations=5, noise_sigma=0.01)
    lazy = nfp.reconstruct(da.from_array(ys, chunks=(1, 8, 8)), op, tiny, iterations=5, noise_sigma=0.01)
    assert isinstance(lazy.image, da.Array)

    class Count(Callback):
        def __init__(self):
            super().__init__()
            self.keys = []

        def _pretask(self, key, dsk, state):
            self.keys.append(str(key))

    with Count() as count, dask.config.set(scheduler="synchronous"):
        image, density = dask.compute(lazy.image, lazy.log_density)
    assert sum("nfp-reconstruct" in k for k in count.keys) == 4  # one task per chunk, each ran once
    np.testing.assert_allclose(image, reference.image, atol=1e-6)
    np.testing.assert_allclose(density, reference.log_density, atol=1e-4)

    maps = nfp.log_density(da.from_array(stack, chunks=(2, 8, 8)), tiny)
    assert maps.numblocks[0] == 2
    np.testing.assert_allclose(maps.compute(), np.stack([nfp.log_density(p, tiny) for p in stack]), atol=1e-5)


def test_dask_compressed_sensing_stack(tiny):
    da = pytest.importorskip("dask.array")
    op = ops.GaussianProjection((16, 16), ratio=0.5, seed=0, block=8)
    stack = np.random.default_rng(1).random((3, 16, 16)).astype(np.float32)
    ys = np.stack([op.measure(p, seed=i) for i, p in enumerate(stack)])
    lazy = nfp.reconstruct(da.from_array(ys, chunks=(2, -1)), op, tiny, iterations=3)
    assert lazy.image.shape == (3, 16, 16)
    np.testing.assert_allclose(lazy.image.compute(), nfp.reconstruct_stack(ys, op, tiny, iterations=3).image, atol=1e-6)
    assert lazy.std is None
    kw = dict(method="posterior", iterations=6, chains=2, noise_sigma=0.01)
    sampled = nfp.reconstruct(da.from_array(ys, chunks=(2, -1)), op, tiny, **kw)
    reference = nfp.reconstruct_stack(ys, op, tiny, **kw)
    np.testing.assert_allclose(sampled.image.compute(), reference.image, atol=1e-5)
    np.testing.assert_allclose(sampled.std.compute(), reference.std, atol=1e-5)


def test_zarr_stack_through_dask_matches_numpy(tmp_path, tiny):
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    op = ops.Mask.random((16, 16), 0.5, seed=0)
    planes = np.random.default_rng(2).random((3, 16, 16)).astype(np.float32)
    ys = np.stack([op.measure(p, noise_sigma=0.01, seed=i) for i, p in enumerate(planes)])
    store = zarr.open(str(tmp_path / "y.zarr"), mode="w", shape=ys.shape, chunks=(1, 16, 16), dtype="f4")
    store[:] = ys
    lazy = nfp.reconstruct(da.from_zarr(str(tmp_path / "y.zarr")), op, tiny, iterations=3, noise_sigma=0.01)
    lazy.image.to_zarr(str(tmp_path / "x.zarr"))  # computed chunk by chunk into a new store
    written = np.asarray(zarr.open(str(tmp_path / "x.zarr"), mode="r")[:])
    np.testing.assert_allclose(written, nfp.reconstruct_stack(ys, op, tiny, iterations=3, noise_sigma=0.01).image,
                               atol=1e-6)


# ------------------------------------------------------------------ batch command
@pytest.fixture
def batch_inputs(tmp_path):
    import tifffile

    model = tmp_path / "tiny.safetensors"
    nfp.save_model(nfp.build_model("glow", levels=2, steps=1, hidden=8, seed=0).eval(), model, domain="test")
    folder = tmp_path / "in"
    folder.mkdir()
    yy, xx = np.mgrid[0:16, 0:16]
    for i in range(3):
        tifffile.imwrite(folder / f"img{i}.tif", (1000 + 300 * i + 2000 * np.exp(-((yy - 5 - i) ** 2 + (xx - 8) ** 2) / 20)).astype(np.uint16))
    return folder, model


def _batch(folder, model, out):
    from napari_flow_prior.cli import main

    return main(["batch", str(folder), "--out", str(out), "--model", str(model), "--operator", "mask:0.5",
                 "--simulate", "--iterations", "2"])


def test_batch_resumes_and_reports_corrupted_files(tmp_path, batch_inputs, capsys):
    folder, model = batch_inputs
    (folder / "broken.tif").write_bytes(b"II*\x00 this is not a TIFF")
    out = tmp_path / "out"
    assert _batch(folder, model, out) == 1  # a failure is reported in the exit status ...
    report = json.loads((out / "batch_report.json").read_text())
    assert report["done"] == 3 and report["failed"] == 1  # ... without stopping the batch
    assert report["images"]["broken"]["status"] == "failed" and "broken.tif" in report["images"]["broken"]["error"]
    first = (out / "img0" / "reconstruction.tif").stat().st_mtime_ns
    (folder / "broken.tif").unlink()
    assert _batch(folder, model, out) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["skipped"] == 3 and report["done"] == 0
    assert (out / "img0" / "reconstruction.tif").stat().st_mtime_ns == first  # not redone
    # other settings into the same folder: refused, rather than skipping images made otherwise
    from napari_flow_prior.cli import main

    assert main(["batch", str(folder), "--out", str(out), "--model", str(model), "--operator", "blur:1",
                 "--simulate", "--iterations", "2"]) == 2
    assert "operator 'mask:0.5' -> 'blur:1'" in capsys.readouterr().err
    assert json.loads((out / "batch_report.json").read_text())["skipped"] == 3  # nothing touched


def test_batch_reads_a_zarr_stack(tmp_path, batch_inputs):
    zarr = pytest.importorskip("zarr")
    import tifffile

    folder, model = batch_inputs
    stack = np.stack([tifffile.imread(folder / f"img{i}.tif") for i in range(3)])
    source = tmp_path / "stack.zarr"
    store = zarr.open(str(source), mode="w", shape=stack.shape, chunks=(1, 16, 16), dtype=stack.dtype)
    store[:] = stack
    out = tmp_path / "out"
    assert _batch(source, model, out) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["done"] == 3 and report["failed"] == 0
    for i in range(3):
        assert tifffile.imread(out / f"plane_{i:06d}" / "reconstruction.tif").shape == (16, 16)
    assert _batch(source, model, out) == 0
    assert json.loads((out / "batch_report.json").read_text())["skipped"] == 3


def test_batch_reads_stack_files(tmp_path, batch_inputs):
    import tifffile

    folder, model = batch_inputs
    stack = np.stack([tifffile.imread(folder / f"img{i}.tif") for i in range(3)])
    source = tmp_path / "stacks"
    source.mkdir()
    tifffile.imwrite(source / "zstack.tif", stack, photometric="minisblack")  # (3, 16, 16): three planes
    np.save(source / "series.npy", stack[:2].reshape(2, 1, 16, 16))  # (2, 1, 16, 16): two planes
    tifffile.imwrite(source / "single.tif", stack[0])
    out = tmp_path / "out"
    assert _batch(source, model, out) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["done"] == 6 and report["failed"] == 0
    assert set(report["images"]) == {"single", "series_plane_000000", "series_plane_000001",
                                     *(f"zstack_plane_{i:06d}" for i in range(3))}
    for i in range(3):  # each plane measured and reconstructed on its own, like the file itself
        plane = json.loads((out / f"zstack_plane_{i:06d}" / "report.json").read_text())
        alone = json.loads((out / "single" / "report.json").read_text()) if i == 0 else None
        assert tifffile.imread(out / f"zstack_plane_{i:06d}" / "reconstruction.tif").shape == (16, 16)
        if alone:
            assert plane["metrics"]["flow"]["psnr"] == pytest.approx(alone["metrics"]["flow"]["psnr"], abs=1e-4)
    assert _batch(source / "zstack.tif", model, tmp_path / "one") == 0  # a stack file on its own
    assert json.loads((tmp_path / "one" / "batch_report.json").read_text())["done"] == 3


def test_batch_files_sharing_a_stem_get_their_own_outputs(tmp_path, batch_inputs):
    import tifffile

    folder, model = batch_inputs
    np.save(folder / "img0.npy", tifffile.imread(folder / "img1.tif"))  # img0.npy beside img0.tif
    out = tmp_path / "out"
    assert _batch(folder, model, out) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["done"] == 4 and report["skipped"] == 0  # neither is skipped as if finished
    assert set(report["images"]) == {"img0_tif", "img0_npy", "img1", "img2"}
    assert json.loads((out / "img0_npy" / "report.json").read_text())["image"].endswith("img0.npy")


def test_batch_interrupted_leaves_no_half_written_output(tmp_path, batch_inputs, monkeypatch):
    from pathlib import Path

    import tifffile

    folder, model = batch_inputs
    out = tmp_path / "out"
    real = tifffile.imwrite
    calls = {"n": 0}

    def flaky(path, data, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # the second image's second file: die half-way through the write
            Path(path).write_bytes(b"II*\x00half")
            raise KeyboardInterrupt
        return real(path, data, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", flaky)
    assert _batch(folder, model, out) == 130
    finals = [p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".part")]
    for p in finals:  # every final file is complete and readable
        if p.suffix == ".tif":
            assert np.isfinite(tifffile.imread(p)).all()
    assert not (out / "img1" / "report.json").exists()
    assert list(out.rglob("*.part"))  # the interrupted write stayed under its temporary name
    monkeypatch.setattr(tifffile, "imwrite", real)
    assert _batch(folder, model, out) == 0
    report = json.loads((out / "batch_report.json").read_text())
    assert report["skipped"] == 1 and report["done"] == 2 and not list(out.rglob("*.part"))


def test_batch_passes_the_optimisation_space(tmp_path, batch_inputs):
    from napari_flow_prior.batch import run_batch
    from napari_flow_prior.cli import main

    folder, model = batch_inputs
    out = tmp_path / "out"
    assert main(["batch", str(folder), "--out", str(out), "--model", str(model), "--operator", "mask:0.5",
                 "--simulate", "--iterations", "2", "--space", "latent", "--ensemble", "2"]) == 0
    params = json.loads((out / "img0" / "report.json").read_text())["params"]
    assert params["space"] == "latent" and params["ensemble"] == 2
    with pytest.raises(ValueError, match="space must be one of"):
        run_batch(folder, tmp_path / "bad", model=str(model), space="pixels", progress=False)
    with pytest.raises(ValueError, match="ensemble must be an integer"):
        run_batch(folder, tmp_path / "bad", model=str(model), ensemble=9, progress=False)
    with pytest.raises(ValueError, match="chains must be an integer"):
        run_batch(folder, tmp_path / "bad", model=str(model), method="posterior", chains=0, progress=False)
    assert not (tmp_path / "bad" / "img0").exists()


def test_batch_of_camera_images_as_photon_counts(tmp_path, batch_inputs):
    """--gain/--offset reach every image: each is scaled as counts and solved with the Poisson term."""
    from napari_flow_prior.cli import main

    folder, model = batch_inputs
    out = tmp_path / "out"
    assert main(["batch", str(folder), "--out", str(out), "--model", str(model), "--operator", "blur:1.0",
                 "--gain", "20", "--offset", "900", "--noise", "0", "--iterations", "2"]) == 0
    for i in range(3):
        report = json.loads((out / f"img{i}" / "report.json").read_text())
        assert report["params"]["photons"] > 0 and report["normalization"]["low"] == [900.0]
    settings = json.loads((out / "batch_report.json").read_text())["settings"]
    assert settings["gain"] == 20.0 and settings["offset"] == 900.0
