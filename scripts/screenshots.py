"""Make the README screenshots from a real napari viewer (headless: runs under Xvfb).

    python scripts/screenshots.py                    # shipped nuclei model
    python scripts/screenshots.py --model PATH.safetensors --iterations 80

Opens the nuclei sample (File > Open Sample > Flow Prior) in a 1500 x 900 window, docks the
Reconstruct and Log-density widgets, runs an inpainting reconstruction (80% of the pixels missing,
noise 0.01) with the matching classical baseline, and writes

- ``docs/images/widget.png``: the window with both widgets and the run's result (only the
  reconstruction shown, the other outputs listed as hidden layers);
- ``docs/images/reconstruction.png``: the run *side by side* (the widget's grid action), left to
  right: input, measurements, reconstruction, log-density (nats/pixel, its titled colorbar),
  baseline.

Model: ``--model``, else the shipped ``sample_models/nuclei.safetensors``, else (say so in the
README) a small Glow trained here for ``--train-steps`` steps on the *left half* of the sample
image, a stand-in only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-flow-prior"


def ensure_display():
    """Start Xvfb when there is no display (returns the process to stop, or None)."""
    if os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        sys.exit("no display and no Xvfb: install xvfb or run under xvfb-run")
    display = ":97"
    proc = subprocess.Popen([xvfb, display, "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    os.environ["DISPLAY"] = display
    return proc


def fallback_model(image, steps: int, out: Path) -> Path:
    """A small Glow trained on the left half of the image (a stand-in when no shipped model)."""
    import numpy as np

    from napari_flow_prior.plugin import run_to_end, run_training, save_user_model

    left = np.asarray(image)[:, : image.shape[1] // 2]
    model = run_to_end(run_training([left], steps=steps, size="small (levels 3, 4 steps, 32 hidden)",
                                    patch=32, batch=16, device="cpu"))
    return save_user_model(model, "nuclei-standin", domain="stand-in: nuclei sample, left half",
                           folder=out.parent)


def wait_for(app, widget, timeout: float):
    start = time.time()
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.05)
        if time.time() - start > timeout:
            widget.runner.cancel()
            sys.exit(f"reconstruction did not finish within {timeout:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model name or .safetensors file (default: shipped nuclei)")
    parser.add_argument("--iterations", type=int, default=0, help="optimiser iterations (0: default)")
    parser.add_argument("--missing", type=float, default=0.8, help="missing fraction")
    parser.add_argument("--train-steps", type=int, default=300, help="steps for the stand-in model")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    xvfb = ensure_display()
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        import napari
        import numpy as np
        from qtpy.QtWidgets import QApplication

        from napari_flow_prior.plugin import load_sample

        args.out.mkdir(parents=True, exist_ok=True)
        shipped = ROOT / "sample_models" / "nuclei.safetensors"
        if args.model:
            model, note = args.model, f"model {args.model}"
        elif shipped.is_file():
            model, note = "nuclei", "shipped nuclei model"
        else:
            model = str(fallback_model(load_sample("nuclei"), args.train_steps, args.out / "standin.safetensors"))
            note = "STAND-IN model trained on the sample's left half (no shipped nuclei model found)"
        print(f"using the {note}")

        viewer = napari.Viewer(title="napari-flow-prior")
        viewer.window._qt_window.resize(1500, 900)
        try:
            viewer.open_sample(PLUGIN, "nuclei")
        except Exception:  # the plugin is not installed: load the same sample directly
            viewer.add_image(load_sample("nuclei"), name="nuclei")
        image = viewer.layers["nuclei"]
        # the sample is uint8 with a narrow range: show (and give the outputs) its data range
        image.contrast_limits = (float(image.data.min()), float(np.percentile(image.data, 99.9)))
        try:
            _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct")
            _, density = viewer.window.add_plugin_dock_widget(PLUGIN, "Log-density")
        except Exception:
            from napari_flow_prior.plugin import DensityWidget, ReconstructWidget

            widget = ReconstructWidget(viewer)
            viewer.window.add_dock_widget(widget, name="Reconstruct (Flow Prior)")
            density = DensityWidget(viewer)
            viewer.window.add_dock_widget(density, name="Log-density (Flow Prior)")
        app = QApplication.instance()
        widget.image.value = image
        widget.model.select(model)
        widget.operator.value = "mask"
        widget.missing_fraction.value = args.missing
        widget.noise.value = "0.01"
        widget.iterations.value = args.iterations
        widget.baseline.value = True
        started = time.time()
        if widget.run() is None:
            sys.exit(f"could not start: {widget.runner.last_message}")
        wait_for(app, widget, args.timeout)
        print(f"reconstruction took {time.time() - started:.1f} s: {widget.metrics.value}")
        if not widget.last_run:
            sys.exit(f"no result: {widget.runner.last_message}")
        height = viewer.window._qt_window.height()
        print(f"window height {height} px (asked for 900); Reconstruct dock minimum height "
              f"{widget.native.minimumSizeHint().height()} px")

        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        viewer.layers.selection.active = widget.last_run[1]  # the reconstruction
        viewer.reset_view()
        for _ in range(10):
            app.processEvents()
        viewer.screenshot(str(args.out / "widget.png"), canvas_only=False)

        widget.side_by_side.value = True  # the widget's own action: napari's grid mode
        grid = getattr(viewer, "canvas", viewer).grid  # napari >= 0.9: viewer.canvas.grid
        grid.shape = (1, 1 + len(widget.last_run))  # one row for the README
        grid.spacing = 0.04
        for layer in [image, *widget.last_run]:
            layer.name_overlay.visible = True
        viewer.window.remove_dock_widget("all")
        qt_viewer = viewer.window._qt_viewer
        qt_viewer.dockLayerList.hide()
        qt_viewer.dockLayerControls.hide()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        viewer.reset_view()
        for _ in range(10):
            app.processEvents()
        viewer.screenshot(str(args.out / "reconstruction.png"), canvas_only=True, size=(400, 1700))
        print(f"wrote {args.out / 'widget.png'} and {args.out / 'reconstruction.png'} ({note})")
        viewer.close()
    finally:
        if xvfb is not None:
            xvfb.terminate()


if __name__ == "__main__":
    main()
