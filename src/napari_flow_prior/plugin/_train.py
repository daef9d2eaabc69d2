"""The Train prior widget: train (or fine-tune) a prior on image layers, then save it to the
per-user models folder, where every model chooser finds it (also after a restart)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, PushButton, Select, SpinBox

from ._common import JobRunner, buttons, model_choices, model_events
from ._core import MODEL_SIZES, Step, run_training, save_user_model

if TYPE_CHECKING:
    import napari

NEW_MODEL = "new model"


def _as_steps(gen):
    """TrainProgress -> Step, keeping the trained model as the return value."""
    try:
        while True:
            try:
                p = next(gen)
            except StopIteration as stop:
                return stop.value
            val = f" · val {p.val_bpd:.3f} bits/dim" if p.val_bpd is not None and math.isfinite(p.val_bpd) else ""
            yield Step(p.step, p.total or p.step, f"step {p.step}/{p.total} · loss {p.loss:.3f} bits/dim{val}",
                       loss=p.loss)
    finally:
        gen.close()


class TrainWidget(Container):
    """Train a flow prior on the selected image layer(s); Save puts it in the model choosers."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        import napari_flow_prior as nfp

        self.viewer = viewer = napari_viewer
        self.images = Select(label="images", choices=self._image_choices,
                             tooltip="train on these image layers (stacks: every plane)")
        self.init = ComboBox(label="start from", choices=self._init_choices, value=NEW_MODEL,
                             tooltip="a new model, or fine-tune a shipped/saved one")
        self.size = ComboBox(label="model size", choices=list(MODEL_SIZES), value=list(MODEL_SIZES)[1])
        self.steps = SpinBox(label="steps", value=500, min=1, max=1_000_000)
        self.patch = SpinBox(label="patch size", value=32, min=8, max=256, step=8)
        self.batch = SpinBox(label="batch size", value=16, min=1, max=512)
        self.device = ComboBox(label="device", choices=nfp.available_devices(), value="auto")
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.model_name = LineEdit(label="model name", value="my-prior")
        self.domain = LineEdit(label="domain", value="", tooltip="what the images show (for the model card)")
        self.run_button, self.cancel_button, self.status = buttons("Train")
        self.replace = CheckBox(text="replace a saved model of this name", value=False)
        self.save_button = PushButton(text="Save", enabled=False)
        super().__init__(widgets=[self.images, self.init, self.size, self.steps, self.patch, self.batch,
                                  self.device, self.seed, self.run_button, self.cancel_button, self.status,
                                  self.model_name, self.domain, self.replace, self.save_button])
        self.runner = JobRunner(self.status, self.run_button, self.cancel_button)
        self.model = None
        self.saved_path = None
        self.run_button.changed.connect(self.run)
        self.save_button.changed.connect(self.save)
        model_events.changed.connect(self._refresh_init)

    def _image_choices(self, *_):
        from napari.layers import Image

        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    @staticmethod
    def _init_choices(*_):
        return [NEW_MODEL] + [name for name in model_choices() if name != model_choices()[-1]]

    def _refresh_init(self):
        try:
            current = self.init.value
            self.init.reset_choices()
            if current in self.init.choices:
                self.init.value = current
        except RuntimeError:  # the widget was closed with its viewer
            model_events.changed.disconnect(self._refresh_init)

    def run(self, *_):
        if self.runner.running:
            return None
        layers = list(self.images.value or [])
        try:
            if not layers:
                raise ValueError("no image layer selected: choose the layer(s) to train on")
            init = None if self.init.value == NEW_MODEL else self.init.value
            gen = run_training([layer.data for layer in layers], steps=int(self.steps.value), size=self.size.value,
                               patch=int(self.patch.value), batch=int(self.batch.value), init=init,
                               device=self.device.value, seed=int(self.seed.value),
                               rgb=[bool(layer.rgb) for layer in layers])
        except (ValueError, KeyError) as err:
            self.runner.message(str(err))
            return None
        self.model = None
        self.save_button.enabled = False
        self._sources = [layer.name for layer in layers]
        return self.runner.start(_as_steps(gen), "Training a prior", self._finish)

    def _finish(self, model):
        self.model = model
        bpd = model.metadata.get("metrics", {}).get("val_bpd")
        model.metadata.setdefault("training", {})["layers"] = self._sources
        self.status.value = (f"trained · validation {bpd:.3f} bits/dim · enter a name and Save"
                             if isinstance(bpd, float) and math.isfinite(bpd) else "trained · enter a name and Save")
        self.save_button.enabled = True

    def save(self, *_):
        if self.model is None:
            self.runner.message("train a model first", "warning")
            return None
        try:
            path = save_user_model(self.model, self.model_name.value, self.domain.value,
                                   overwrite=bool(self.replace.value))
        except (ValueError, OSError) as err:
            text = str(err).replace("or replace it", "or tick 'replace a saved model of this name'")
            self.runner.message(f"cannot save: {text}")
            return None
        self.saved_path = path
        model_events.changed.emit()
        self.status.value = f"saved as {path} · it is now in the model choosers"
        return path
