"""The napari plugin with a real viewer (pytest-qt; headless under Xvfb via pytest-xvfb).

Every test uses a tiny Glow saved to a per-test user-models folder (NAPARI_FLOW_PRIOR_MODELS) and
32x32 images, so each runs in seconds on a CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import napari_flow_prior as nfp  # noqa: E402
from napari_flow_prior.plugin import OperatorSpec, run_reconstruction, run_to_end  # noqa: E402

pytestmark = pytest.mark.gui
PLUGIN = "napari-flow-prior"
WAIT_MS = 120_000


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    tiny = nfp.build_model("glow", levels=2, steps=1, hidden=8, seed=0)
    nfp.save_model(tiny, folder / "tiny.safetensors", domain="test patterns",
                   training={"n_images": 1}, metrics={"val_bpd": 7.5})
    rgb = nfp.build_model("glow", channels=3, levels=2, steps=1, hidden=8, seed=0)
    other = tmp_path_factory.mktemp("other")
    rgb_path = nfp.save_model(rgb, other / "rgb.safetensors", domain="rgb test")
    bad = other / "broken.safetensors"
    bad.write_bytes(b"this is not a model file")
    return {"folder": folder, "rgb": rgb_path, "bad": bad}


@pytest.fixture
def models(model_files, monkeypatch, tmp_path):
    user = tmp_path / "user-models"
    user.mkdir()
    (user / "tiny.safetensors").write_bytes((model_files["folder"] / "tiny.safetensors").read_bytes())
    monkeypatch.setenv("NAPARI_FLOW_PRIOR_MODELS", str(user))
    return {**model_files, "user": user}


def test_image(shape=(32, 32), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    base = 100 + 80 * np.sin(xx / 4.0) * np.cos(yy / 5.0)
    return (base + 5 * rng.standard_normal(shape)).astype(np.float32)


test_image.__test__ = False  # a helper, not a test


def names(viewer):
    return [layer.name for layer in viewer.layers]


def result(viewer, name):
    """The newest result layer named ``<name> [<method> #<run>]`` (each widget run adds its own)."""
    found = [layer for layer in viewer.layers if layer.name.startswith(name + " [")]
    assert found, f"no layer {name!r} [...] in {names(viewer)}"
    return max(found, key=lambda layer: int(layer.name.rpartition("#")[2].rstrip("]")))


def make_widget(viewer, cls_name):
    from napari_flow_prior import plugin

    widget = getattr(plugin, cls_name)(viewer)
    viewer.window.add_dock_widget(widget)
    return widget


def run_and_wait(qtbot, widget):
    worker = widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=WAIT_MS)
    return worker


def quick(widget, model="tiny", iterations=5):
    widget.model.select(model)
    widget.iterations.value = iterations
    widget.device.value = "cpu"


# --------------------------------------------------------------------------------- manifest
def test_manifest_discovered_and_widgets_open(make_napari_viewer, models):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert PLUGIN in pm, "the plugin is not installed: pip install -e . (npe2 finds it through its entry point)"
    manifest = pm.get_manifest(PLUGIN)
    assert manifest.display_name == "Flow Prior"
    assert {w.display_name for w in manifest.contributions.widgets} == {"Reconstruct", "Train prior", "Log-density"}
    assert {s.key for s in manifest.contributions.sample_data} == {"nuclei", "medical", "digits"}
    viewer = make_napari_viewer()
    for title in ("Reconstruct", "Train prior", "Log-density"):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
        assert widget is not None
    from napari_flow_prior.plugin import load_sample

    for key in ("nuclei", "medical", "digits"):
        viewer.open_sample(PLUGIN, key)
        assert viewer.layers[-1].data.ndim == 2
        np.testing.assert_array_equal(viewer.layers[-1].data, load_sample(key))
    assert len(viewer.layers) == 3


# --------------------------------------------------------------------------------- reconstruct
def test_reconstruct_end_to_end_updates_in_place(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    data = test_image()
    original = data.copy()
    layer = viewer.add_image(data, name="cells", scale=(2.0, 0.5), translate=(10.0, -3.0))
    widget = make_widget(viewer, "ReconstructWidget")
    assert widget.image.value is layer
    quick(widget)
    assert "test patterns" in widget.model.card.value and "7.500 bits/dim" in widget.model.card.value
    widget.baseline.value = True
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    expected = ["cells", "cells measurements [map #1]", "cells reconstruction [map #1]", "cells log-density [map #1]",
                "cells baseline [map #1]"]
    assert names(viewer) == expected
    for name in expected[1:]:
        out = viewer.layers[name]
        assert out.data.shape == (32, 32)
        assert np.allclose(out.scale, (2.0, 0.5)) and np.allclose(out.translate, (10.0, -3.0))
        info = out.metadata["napari_flow_prior"]
        assert info["model"] == "tiny" and len(info["model_sha256"]) == 64
        assert info["version"] == nfp.__version__ and info["operator_first_plane"]["kind"] == "mask"
    assert viewer.layers["cells log-density [map #1]"].metadata["napari_flow_prior"]["unit"] == "nats/pixel"
    assert "PSNR" in widget.metrics.value and "biharmonic" in widget.metrics.value
    # intensities come back in the input's units
    recon = result(viewer, "cells reconstruction").data
    assert 0.5 * original.mean() < recon.mean() < 1.5 * original.mean()
    np.testing.assert_array_equal(layer.data, original)

    # re-running (another operator) with 'replace' ticked updates the same layers instead of adding copies
    before = [id(viewer.layers[n]) for n in expected]
    widget.replace.value = True
    widget.operator.value = "blur"
    run_and_wait(qtbot, widget)
    expected = [n.replace("#1", "#2") for n in expected]
    assert names(viewer) == expected
    assert [id(viewer.layers[n]) for n in expected] == before
    assert result(viewer, "cells reconstruction").metadata["napari_flow_prior"]["operator"]["kind"] == "blur"
    np.testing.assert_array_equal(layer.data, original)

    # the optimisation space is offered for map only and reaches the solver
    assert not widget.space.native.isHidden()  # (not shown on screen, so .visible is False)
    widget.space.value = "latent"
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    assert result(viewer, "cells reconstruction").metadata["napari_flow_prior"]["params"]["space"] == "latent"
    widget.method.value = "latent"
    assert widget.space.native.isHidden()

    # so does the ensemble of symmetry frames
    widget.ensemble.value = 2
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    params = result(viewer, "cells reconstruction").metadata["napari_flow_prior"]["params"]
    assert params["ensemble"] == 2 and params["frames"] == [[0, False], [2, False]]

    # posterior sampling adds the samples' spread as a layer; chains are offered for it only
    assert widget.chains.native.isHidden()
    widget.ensemble.value = 1
    widget.method.value = "posterior"
    assert not widget.chains.native.isHidden() and widget.weight.native.isHidden()
    widget.chains.value = 3
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    assert sorted(names(viewer)) == sorted([n.replace("map #2", "posterior #5") for n in expected]
                                           + ["cells posterior std [posterior #5]"])
    spread = result(viewer, "cells posterior std")
    assert spread.data.shape == (32, 32) and (spread.data >= 0).all() and spread.data.max() > 0
    assert spread.metadata["napari_flow_prior"]["params"]["chains"] == 3


def test_cancel_mid_run_leaves_viewer_unchanged(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image((64, 64)), name="img")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=100_000)
    seen = []
    worker = widget.run()
    worker.yielded.connect(seen.append)
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=WAIT_MS)
    widget.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=10_000)
    assert names(viewer) == ["img"]
    assert widget.runner.last_message == "cancelled"
    assert len(seen) < 1000
    assert widget.run_button.enabled


def test_labels_mask_is_honoured(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    data = test_image()
    data[8:20, 10:22] = 0  # the damaged region
    original = data.copy()
    viewer.add_image(data, name="damaged")
    painted = np.zeros((32, 32), np.uint8)
    painted[8:20, 10:22] = 1
    viewer.add_labels(painted, name="defects")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=10)
    widget.image.value = viewer.layers["damaged"]
    widget.mode.value = "measured"
    widget.operator.value = "mask"
    widget.mask_source.value = viewer.layers["defects"]
    widget.method.value = "mle"
    widget.noise.value = "auto"
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    recon = result(viewer, "damaged reconstruction").data
    keep = painted == 0
    np.testing.assert_allclose(recon[keep], original[keep], rtol=0, atol=1e-3)
    assert not np.allclose(recon[~keep], 0)  # the painted pixels were filled in
    assert not any("measurements" in n for n in names(viewer))  # measured data is its own measurement
    np.testing.assert_array_equal(viewer.layers["damaged"].data, original)


def test_stack_gives_stack_and_rgb_runs_channel_by_channel(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    stack = np.stack([test_image(seed=i) for i in range(3)])
    viewer.add_image(stack, name="zstack", scale=(3.0, 1.0, 1.0))
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=3)
    run_and_wait(qtbot, widget)
    assert result(viewer, "zstack reconstruction").data.shape == (3, 32, 32)
    assert result(viewer, "zstack log-density").data.shape == (3, 32, 32)
    assert np.allclose(result(viewer, "zstack reconstruction").scale, (3.0, 1.0, 1.0))
    assert result(viewer, "zstack reconstruction").metadata["napari_flow_prior"]["planes"] == 3

    rgb = np.clip(np.stack([test_image(seed=i) for i in range(3)], -1), 0, 255).astype(np.uint8)
    viewer.add_image(rgb, name="colour", rgb=True)
    widget.image.value = viewer.layers["colour"]
    run_and_wait(qtbot, widget)
    out = result(viewer, "colour reconstruction")
    assert out.rgb and out.data.shape == (32, 32, 3)
    assert result(viewer, "colour log-density").data.shape == (32, 32)


def test_current_plane_only_equals_that_plane_of_the_whole_run(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    stack = np.stack([test_image(seed=i) for i in range(3)])
    viewer.add_image(stack, name="z", scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    painted = np.zeros(stack.shape, np.int32)
    painted[1, 4:12, 4:20] = 1  # painted on plane 1 only
    viewer.add_labels(painted, name="holes", scale=(2.0, 1.0, 1.0), translate=(10.0, 0.0, 0.0))
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=3)
    widget.image.value = viewer.layers["z"]
    assert not widget.planes.native.isHidden()  # offered for a stack
    for source in (None, "holes"):  # a random mask (seed per plane) and a painted stack
        widget.mask_source.value = None if source is None else viewer.layers[source]
        widget.planes.value = "all"
        run_and_wait(qtbot, widget)
        whole = result(viewer, "z reconstruction").data.copy()
        viewer.dims.set_point(0, 12.0)  # world z of plane 1
        widget.planes.value = "current"
        run_and_wait(qtbot, widget)
        one = result(viewer, "z (plane 1) reconstruction")
        assert one.data.shape == (1, 32, 32) and np.allclose(one.translate, (12.0, 0.0, 0.0))
        np.testing.assert_allclose(one.data[0], whole[1], atol=1e-5)
        assert one.metadata["napari_flow_prior"]["plane_offset"] == 1
    viewer.add_image(test_image(), name="flat")
    widget.image.value = viewer.layers["flat"]
    assert widget.planes.native.isHidden()


def test_error_paths_show_a_message_and_change_nothing(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget)
    # no image layer
    assert widget.run() is None
    assert "no image layer" in widget.runner.last_message and len(viewer.layers) == 0

    data = test_image()
    original = data.copy()
    viewer.add_image(data, name="gray")
    widget.image.value = viewer.layers["gray"]
    # a 3-channel model on a grayscale layer
    widget.model.select(str(models["rgb"]))
    assert "rgb test" in widget.model.card.value
    assert widget.run() is None
    assert "channel" in widget.runner.last_message
    # a file that is not a model
    widget.model.select(str(models["bad"]))
    assert "not a usable model" in widget.model.card.value
    assert widget.run() is None
    assert "not a napari-flow-prior model" in widget.runner.last_message
    # compressed sensing needs simulate mode
    widget.model.select("tiny")
    widget.operator.value = "cs"
    widget.mode.value = "measured"
    assert widget.run() is None and "simulate" in widget.runner.last_message
    assert names(viewer) == ["gray"]
    assert not widget.runner.running
    np.testing.assert_array_equal(viewer.layers["gray"].data, original)


def test_model_chooser_follows_the_layer(make_napari_viewer, qtbot, models):
    """Samples choose their shipped prior, result layers the model that made them (name or file);
    a plain layer leaves the user's choice alone. A new error clears the last run's figures."""
    viewer = make_napari_viewer()
    widget = make_widget(viewer, "ReconstructWidget")
    density = make_widget(viewer, "DensityWidget")
    assert widget.model.combo.value == "nuclei" == density.model.combo.value
    viewer.open_sample(PLUGIN, "digits")
    widget.image.value = density.image.value = viewer.layers["digits"]
    assert widget.model.value_source() == "digits" == density.model.value_source()

    viewer.add_image(test_image(), name="plain")
    quick(widget)
    widget.image.value = viewer.layers["plain"]
    assert widget.model.value_source() == "tiny"  # a plain layer names no model
    run_and_wait(qtbot, widget)
    assert "done in" in widget.metrics.value
    density.image.value = result(viewer, "plain reconstruction")
    assert density.model.value_source() == "tiny"

    widget.model.select(str(models["rgb"]))
    viewer.add_image(np.stack([test_image()] * 3, axis=-1), name="colour", rgb=True)
    widget.image.value = viewer.layers["colour"]
    run_and_wait(qtbot, widget)
    density.model.select("tiny")
    density.image.value = result(viewer, "colour reconstruction")
    assert density.model.value_source() == str(models["rgb"])  # a file outside the chooser's list

    widget.image.value = viewer.layers["plain"]  # grayscale layer, RGB model: an error
    assert widget.run() is None and widget.metrics.value == ""


# --------------------------------------------------------------------------------- density, training
def test_density_widget(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image((2, 32, 32)), name="pair", translate=(0, 5, 5))
    widget = make_widget(viewer, "DensityWidget")
    widget.model.select("tiny")
    widget.device.value = "cpu"
    run_and_wait(qtbot, widget)
    out = result(viewer, "pair log-density")
    assert out.data.shape == (2, 32, 32) and np.isfinite(out.data).all()
    assert np.allclose(out.translate, (0, 5, 5))
    assert out.metadata["napari_flow_prior"]["unit"] == "nats/pixel"
    assert "nats/pixel" in widget.status.value


def test_train_widget_saves_to_user_models(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image((64, 64)), name="train-me")
    trainer = make_widget(viewer, "TrainWidget")
    recon = make_widget(viewer, "ReconstructWidget")
    trainer.images.value = [viewer.layers["train-me"]]
    trainer.size.value = list(trainer.size.choices)[0]
    trainer.steps.value = 4
    trainer.patch.value = 16
    trainer.batch.value = 4
    trainer.device.value = "cpu"
    run_and_wait(qtbot, trainer)
    assert trainer.runner.last_message == "", trainer.runner.last_message
    assert trainer.model is not None and trainer.save_button.enabled
    assert "bits/dim" in trainer.status.value
    trainer.model_name.value = "my-prior"
    path = trainer.save()
    assert path == models["user"] / "my-prior.safetensors" and path.is_file()
    assert "my-prior" in recon.model.combo.choices  # appears at once
    assert "my-prior" in nfp.available_models()  # and after a restart
    again = make_widget(viewer, "ReconstructWidget")
    assert "my-prior" in again.model.combo.choices
    assert names(viewer) == ["train-me"]
    # a second save under the same name needs 'replace'; a shipped model's name is refused
    before = path.read_bytes()
    assert trainer.save() is None and "tick 'replace" in trainer.runner.last_message
    assert path.read_bytes() == before
    trainer.replace.value = True
    assert trainer.save() == path
    trainer.model_name.value = "nuclei"
    assert trainer.save() is None and "shipped model" in trainer.runner.last_message
    assert not (models["user"] / "nuclei.safetensors").exists()


def test_train_cancel_keeps_no_model(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image((64, 64)), name="train-me")
    trainer = make_widget(viewer, "TrainWidget")
    trainer.images.value = [viewer.layers["train-me"]]
    trainer.size.value = list(trainer.size.choices)[0]
    trainer.steps.value = 100_000
    trainer.patch.value = 16
    trainer.batch.value = 4
    trainer.device.value = "cpu"
    seen = []
    trainer.run().yielded.connect(seen.append)
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=WAIT_MS)
    trainer.cancel_button.clicked.emit()
    qtbot.waitUntil(lambda: not trainer.runner.running, timeout=10_000)
    assert trainer.model is None and not trainer.save_button.enabled
    assert trainer.runner.last_message == "cancelled"
    assert list(models["user"].iterdir()) == [models["user"] / "tiny.safetensors"]


def test_plain_functions_without_viewer(models):
    """The same work runs from a script: generator in, layer-data tuples out."""
    image = test_image()
    layers = run_to_end(run_reconstruction(image, "tiny", OperatorSpec("cs", ratio=0.3, block=16),
                                           iterations=3, device="cpu", name="x"))
    assert [kw["name"] for _, kw, _ in layers] == ["x measurements", "x reconstruction", "x log-density"]
    assert all(data.shape == (32, 32) for data, _, _ in layers)
    with pytest.raises(ValueError, match="for method 'map' only"):
        run_reconstruction(image, "tiny", OperatorSpec("cs"), method="latent", space="latent")
    with pytest.raises(ValueError, match="space must be one of"):
        run_reconstruction(image, "tiny", OperatorSpec("cs"), space="pixels")
    with pytest.raises(ValueError, match="ensemble must be an integer from 1 to 8"):
        run_reconstruction(image, "tiny", OperatorSpec("cs"), ensemble=16)


def test_training_on_rgb_layers(models):
    """A 1-channel model learns each colour channel as an image (a dim blue channel is scaled on
    its own); a 3-channel model the colour image; grayscale layers cannot feed an RGB model."""
    from napari_flow_prior.plugin import run_training

    colour = np.stack([test_image((64, 64)), test_image((64, 64), seed=1), 0.01 * test_image((64, 64), seed=2)], -1)
    kw = dict(steps=2, size={"levels": 2, "steps_per_level": 1, "hidden": 8}, patch=16, batch=4, device="cpu")
    gray = run_to_end(run_training([colour], rgb=[True], **kw))
    assert gray.channels == 1 and gray.metadata["training"]["n_images"] == 3  # one per colour
    assert np.isfinite(gray.metadata["metrics"]["val_bpd"])
    rgb = run_to_end(run_training([colour[None].repeat(2, 0)], rgb=[True], channels=3, **kw))
    assert rgb.channels == 3
    with pytest.raises(ValueError, match="grayscale layer but the model has 3"):
        run_training([colour[..., 0]], rgb=[False], channels=3, **kw)
    with pytest.raises(ValueError, match="last axis of 3 or 4"):
        run_training([colour[..., :2]], rgb=[True], **kw)


def test_shapes_mask_and_rgb_model(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    data = test_image()
    original = data.copy()
    viewer.add_image(data, name="scratched")
    viewer.add_shapes([np.array([[4, 6], [4, 14], [12, 14], [12, 6]])], shape_type="polygon", name="scratch")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=5)
    widget.image.value = viewer.layers["scratched"]
    widget.mode.value = "measured"
    widget.mask_source.value = viewer.layers["scratch"]
    widget.method.value = "mle"
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    recon = result(viewer, "scratched reconstruction").data
    np.testing.assert_allclose(recon[20:, 20:], original[20:, 20:], atol=1e-3)
    np.testing.assert_array_equal(viewer.layers["scratched"].data, original)

    # an RGB layer with an RGB (3-channel) model runs all channels at once
    rgb = np.clip(np.stack([test_image(seed=i) for i in range(3)], -1), 0, 255).astype(np.uint8)
    layers = run_to_end(run_reconstruction(rgb, str(models["rgb"]), OperatorSpec("blur", sigma=1.0),
                                           iterations=2, device="cpu", rgb=True, name="c"))
    assert layers[1][0].shape == (32, 32, 3) and layers[1][1]["rgb"]
    assert layers[1][1]["metadata"]["napari_flow_prior"]["channel_by_channel"] is False


def test_solver_fallback_is_shown(make_napari_viewer, qtbot, models):
    """A start the flow cannot invert (a checkerboard under the digit prior) is reported, not hidden."""
    viewer = make_napari_viewer()
    yy, xx = np.mgrid[0:28, 0:28]
    viewer.add_image(((yy + xx) % 2).astype(np.float32), name="checker")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, model="digits")
    widget.missing_fraction.value = 0.0  # every pixel observed: the warm start is the checkerboard
    widget.space.value = "latent"
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    assert "note: the warm start does not invert" in widget.metrics.value
    info = result(viewer, "checker reconstruction").metadata["napari_flow_prior"]
    assert "z = 0" in info["params"]["fallback"]


def test_photon_limited_simulation(make_napari_viewer, qtbot, models):
    """photons: shown for simulate with a mask or blur; Poisson noise in, the Poisson likelihood used."""
    viewer = make_napari_viewer()
    viewer.add_image(test_image(), name="cells")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget)
    widget.operator.value = "blur"
    assert not widget.photons.native.isHidden()  # (not shown on screen, so .visible is False)
    widget.mode.value = "measured"
    assert widget.photons.native.isHidden()
    widget.mode.value = "simulate"
    widget.photons.value = "-3"
    assert widget.run() is None and "photons must be a number > 0" in widget.runner.last_message
    widget.photons.value = "30"
    widget.baseline.value = True
    run_and_wait(qtbot, widget)
    assert "cells reconstruction [map #1]" in names(viewer) and "cells baseline [map #1]" in names(viewer)
    info = result(viewer, "cells reconstruction").metadata["napari_flow_prior"]
    assert info["params"]["photons"] == 30.0 and "PSNR" in widget.metrics.value
    widget.operator.value = "cs"
    assert widget.photons.native.isHidden()
    with pytest.raises(ValueError, match="simulate mode, with a mask or a blur"):
        run_reconstruction(test_image(), "tiny", OperatorSpec("blur"), mode="measured", photons=30.0)


def test_measured_photon_counts(make_napari_viewer, qtbot, models):
    """camera gain/offset: shown for measured data with a mask or blur; the layer is read as counts."""
    viewer = make_napari_viewer()
    counts = np.random.default_rng(0).poisson(30 * (0.2 + 0.6 * (test_image() - 20) / 160))
    data = (100 + 2.0 * counts).astype(np.float32)
    original = data.copy()
    viewer.add_image(data, name="camera")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget)
    widget.operator.value = "blur"
    assert widget.gain.native.isHidden()  # simulate mode
    widget.mode.value = "measured"
    assert not widget.gain.native.isHidden() and widget.photons.native.isHidden()
    widget.gain.value = "two"
    assert widget.run() is None and "camera gain must be" in widget.runner.last_message
    widget.gain.value, widget.offset.value = "2", "100"
    widget.noise.value = "0"
    run_and_wait(qtbot, widget)
    info = result(viewer, "camera reconstruction").metadata["napari_flow_prior"]
    assert info["params"]["photons"] == pytest.approx(np.percentile(counts, 99.8))
    recon = result(viewer, "camera reconstruction").data
    assert np.isfinite(recon).all() and abs(recon.mean() - data.mean()) < 0.2 * data.mean()
    np.testing.assert_array_equal(viewer.layers["camera"].data, original)
    with pytest.raises(ValueError, match="camera gain"):
        run_reconstruction(data, "tiny", OperatorSpec("blur"), mode="simulate", gain=2.0)


# --------------------------------------------------------------------------------- results to compare
def plugin_widget(viewer, title):
    """A widget docked as napari docks a plugin's (its viewer then is napari's public-only proxy)."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, title)
    return widget


def visible_results(viewer):
    return [layer.name for layer in viewer.layers if layer.visible and "napari_flow_prior" in layer.metadata]


def test_runs_keep_their_layers_to_compare(make_napari_viewer, qtbot, models):
    """Every run adds its own layers (method and run number in the name); the Log-density widget
    does not touch the Reconstruct run's map; only the newest reconstruction is shown."""
    viewer = make_napari_viewer()
    viewer.add_image(test_image(), name="cells")
    recon = plugin_widget(viewer, "Reconstruct")
    density = plugin_widget(viewer, "Log-density")
    quick(recon, iterations=3)
    recon.baseline.value = True
    run_and_wait(qtbot, recon)
    first = {n: viewer.layers[n] for n in names(viewer)[1:]}
    assert list(first) == ["cells measurements [map #1]", "cells reconstruction [map #1]",
                           "cells log-density [map #1]", "cells baseline [map #1]"]
    kept = {n: (layer.data.copy(), tuple(layer.contrast_limits)) for n, layer in first.items()}
    assert visible_results(viewer) == ["cells reconstruction [map #1]"]  # the baseline no longer hides it
    assert first["cells reconstruction [map #1]"].metadata["napari_flow_prior"]["run"] == "map #1"
    # the status line says what landed; "done" only once, beside the figures
    assert "run map #1: 4 layer(s) added" in recon.status.value and "done" not in recon.status.value
    assert recon.metrics.value.startswith("map #1 done in")

    density.model.select("tiny")
    density.device.value = "cpu"
    density.image.value = viewer.layers["cells"]
    run_and_wait(qtbot, density)
    assert "cells log-density [density #2]" in names(viewer)
    recon.method.value = "latent"
    run_and_wait(qtbot, recon)
    assert "cells reconstruction [latent #3]" in names(viewer)
    for n, (data, limits) in kept.items():  # nothing of run 1 was replaced or rescaled
        assert viewer.layers[n] is first[n]
        np.testing.assert_array_equal(viewer.layers[n].data, data)
        assert tuple(viewer.layers[n].contrast_limits) == limits
    assert visible_results(viewer) == ["cells reconstruction [latent #3]"]
    assert viewer.layers["cells"].visible

    # 'side by side': the input and the last run in a grid; unticked, back to one reconstruction
    recon.side_by_side.value = True
    grid = getattr(viewer, "canvas", viewer).grid
    assert grid.enabled
    shown = [layer.name for layer in viewer.layers if layer.visible]
    assert shown == ["cells"] + [f"cells {what} [latent #3]" for what in
                                 ("measurements", "baseline", "reconstruction", "log-density")]  # grid cells
    recon.side_by_side.value = False
    assert not grid.enabled and visible_results(viewer) == ["cells reconstruction [latent #3]"]


def test_one_titled_colorbar_at_a_time(make_napari_viewer, qtbot, models):
    from napari_flow_prior.plugin._layers import _text_overlay, density_limits

    viewer = make_napari_viewer()
    viewer.add_image(test_image(), name="cells")
    recon = plugin_widget(viewer, "Reconstruct")
    density = plugin_widget(viewer, "Log-density")
    quick(recon, iterations=3)
    density.model.select("tiny")
    density.device.value = "cpu"
    run_and_wait(qtbot, recon)
    run_and_wait(qtbot, density)
    run_and_wait(qtbot, density)
    maps = [layer for layer in viewer.layers if "log-density" in layer.name]
    assert [m.name for m in maps] == ["cells log-density [density #3]", "cells log-density [density #2]",
                                      "cells log-density [map #1]"]  # each next to the input, newest first
    def bars():
        return [m.name for m in maps if m.colorbar.visible]
    title = _text_overlay(viewer)
    assert bars() == ["cells log-density [density #3]"]  # the newest run's; earlier runs are hidden
    assert not maps[1].visible and not maps[2].visible
    assert title.visible and "cells log-density [density #3]" in title.text and "nats/pixel" in title.text
    maps[2].visible = True  # higher in the layer list: its colorbar takes over
    assert bars() == ["cells log-density [map #1]"] and "[map #1]" in title.text
    maps[2].visible = maps[0].visible = False
    assert bars() == [] and not title.visible
    maps[2].visible = True
    # round limits, so the colorbar's ticks sit on its ends (not a lone "0")
    lo, hi = maps[2].contrast_limits
    assert (lo, hi) == density_limits(maps[2].data)
    assert density_limits(np.linspace(-3.7, 0.4, 1000)) == (-4.0, 2.0)
    assert density_limits(np.linspace(2.03, 2.91, 1000)) == (2.0, 3.0)
    assert density_limits(np.full(5, 1.0)) == (0.5, 1.5)


def test_replace_is_a_choice_in_both_widgets(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image(), name="cells")
    density = make_widget(viewer, "DensityWidget")
    density.model.select("tiny")
    density.device.value = "cpu"
    run_and_wait(qtbot, density)
    run_and_wait(qtbot, density)
    assert names(viewer) == ["cells", "cells log-density [density #2]", "cells log-density [density #1]"]
    first = viewer.layers["cells log-density [density #2]"]
    density.replace.value = True
    run_and_wait(qtbot, density)
    assert names(viewer) == ["cells", "cells log-density [density #3]", "cells log-density [density #1]"]
    assert viewer.layers["cells log-density [density #3]"] is first  # updated in place


def test_reconstruct_dock_fits_a_900px_screen(make_napari_viewer, qtbot, models):
    """Advanced settings fold away; with Reconstruct and Log-density docked the window needs < 900 px."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(test_image(), name="cells")
    widget = make_widget(viewer, "ReconstructWidget")
    make_widget(viewer, "DensityWidget")
    qtbot.wait(50)
    folded = widget.native.minimumSizeHint().height()
    assert folded < 520, folded  # was 697 with every setting shown
    assert viewer.window._qt_window.minimumSizeHint().height() < 900
    assert widget.advanced.native.isHidden()
    widget.show_advanced.value = True
    assert not widget.advanced.native.isHidden() and widget.native.minimumSizeHint().height() > folded
    widget.method.value = "posterior"
    assert not widget.chains.native.isHidden()


def test_measured_nan_pixels_are_the_mask(make_napari_viewer, qtbot, models):
    """Measured data, no mask layer: the NaN/inf pixels are the missing ones, with a note of how many."""
    viewer = make_napari_viewer()
    data = test_image()
    data[8:14, 10:20] = np.nan
    data[30, 0] = np.inf
    original = data.copy()
    viewer.add_image(data, name="holes")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget, iterations=5)
    widget.mode.value = "measured"
    widget.method.value = "mle"
    widget.noise.value = "auto"
    assert widget.mask_source.value is None and widget.missing_fraction.native.isHidden()
    run_and_wait(qtbot, widget)
    assert widget.runner.last_message == "", widget.runner.last_message
    out = result(viewer, "holes reconstruction")
    assert np.isfinite(out.data).all()
    keep = np.isfinite(original)
    np.testing.assert_allclose(out.data[keep], original[keep], rtol=0, atol=1e-3)
    assert "note: 61 NaN/infinite pixel(s) of the layer taken as the missing pixels" in widget.metrics.value
    assert out.metadata["napari_flow_prior"]["missing_from"].startswith("61 ")
    np.testing.assert_array_equal(viewer.layers["holes"].data, original)  # NaN == NaN here
    # no NaN and no mask layer: measured data needs its missing pixels named
    with pytest.raises(ValueError, match="leave them NaN in the layer"):
        run_reconstruction(test_image(), "tiny", OperatorSpec("mask"), mode="measured", noise_sigma="auto")


def test_one_minimum_image_size(make_napari_viewer, qtbot, models):
    """The library, the plugin functions and the widget refuse a too-small image with one message."""
    import napari_flow_prior.solvers.checks as checks

    assert checks.MIN_SIDE == 8
    with pytest.raises(ValueError, match="images need at least 8x8 pixels, got 1x1"):
        nfp.reconstruct(np.full((1, 1), 0.5, np.float32), nfp.operators.Mask.random((1, 1), 0.5), "tiny")
    with pytest.raises(ValueError, match="layer 'x': images need at least 8x8 pixels, got 7x32"):
        run_reconstruction(test_image((7, 32)), "tiny", OperatorSpec("blur"), name="x")
    viewer = make_napari_viewer()
    viewer.add_image(test_image((4, 4)), name="tiny image")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget)
    assert widget.run() is None
    assert widget.runner.last_message == "layer 'tiny image': images need at least 8x8 pixels, got 4x4"


def test_run_summary_shows_the_selection_when_there_is_one():
    from napari_flow_prior.plugin._reconstruct import run_summary

    info = {"run": "map #4", "seconds": 1.234, "device": "cpu", "metrics": {}, "params": {}}
    assert run_summary(info) == "map #4 done in 1.2 s on cpu"
    info["params"] = {"selection": {"weight": 0.123456, "iterations": 40, "adapt": True, "held_out_score": 0.51234,
                                    "default_weight": 0.3, "default_iterations": 100, "held_out": 0.15,
                                    "grid": [{"weight": 0.3, "adapt": False, "scores": [[0, 0.6]]}]}}
    text = run_summary(info)
    assert "grid" not in text and text.count("\n") == 1  # the table stays in the metadata
    assert text.splitlines()[1] == ("selection: prior weight 0.123 (default 0.3), 40 iterations (default 100), "
                                    "adapted flow, held-out misfit 0.5123")
    info["params"] = {"selection": {"skipped": "weight and iterations given by the caller"}}
    assert run_summary(info).splitlines()[1] == "selection: weight and iterations given by the caller"
    info["params"] = {"selection": "not a dict"}
    assert "selection" not in run_summary(info)


def test_the_widget_shows_the_selection_and_can_turn_it_off(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(test_image(), name="cells")
    widget = make_widget(viewer, "ReconstructWidget")
    quick(widget)
    assert widget.select.value is True  # on by default, in the advanced section
    run_and_wait(qtbot, widget)
    chosen = result(viewer, "cells reconstruction").metadata["napari_flow_prior"]["params"]["selection"]
    assert chosen["default_iterations"] == 5 and "grid" in chosen
    assert "\nselection: prior weight" in widget.metrics.value
    widget.select.value = False
    run_and_wait(qtbot, widget)
    params = viewer.layers["cells reconstruction [map #2]"].metadata["napari_flow_prior"]["params"]
    assert "selection" not in params and "selection" not in widget.metrics.value
