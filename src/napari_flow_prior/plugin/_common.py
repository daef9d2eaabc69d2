"""Shared pieces of the widgets: the model chooser, a background job runner with progress and
cancel, and the run/cancel buttons (how results land in the viewer: ``_layers.py``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal

from ..flows import available_models

from ._core import Step
from ._models import model_card

if TYPE_CHECKING:
    import napari

FILE_CHOICE = "model file..."
DEFAULT_MODEL = "nuclei"  # the chooser's first choice when nothing else is known


class _ModelEvents:
    """Emitted after the train widget saves a model, so every model chooser lists it."""

    changed = Signal()


model_events = _ModelEvents()


def model_choices(*_) -> list[str]:
    return [*available_models(), FILE_CHOICE]


class ModelChooser(Container):
    """Shipped and user models by name, or a ``.safetensors`` file, with the model card below."""

    def __init__(self, label: str = "model"):
        self.combo = ComboBox(label=label, choices=model_choices, tooltip=(
            "shipped models and the ones you trained (per-user folder), or a .safetensors file"))
        self.file = FileEdit(label="model file", mode="r", filter="*.safetensors", visible=False)
        self.card = Label(label="")
        self.card.native.setWordWrap(True)
        super().__init__(widgets=[self.combo, self.file, self.card], labels=True)
        self.margins = (0, 0, 0, 0)
        self.combo.changed.connect(self._update)
        self.file.changed.connect(self._update)
        model_events.changed.connect(self._refresh)
        if DEFAULT_MODEL in self.combo.choices:
            self.combo.value = DEFAULT_MODEL
        self._update()

    def _refresh(self):
        try:
            current = self.combo.value
            self.combo.reset_choices()
            if current in self.combo.choices:
                self.combo.value = current
        except RuntimeError:  # the widget was closed with its viewer
            model_events.changed.disconnect(self._refresh)

    def value_source(self) -> str | None:
        """The chosen model name or file path (None if a file is expected but not given)."""
        if self.combo.value == FILE_CHOICE:
            path = str(self.file.value or "").strip()
            return path if path and path != "." else None
        return self.combo.value

    def select(self, name_or_path) -> None:
        """Choose a model by name, or a file path."""
        self._refresh()
        if str(name_or_path) in self.combo.choices:
            self.combo.value = str(name_or_path)
        else:
            self.combo.value = FILE_CHOICE
            self.file.value = str(name_or_path)
        self._update()

    def follow_layer(self, layer) -> None:
        """Choose the model a layer names, if it is still available: a sample image's matching
        prior, or the model that made a result layer (its provenance). Other layers change nothing."""
        metadata = getattr(layer, "metadata", None) or {}
        provenance = metadata.get("napari_flow_prior") or {}
        name, path = metadata.get("model") or provenance.get("model"), provenance.get("model_path")
        named = available_models().get(str(name)) if name else None
        if path and Path(path).is_file() and not (named and named.resolve() == Path(path).resolve()):
            self.select(path)  # a file of its own (not the model of that name in the chooser)
        elif named:
            self.select(name)

    def _update(self, *_):
        self.file.visible = self.combo.value == FILE_CHOICE
        source = self.value_source()
        self.card.value = model_card(source) if source else "choose a .safetensors model file"


class JobRunner:
    """Runs a plugin generator in a napari thread worker: progress in the activity dock, cancel
    within one optimiser evaluation, and the outcome handed back on the main thread."""

    CANCELLED = object()

    def __init__(self, status: Label, run_button: PushButton, cancel_button: PushButton):
        self.status = status
        self.run_button = run_button
        self.cancel_button = cancel_button
        self.worker = None
        self.last_message = ""
        self._cancel = threading.Event()
        self._pbar = None
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self, *_):
        if self.worker is not None:
            self._cancel.set()
            self.status.value = "cancelling..."

    def message(self, text: str, level: str = "error") -> None:
        """Show ``text`` as a notification (no traceback) and in the status line."""
        self.last_message = text
        self.status.value = text if len(text) < 160 else text[:157] + "..."
        {"error": show_error, "warning": show_warning, "info": show_info}[level](text)

    def start(self, gen, description: str, on_done: Callable, on_step: Callable | None = None):
        from napari.qt.threading import create_worker

        self._cancel.clear()
        cancel = self._cancel

        def drive():
            from ..solvers import Cancelled

            try:
                while True:
                    if cancel.is_set():
                        return JobRunner.CANCELLED
                    try:
                        step = next(gen)
                    except StopIteration as stop:
                        return stop.value
                    yield step
            except Cancelled:
                return JobRunner.CANCELLED
            except (ValueError, RuntimeError, MemoryError, OSError) as err:
                return _Failure(f"{description} failed: {err}")
            finally:
                gen.close()

        self._pbar = progress(total=0, desc=description)
        worker = create_worker(drive, _start_thread=False)
        worker.yielded.connect(lambda step: self._step(step, on_step))
        worker.returned.connect(lambda value: self._done(value, on_done))
        worker.errored.connect(lambda err: self.message(f"{description} failed: {err}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"{description}..."
        worker.start()
        return worker

    def _step(self, step: Step, on_step):
        pbar = self._pbar
        if pbar is None:  # a late progress event after the job ended
            return
        if isinstance(step, Step):
            self.status.value = step.text
        if on_step is not None:
            on_step(step)
        if isinstance(step, Step):
            # last: updating the activity dock may process pending Qt events
            if pbar.total != step.total:
                pbar.total = step.total
            pbar.set_description(step.text)
            pbar.update(max(step.done - pbar.n, 0))

    def _done(self, value, on_done):
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        if value is JobRunner.CANCELLED:
            self.status.value = "cancelled: nothing was changed"
            self.last_message = "cancelled"
        elif isinstance(value, _Failure):
            self.message(value.text)
        else:
            try:
                on_done(value)
            except ValueError as err:
                self.message(str(err))

    def _finished(self):
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False


class _Failure:
    def __init__(self, text: str):
        self.text = text


def current_plane(layer, viewer: "napari.Viewer") -> tuple[int, ...]:
    """The index, along the layer's stack axes (all but the last two spatial ones), of the plane
    the viewer shows now."""
    n_lead = layer.ndim - 2
    point = layer.world_to_data(viewer.dims.point)  # uses the world's last layer.ndim axes
    shape = layer.data.shape
    return tuple(int(min(max(round(float(v)), 0), shape[i] - 1)) for i, v in enumerate(point[:n_lead]))


def layer_geometry(layer) -> dict:
    """The spatial placement of a layer, for outputs that sit on top of it."""
    return {"scale": tuple(layer.scale), "translate": tuple(layer.translate)}


def buttons(run_text: str = "Run") -> tuple[PushButton, PushButton, Label]:
    run = PushButton(text=run_text)
    cancel = PushButton(text="Cancel")
    status = Label(value="")
    status.native.setWordWrap(True)
    return run, cancel, status


def row(*widgets) -> Container:
    """Widgets side by side on one line (buttons), to keep a dock short."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False)
    box.margins = (0, 0, 0, 0)
    return box
