"""Model files: round trips, metadata, and clear errors for anything that is not a model file."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import napari_flow_prior as nfp
from napari_flow_prior.flows.files import METADATA_KEYS, read_metadata
from napari_flow_prior.flows.layers import ActNorm

from .test_flows import perturb


@pytest.fixture
def saved(tmp_path):
    model = perturb(nfp.build_model("glow", channels=1, levels=2, steps=2, hidden=8, seed=0))
    path = nfp.save_model(model, tmp_path / "m.safetensors", domain="test images",
                          normalization={"low_pct": 2.0, "high_pct": 99.0, "clip": True},
                          training={"seed": 0}, metrics={"val_bpd": 3.2})
    return model, path


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    loaded = nfp.load_model(path)
    x = torch.rand(2, 1, 13, 10)
    assert torch.equal(model.log_prob(x), loaded.log_prob(x))
    z = model.encode(x)
    assert torch.equal(model.decode(z), loaded.decode(z))
    assert loaded.metadata["domain"] == "test images"
    assert loaded.metadata["normalization"]["low_pct"] == 2.0
    assert loaded.metadata["metrics"] == {"val_bpd": 3.2}
    assert len(loaded.metadata["sha256"]) == 64
    meta = read_metadata(path)
    assert set(meta) == {"format_version", *METADATA_KEYS}
    assert meta["architecture"] == {"kind": "glow", "channels": 1, "levels": 2, "steps": 2, "hidden": 8, "lu": True}


def test_loaded_actnorm_never_reinitialises(saved):
    _, path = saved
    loaded = nfp.load_model(path).train()  # even in training mode
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    loaded.log_prob(torch.rand(4, 1, 8, 8) * 100)
    for name, value in loaded.state_dict().items():
        assert torch.equal(before[name], value), name
    assert all(bool(m.initialized) for m in loaded.modules() if isinstance(m, ActNorm))


@pytest.mark.parametrize("kind", ["realnvp", "nice"])
def test_other_kinds_round_trip(tmp_path, kind):
    model = perturb(nfp.build_model(kind, channels=3, levels=2, steps=1, hidden=8))
    path = nfp.save_model(model, tmp_path / f"{kind}.safetensors")
    x = torch.rand(1, 3, 8, 6)
    assert torch.equal(model.log_prob(x), nfp.load_model(path).log_prob(x))


def test_linear_round_trip(tmp_path):
    g = torch.randn(12, 12, dtype=torch.float64) + 3 * torch.eye(12, dtype=torch.float64)
    model = nfp.build_model("linear", matrix=g, shape=(1, 3, 4))
    path = nfp.save_model(model, tmp_path / "lin.safetensors")
    loaded = nfp.load_model(path)
    x = torch.randn(2, 1, 3, 4, dtype=torch.float64)
    assert loaded.dtype == torch.float64 and torch.equal(model.log_prob(x), loaded.log_prob(x))


def test_bad_files_give_clear_errors(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        nfp.load_model(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="not a napari-flow-prior model"):
        nfp.load_model(garbage)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign))
    with pytest.raises(ValueError, match="no format_version"):
        nfp.load_model(foreign)
    pickled = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(3)}, pickled)
    with pytest.raises(ValueError, match="not a napari-flow-prior model"):
        nfp.load_model(pickled)
    with pytest.raises(FileNotFoundError, match="available models"):
        nfp.load_model(tmp_path / "missing.safetensors")
    # weights that do not fit the recorded architecture
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    header["architecture"] = json.dumps({"kind": "glow", "channels": 1, "levels": 2, "steps": 3, "hidden": 8, "lu": True})
    mismatched = tmp_path / "mismatch.safetensors"
    save_file(nfp.load_model(path).state_dict(), str(mismatched), metadata=header)
    with pytest.raises(ValueError, match="do not match"):
        nfp.load_model(mismatched)


def test_non_finite_weights_are_refused(saved, tmp_path):
    model, _ = saved
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = nfp.save_model(model, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="non-finite"):
        nfp.load_model(path)


def test_user_models_are_listed(tmp_path, monkeypatch, saved):
    _, path = saved
    monkeypatch.setenv("NAPARI_FLOW_PRIOR_MODELS", str(tmp_path / "user"))
    nfp.save_model(nfp.load_model(path), tmp_path / "user" / "mine.safetensors")
    models = nfp.available_models()
    assert models["mine"] == tmp_path / "user" / "mine.safetensors"
    assert nfp.load_model("mine").metadata["name"] == "mine"
