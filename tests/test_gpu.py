"""GPU-only checks (skipped without CUDA): the CUDA-graph solver path gives the plain path's
answer for every method and operator, memory-saving gradients included."""

import warnings

import numpy as np
import pytest
import torch

import napari_flow_prior as nfp
from napari_flow_prior import operators as ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("method", ["map", "latent", "mle"])
@pytest.mark.parametrize("kind", ["mask", "blur", "cs"])
@pytest.mark.parametrize("saving", [False, True])
def test_cuda_graph_matches_plain_solve(method, kind, saving):
    if method == "mle" and kind == "blur":
        pytest.skip("mle needs a mask or projection")
    rng = np.random.default_rng(0)
    image = np.clip(0.5 + 0.2 * rng.standard_normal((32, 48)), 0, 1).astype(np.float32)
    op = {"mask": ops.Mask.random(image.shape, 0.6, seed=0), "blur": ops.Blur(image.shape, sigma=1.5),
          "cs": ops.GaussianProjection(image.shape, ratio=0.3, seed=0, block=16)}[kind]
    y = op.measure(image, 0.01, seed=0)
    model = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture warns: make it fail the test
        kw = dict(method=method, iterations=30, tol=0, device="cuda", memory_saving=saving, tile=0)
        graphed = nfp.reconstruct(y, op, model, cuda_graph=True, **kw)
    plain = nfp.reconstruct(y, op, model, cuda_graph=False, **kw)
    assert graphed.params["cuda_graph"] and not plain.params["cuda_graph"]
    np.testing.assert_allclose(graphed.losses, plain.losses, rtol=1e-3, atol=1e-5)
    assert np.abs(graphed.image - plain.image).max() < 1e-3


def test_cuda_graph_cancel_and_tiles():
    image = np.full((64, 64), 0.4, np.float32)
    op = ops.Mask.random(image.shape, 0.5, seed=0)
    model = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=0)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(nfp.Cancelled):
        nfp.reconstruct(op.forward(image), op, model, device="cuda", iterations=50, cancel=cancel)
    tiled = nfp.reconstruct(op.forward(image), op, model, device="cuda", iterations=10, tile=32, overlap=8)
    assert np.isfinite(tiled.image).all() and tiled.params["tiles"] > 1


if __name__ == "__main__":  # for machines without pytest: run every case, print failures
    import itertools
    import traceback

    failures = 0
    cases = [lambda a=a: test_cuda_graph_matches_plain_solve(*a)
             for a in itertools.product(["map", "latent", "mle"], ["mask", "blur", "cs"], [False, True])
             if a[:2] != ("mle", "blur")] + [test_cuda_graph_cancel_and_tiles]
    for case in cases:
        try:
            case()
        except Exception:  # noqa: BLE001
            failures += 1
            traceback.print_exc()
    print(f"{len(cases) - failures} passed, {failures} failed")
