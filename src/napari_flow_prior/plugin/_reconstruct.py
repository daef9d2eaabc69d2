"""The Reconstruct widget: a thin skin over :func:`run_reconstruction`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    SpinBox,
    create_widget,
)

from ._common import JobRunner, ModelChooser, buttons, current_plane, layer_geometry, row
from ..solvers.select import summary
from ._core import METHODS, OperatorSpec, run_reconstruction
from ._layers import is_result, next_run_number, put_run, side_by_side, tag_run

if TYPE_CHECKING:
    import napari

OPERATOR_CHOICES = [("inpainting (mask)", "mask"), ("deblurring (blur)", "blur"),
                    ("compressed sensing (random projections)", "cs")]


class ReconstructWidget(Container):
    """Reconstruct the chosen image layer from (simulated or measured) measurements."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        import napari

        import napari_flow_prior as nfp

        self.viewer = viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ModelChooser()
        self.image.changed.connect(self.model.follow_layer)  # a sample or result layer names its prior
        self.model.follow_layer(self.image.value)
        self.mode = ComboBox(label="mode", choices=[("simulate from a clean image", "simulate"),
                                                         ("measured data", "measured")], value="simulate",
                                 tooltip="simulate: the layer is ground truth, measured here first; "
                                         "measured: the layer already is the measurement")
        self.planes = ComboBox(label="planes", choices=[("all planes", "all"), ("current plane only", "current")],
                               value="all", tooltip="a stack: every plane, or only the one on screen (a quick "
                                                    "preview; it equals that plane of an all-planes run)")
        self.operator = ComboBox(label="operator", choices=OPERATOR_CHOICES, value="mask")
        self.mask_source = ComboBox(label="missing pixels", choices=self._mask_choices,
                                    tooltip="a Labels/Shapes layer: painted = missing; or none: random pixels "
                                            "(simulate), the layer's NaN/inf pixels (measured data)")
        self.missing_fraction = FloatSpinBox(label="missing fraction", value=0.8, min=0.0, max=0.99, step=0.05)
        self.psf_source = ComboBox(label="PSF", choices=self._psf_choices,
                                   tooltip="a Gaussian of the given sigma, or a PSF image layer")
        self.sigma = FloatSpinBox(label="blur sigma", value=2.0, min=0.1, max=20.0, step=0.5)
        self.ratio = FloatSpinBox(label="ratio m/n", value=0.2, min=0.01, max=1.0, step=0.05)
        self.block = SpinBox(label="block size", value=32, min=4, max=256)
        self.noise = LineEdit(label="noise sigma", value="0.01",
                              tooltip="noise standard deviation on the [0, 1] scale, or 'auto' (measured data)")
        self.photons = LineEdit(label="photons", value="",
                                tooltip="simulate, mask or blur: empty for Gaussian noise, or the expected photon "
                                        "count at intensity 1 for Poisson (shot) noise, with noise sigma as read "
                                        "noise; the solve then uses the Poisson likelihood")
        self.photons.native.setPlaceholderText("empty: Gaussian noise")
        self.gain = LineEdit(label="camera gain", value="",
                             tooltip="measured, mask or blur: empty for ordinary data, or the camera's units per "
                                     "detected photon: the layer is then read as photon counts, (data - offset) / "
                                     "gain, and solved with the Poisson likelihood (noise sigma: the read noise)")
        self.gain.native.setPlaceholderText("empty: not photon counts")
        self.offset = LineEdit(label="camera offset", value="0",
                               tooltip="with a camera gain: the camera's baseline (dark level), in the layer's units")
        self.method = ComboBox(label="method", choices=list(METHODS), value="map",
                               tooltip="map: likelihood-regularized MAP (default); latent: optimise the "
                                       "latent code; mle: most likely image that fits exactly; posterior: "
                                       "the mean of posterior samples, and their spread as an uncertainty map")
        self.iterations = SpinBox(label="iterations", value=0, min=0, max=100000,
                                  tooltip="0 = the method's default")
        self.weight = LineEdit(label="prior weight", value="default",
                               tooltip="'default' or a number: lambda (map) or gamma (latent)")
        self.space = ComboBox(label="optimise in", choices=[("model default", None), ("image space", "image"),
                                                             ("latent space", "latent")], value=None,
                              tooltip="map only: optimise the image itself or its latent code z (x = G(z)); "
                                      "each shipped model carries the choice its validation images preferred")
        self.ensemble = ComboBox(label="ensemble", choices=[("model default", None), ("1 solve", 1), ("2 frames", 2),
                                                            ("4 frames", 4), ("8 frames", 8)], value=None,
                                 tooltip="average solves with the prior turned and mirrored: a better estimate, "
                                         "as many times slower; each shipped model carries its own choice")
        self.chains = SpinBox(label="chains", value=8, min=1, max=64,
                              tooltip="posterior: Langevin chains sampled together (more: a smoother mean "
                                      "and spread, proportionally slower)")
        self.select = CheckBox(text="choose weight and iterations per image", value=True,
                               tooltip="map, mask or blur: solve on part of the measurements with a few prior weights "
                                       "and score the held-out rest, then refit with the best (about 2x the time); "
                                       "off: the model's fixed defaults")
        self.device = ComboBox(label="device", choices=nfp.available_devices(), value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.baseline = CheckBox(text="also run the matching classical baseline", value=False)
        self.run_button, self.cancel_button, self.status = buttons("Run")
        self.replace = CheckBox(text="replace my previous run (else: new layers)", value=False,
                                tooltip="off: every run adds its own layers, named with the method and run number, "
                                        "to compare; on: this run's layers take the place of this widget's last run")
        self.side_by_side = CheckBox(text="side by side", value=False,
                                     tooltip="napari's grid mode: the input and each output of the last run in a cell "
                                             "of its own (other layers hidden); untick to overlay them again")
        self.metrics = Label(value="")
        self.metrics.native.setWordWrap(True)
        self.advanced = Container(widgets=[
            self.method, self.select, self.iterations, self.weight, self.space, self.ensemble, self.chains, self.device,
            self.seed])
        self.advanced.margins = (0, 0, 0, 0)
        self.show_advanced = CheckBox(text="advanced: method, selection, iterations, weight, space, ensemble, device, "
                                           "seed",
                                      value=False)
        self.advanced.visible = False
        self.show_advanced.changed.connect(lambda on: setattr(self.advanced, "visible", bool(on)))
        super().__init__(widgets=[
            self.image, self.model, self.mode, self.planes, self.operator, self.mask_source, self.missing_fraction,
            self.psf_source, self.sigma, self.ratio, self.block, self.noise, self.photons, self.gain, self.offset,
            self.show_advanced, self.advanced, self.baseline, self.replace,
            row(self.run_button, self.cancel_button, self.side_by_side), self.status, self.metrics,
        ])
        self.last_run: list = []  # the layers of this widget's last run
        self.last_source = None
        self.runner = JobRunner(self.status, self.run_button, self.cancel_button)
        for w in (self.image, self.operator, self.mode, self.mask_source, self.psf_source, self.method):
            w.changed.connect(self._sync_visibility)
        self.run_button.changed.connect(self.run)
        self.side_by_side.changed.connect(self._side_by_side)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._follow_active()
        self._sync_visibility()

    # choices ----------------------------------------------------------------------------
    def _mask_choices(self, *_):
        from napari.layers import Labels, Shapes

        return [("random", None)] + [(layer.name, layer) for layer in self.viewer.layers
                                     if isinstance(layer, (Labels, Shapes))]

    def _psf_choices(self, *_):
        from napari.layers import Image

        return [("gaussian (sigma)", None)] + [(layer.name, layer) for layer in self.viewer.layers
                                               if isinstance(layer, Image) and layer.ndim == 2 and not layer.rgb]

    def _follow_active(self, *_):
        from napari.layers import Image

        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and not is_result(active):
            try:
                self.image.reset_choices()
                if active in self.image.choices:
                    self.image.value = active
            except RuntimeError:  # the widget was closed, the viewer lives on
                self.viewer.layers.selection.events.active.disconnect(self._follow_active)

    def _photons_apply(self) -> bool:
        """Poisson noise is simulated, for a mask or a blur (measured counts are not kept on the
        [0, 1] scale by the normalisation)."""
        return self.mode.value == "simulate" and self.operator.value in ("mask", "blur")

    def _counts_apply(self) -> bool:
        """Measured photon counts: measured data, a mask or a blur."""
        return self.mode.value == "measured" and self.operator.value in ("mask", "blur")

    def _sync_visibility(self, *_):
        kind = self.operator.value
        image = self.image.value
        self.planes.visible = image is not None and image.ndim > 2
        self.mask_source.visible = kind == "mask"
        self.missing_fraction.visible = (kind == "mask" and self.mask_source.value is None
                                         and self.mode.value == "simulate")
        self.psf_source.visible = kind == "blur"
        self.sigma.visible = kind == "blur" and self.psf_source.value is None
        self.ratio.visible = self.block.visible = kind == "cs"
        self.photons.visible = self._photons_apply()
        self.gain.visible = self.offset.visible = self._counts_apply()
        self.space.visible = self.method.value == "map"
        self.chains.visible = self.method.value == "posterior"
        self.weight.visible = self.method.value in ("map", "latent")

    # run --------------------------------------------------------------------------------
    def _missing_from_layer(self, layer, image) -> np.ndarray:
        from napari.layers import Shapes

        spatial = image.data.shape[:-1] if image.rgb else image.data.shape
        if isinstance(layer, Shapes):
            if len(layer.data) == 0:
                raise ValueError(f"the Shapes layer {layer.name!r} has no shapes: draw the missing regions")
            hw = tuple(spatial[-2:])
            if layer.ndim == 2:
                return np.asarray(layer.to_masks(mask_shape=hw)).any(axis=0)
            return np.asarray(layer.to_labels(labels_shape=tuple(spatial))) > 0
        missing = np.asarray(layer.data) != 0
        if not missing.any():
            raise ValueError(f"nothing is painted in the Labels layer {layer.name!r}: paint the missing pixels")
        return missing

    def build_job(self):
        """Check the settings and return the generator (raises ValueError for the user)."""
        image = self.image.value
        if image is None:
            raise ValueError("no image layer: open or choose an image layer first")
        if image.multiscale:
            raise ValueError(f"{image.name!r} is a multiscale (pyramid) layer: open one resolution "
                             "level as its own layer to reconstruct it")
        source = self.model.value_source()
        if source is None:
            raise ValueError("choose a model file (.safetensors)")
        kind = self.operator.value
        spec = OperatorSpec(kind=kind, missing_fraction=float(self.missing_fraction.value),
                            sigma=float(self.sigma.value), ratio=float(self.ratio.value),
                            block=int(self.block.value))
        data, name, geometry, offset = image.data, image.name, layer_geometry(image), 0
        plane = current_plane(image, self.viewer) if image.ndim > 2 and self.planes.value == "current" else None
        if kind == "mask" and self.mask_source.value is not None:
            spec.missing = self._missing_from_layer(self.mask_source.value, image)
            if plane is not None and spec.missing.shape[:-2] == image.data.shape[:len(plane)]:
                spec.missing = spec.missing[plane]  # the painted stack's plane
        if plane is not None:  # one plane, kept at its place in the stack (length-1 stack axes)
            data = np.asarray(data[plane])[(None,) * len(plane)]
            shift = [i * s for i, s in zip(plane, geometry["scale"])] + [0.0, 0.0]
            geometry["translate"] = tuple(t + d for t, d in zip(geometry["translate"], shift))
            name = f"{image.name} (plane {', '.join(map(str, plane))})"
            offset = int(np.ravel_multi_index(plane, image.data.shape[:len(plane)]))  # seeds as in an all-planes run
        if kind == "blur" and self.psf_source.value is not None:
            spec.psf = np.asarray(self.psf_source.value.data, np.float64)
        weight = self.weight.value.strip().lower() if self.method.value in ("map", "latent") else ""
        try:
            weight = None if weight in ("", "default", "auto") else float(weight)
        except ValueError:
            raise ValueError(f"prior weight must be a number or 'default', got {weight!r}") from None
        contrast = tuple(image.contrast_limits) if not image.rgb else None
        return run_reconstruction(
            data, source, spec, mode=self.mode.value, noise_sigma=self.noise.value,
            photons=self.photons.value if self._photons_apply() else None,
            gain=self.gain.value if self._counts_apply() else None,
            offset=self.offset.value if self._counts_apply() else 0.0,
            method=self.method.value, select=bool(self.select.value), iterations=int(self.iterations.value) or None,
            weight=weight,
            space=self.space.value if self.method.value == "map" else None, ensemble=self.ensemble.value,
            chains=int(self.chains.value) if self.method.value == "posterior" else None, device=self.device.value,
            seed=int(self.seed.value), plane_offset=offset, baseline=bool(self.baseline.value),
            name=name, rgb=bool(image.rgb), layer_kwargs=geometry,
            image_kwargs={"contrast_limits": contrast} if contrast else None,
            cancel=self.runner.is_cancelled)

    def run(self, *_):
        """Start a reconstruction in the background (returns the worker, or None on bad input)."""
        if self.runner.running:
            return None
        self.metrics.value = ""  # the last run's figures must not stand beside a new error
        try:
            gen = self.build_job()
        except ValueError as err:
            self.runner.message(str(err))
            return None
        image = self.image.value
        return self.runner.start(gen, f"Reconstructing {image.name}", lambda layers: self._finish(layers, image))

    def _finish(self, layers, image):
        method = layers[0][1]["metadata"]["napari_flow_prior"]["method"]
        tag = f"{method} #{next_run_number(self.viewer)}"
        replace = self.last_run if self.replace.value else ()
        replaced = sum(layer in self.viewer.layers for layer in replace)
        if self.side_by_side.value:  # the grid shows the run it was asked for; a new run overlays again
            self.side_by_side.value = False
        self.last_run = put_run(self.viewer, tag_run(layers, tag), source=image, replace=replace)
        self.last_source = image
        self.metrics.value = run_summary(self.last_run[0].metadata["napari_flow_prior"])
        self.status.value = (f"run {tag}: {len(self.last_run)} layer(s) "
                             + (f"in place of the previous run's {replaced}" if replaced else "added")
                             + "; showing its reconstruction (earlier runs hidden)")

    def _side_by_side(self, on):
        if not self.last_run:
            if on:
                self.status.value = "nothing to show yet: run a reconstruction first"
                self.side_by_side.value = False
            return
        side_by_side(self.viewer, self.last_run, self.last_source, enabled=bool(on))


def run_summary(info: dict) -> str:
    """The figures of a run, for the widget: time, device, PSNR/SSIM, notes, the solver's selection."""
    m = info.get("metrics") or {}
    text = f"{info.get('run', 'run')} done in {info['seconds']:.1f} s on {info['device']}"
    if "psnr" in m:
        text += f" · flow PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}"
    if "baseline_psnr" in m:
        text += f" · {info.get('baseline')} PSNR {m['baseline_psnr']:.2f} dB, SSIM {m['baseline_ssim']:.3f}"
    if info.get("missing_from"):
        text += f" · note: {info['missing_from']}"
    params = info.get("params") or {}
    if params.get("fallback"):
        text += f" · note: {params['fallback']}"
    if isinstance(params.get("selection"), dict):  # one line; the held-out scores stay in the metadata
        text += "\n" + summary(params["selection"])
    return text


