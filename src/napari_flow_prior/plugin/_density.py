"""The Log-density widget: per-pixel log-density of any layer under a model (:func:`run_density`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, create_widget

from ._common import JobRunner, ModelChooser, buttons, layer_geometry, row
from ._core import run_density
from ._layers import next_run_number, put_run, tag_run

if TYPE_CHECKING:
    import napari


class DensityWidget(Container):
    """Map where the prior finds an image unlikely: ``<name> log-density [density #n]`` in nats/pixel."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        import napari

        import napari_flow_prior as nfp

        self.viewer = napari_viewer
        self.image = create_widget(annotation=napari.layers.Image, label="image")
        self.model = ModelChooser()
        self.image.changed.connect(self.model.follow_layer)  # a sample or result layer names its prior
        self.model.follow_layer(self.image.value)
        self.device = ComboBox(label="device", choices=nfp.available_devices(), value="auto")
        self.run_button, self.cancel_button, self.status = buttons("Compute log-density")
        self.replace = CheckBox(text="replace my previous run (else: a new layer)", value=False)
        super().__init__(widgets=[self.image, self.model, self.device, self.replace,
                                  row(self.run_button, self.cancel_button), self.status])
        self.last_run: list = []
        self.runner = JobRunner(self.status, self.run_button, self.cancel_button)
        self.run_button.changed.connect(self.run)

    def run(self, *_):
        if self.runner.running:
            return None
        image = self.image.value
        try:
            if image is None:
                raise ValueError("no image layer: open or choose an image layer first")
            if image.multiscale:
                raise ValueError(f"{image.name!r} is a multiscale (pyramid) layer: open one resolution "
                                 "level as its own layer")
            source = self.model.value_source()
            if source is None:
                raise ValueError("choose a model file (.safetensors)")
            gen = run_density(image.data, source, device=self.device.value, name=image.name,
                              rgb=bool(image.rgb), layer_kwargs=layer_geometry(image))
        except ValueError as err:
            self.runner.message(str(err))
            return None
        return self.runner.start(gen, f"Log-density of {image.name}", lambda layers: self._finish(layers, image))

    def _finish(self, layers, image):
        tag = f"density #{next_run_number(self.viewer)}"
        replace = self.last_run if self.replace.value else ()
        self.last_run = put_run(self.viewer, tag_run(layers, tag), source=image, replace=replace)
        mean = layers[0][1]["metadata"]["napari_flow_prior"]["mean"]
        self.status.value = (f"run {tag}: {self.last_run[0].name} · mean {mean:.3f} nats/pixel "
                             "(higher = more typical for the prior)")
