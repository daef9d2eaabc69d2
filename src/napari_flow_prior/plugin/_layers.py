"""Result layers: provenance, names that carry the run, and how a run's outputs land in a viewer.

Each widget run is new layers named ``<name> <output> [<method> #<n>]`` (n counts the runs in the
viewer); replacing an earlier run is an explicit choice. Only the newest reconstruction is shown
(the other outputs are added hidden, earlier runs of the same input are hidden), one log-density
colorbar is visible at a time (the top visible log-density layer's, titled with the unit), and a
run can be laid out side by side in napari's grid mode. The tuple-building helpers need no Qt;
the viewer helpers import napari when called.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from ..__about__ import __version__

DENSITY_UNIT = "nats/pixel"
DENSITY_COLORMAP = "inferno"
KEY = "napari_flow_prior"  # the metadata key of a result layer's provenance

LayerData = tuple[Any, dict, str]


# ------------------------------------------------------------------------------- tuples
def provenance(model, extra: dict) -> dict:
    return {KEY: {
        "version": __version__,
        "model": model.metadata.get("name"),
        "model_sha256": model.metadata.get("sha256"),
        "model_path": model.metadata.get("path"),
        **extra,
    }}


def clean_kwargs(layer_kwargs: dict | None) -> dict:
    """The placement keys of a layer's kwargs (scale, translate, ...), without empty ones."""
    keep = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")
    return {k: v for k, v in (layer_kwargs or {}).items() if k in keep and v is not None}


def density_limits(data) -> tuple[float, float]:
    """Contrast limits for a log-density map: its 1st to 99th percentile widened to a round step
    (1, 2, 2.5 or 5 x 10^k, four or five steps), so the colorbar's ticks land on its ends."""
    values = np.asarray(data, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1, 99]))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw - 1e-12)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def tag_run(layers: list[LayerData], tag: str) -> list[LayerData]:
    """The same layer-data tuples named ``<name> [<tag>]``, with ``run: tag`` in the provenance."""
    out = []
    for data, kwargs, kind in layers:
        kwargs = dict(kwargs)
        kwargs["name"] = f"{kwargs['name']} [{tag}]"
        metadata = dict(kwargs.get("metadata") or {})
        metadata[KEY] = {**metadata.get(KEY, {}), "run": tag}
        kwargs["metadata"] = metadata
        out.append((data, kwargs, kind))
    return out


def info(layer) -> dict:
    """A layer's provenance (empty for layers the plugin did not make)."""
    metadata = getattr(layer, "metadata", None) or {}
    value = metadata.get(KEY) if isinstance(metadata, dict) else None
    return value if isinstance(value, dict) else {}


def is_result(layer) -> bool:
    return "content" in info(layer)


# ------------------------------------------------------------------------------- viewer
def unwrap(obj):
    """The object behind napari's plugin proxy (a docked plugin widget gets a PublicOnlyProxy of the
    viewer, whose layers are new proxy objects at every access): compare and remember real layers."""
    return getattr(obj, "__wrapped__", obj)


def next_run_number(viewer) -> int:
    """1 + the highest run number among the viewer's result layers (1 for the first run)."""
    numbers = [0]
    for layer in unwrap(viewer).layers:
        run = str(info(layer).get("run") or "")
        if "#" in run and run.rpartition("#")[2].isdigit():
            numbers.append(int(run.rpartition("#")[2]))
    return max(numbers) + 1


def put_run(viewer, layers: list[LayerData], source=None, replace=()) -> list:
    """Add a run's layer-data tuples just above ``source``. ``replace``: an earlier run's layers;
    each output of the same kind is updated in place (data, name, placement, metadata, colormap),
    the rest of them removed. Earlier results of the same input are hidden, then the colorbars
    synced. Returns the run's layers."""
    from napari.layers import Image

    viewer, source = unwrap(viewer), unwrap(source)
    replace = [unwrap(layer) for layer in replace if layer in viewer.layers]
    by_output = {info(layer).get("output"): layer for layer in replace}
    source_name = (layers[0][1].get("metadata") or {}).get(KEY, {}).get("source_layer") if layers else None
    earlier = [layer for layer in viewer.layers if is_result(layer) and layer not in replace
               and info(layer).get("source_layer") == source_name]
    out = []
    for data, kwargs, kind in layers:
        kwargs = dict(kwargs)
        old = by_output.pop((kwargs.get("metadata") or {}).get(KEY, {}).get("output"), None)
        if (isinstance(old, Image) and kind == "image" and old.rgb == bool(kwargs.get("rgb", False))
                and old.data.ndim == np.ndim(data)):
            old.data = data
            old.name = kwargs["name"]
            for key in ("scale", "translate", "colormap", "visible"):
                if key in kwargs:
                    setattr(old, key, kwargs[key])
            old.metadata = kwargs.get("metadata", {})
            if "contrast_limits" in kwargs:
                old.contrast_limits = kwargs["contrast_limits"]
            else:
                old.reset_contrast_limits()
            layer = old
        else:
            if old is not None:
                viewer.layers.remove(old)
            layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
            if source is not None and source in viewer.layers:
                new_index = viewer.layers.index(layer)
                target = viewer.layers.index(source) + 1 + len(out)
                if target < new_index:
                    viewer.layers.move(new_index, target)
        out.append(layer)
    for layer in by_output.values():  # outputs the new run does not make
        viewer.layers.remove(layer)
    for layer in earlier:
        layer.visible = False
    watch_colorbars(viewer, out)
    return out


_WATCHED: "weakref.WeakSet" = weakref.WeakSet()
_TITLES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # layer list -> the title we wrote


def watch_colorbars(viewer, layers=()) -> None:
    """Keep one log-density colorbar visible (the top visible log-density layer's) as layers are
    added, removed, moved, shown or hidden; its title (layer name and unit) is the canvas text."""
    viewer = unwrap(viewer)
    sync = lambda *_: sync_colorbars(viewer)  # noqa: E731
    if viewer.layers not in _WATCHED:
        _WATCHED.add(viewer.layers)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.moved):
            event.connect(sync)
    for layer in layers:
        if info(layer).get("unit") == DENSITY_UNIT:
            layer.events.visible.connect(sync)
    sync_colorbars(viewer)


def sync_colorbars(viewer):
    """Show the colorbar of the top visible log-density layer only, titled '<layer>: log-density,
    nats/pixel' in the canvas text overlay (left alone if someone else wrote that text)."""
    viewer = unwrap(viewer)
    density = [layer for layer in viewer.layers if info(layer).get("unit") == DENSITY_UNIT]
    shown = next((layer for layer in reversed(density) if layer.visible), None)
    for layer in density:
        layer.colorbar.visible = layer is shown
    overlay = _text_overlay(viewer)
    ours = _TITLES.get(viewer.layers)
    if overlay.text and overlay.visible and overlay.text != ours:
        return shown  # the canvas text is the user's
    if shown is not None:
        title = f"colorbar: {shown.name}\nlog-density, {DENSITY_UNIT}"
        grid = getattr(getattr(viewer, "canvas", viewer), "grid", None)
        # beside the colorbar; in grid mode the colorbar sits in its own cell: the title goes below
        position = "bottom_right" if grid is not None and grid.enabled else "top_right"
        overlay.text, overlay.position, overlay.font_size = title, position, 10
        overlay.visible = True
        _TITLES[viewer.layers] = title
    elif ours is not None:
        overlay.visible = False
        overlay.text = ""
        _TITLES.pop(viewer.layers, None)
    return shown


def _text_overlay(viewer):
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)  # napari >= 0.9
    return overlays["text"] if overlays is not None and "text" in overlays else viewer.text_overlay


GRID_ORDER = ("measurements", "baseline", "reconstruction", "log-density", "posterior std")


def side_by_side(viewer, run: list, source=None, enabled: bool = True) -> None:
    """``enabled``: napari's grid mode with the input and every layer of ``run``, one per cell (the
    run's layers put in ``GRID_ORDER``, so the reconstruction ends above the baseline), the
    other layers hidden. Otherwise: back to one canvas, showing the input and the run's
    reconstruction (or its only output)."""
    viewer, source = unwrap(viewer), unwrap(source)
    run = [unwrap(layer) for layer in run if layer in viewer.layers]
    grid = getattr(viewer, "canvas", viewer).grid  # napari >= 0.9: viewer.canvas.grid
    if enabled:
        ordered = sorted(run, key=lambda layer: GRID_ORDER.index(info(layer).get("output"))
                         if info(layer).get("output") in GRID_ORDER else len(GRID_ORDER))
        base = min((viewer.layers.index(layer) for layer in run), default=0)
        for k, layer in enumerate(ordered):  # cells left to right: input, measurements, baseline, ...
            viewer.layers.move(viewer.layers.index(layer), base + k)
        keep = set(map(id, run)) | ({id(source)} if source is not None else set())
        for layer in viewer.layers:
            layer.visible = id(layer) in keep
        grid.stride = 1
        grid.enabled = True
    else:
        grid.enabled = False
        main = [layer for layer in run if info(layer).get("output") == "reconstruction"] or run[:1]
        for layer in run:
            layer.visible = layer in main
    sync_colorbars(viewer)
