import numpy as np
import pytest
import torch

import napari_flow_prior as nfp

# The tests use tiny tensors, where intra-op threads cost more than they give (and fight with
# BLAS threads loaded by scipy): one thread keeps the suite fast and its timings stable.
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    """A tiny Glow fitted for a few steps to smooth blobs, so its prior means something (the solver
    tests'; a module with its own ``model`` fixture uses that one)."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    centres = torch.rand(128, 2) * 16
    data = torch.exp(-((yy - centres[:, 0, None, None]) ** 2 + (xx - centres[:, 1, None, None]) ** 2) / 20)[:, None]
    m = nfp.build_model("glow", levels=2, steps=2, hidden=16, seed=0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(60):
        batch = (torch.round(data[torch.randint(0, 128, (32,))] * 255) + torch.rand(32, 1, 16, 16)) / 256
        loss = -m.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture
def image():
    yy, xx = np.mgrid[0:16, 0:16]
    return (0.15 + 0.7 * np.exp(-((yy - 7.0) ** 2 + (xx - 9.0) ** 2) / 18)).astype(np.float32)
