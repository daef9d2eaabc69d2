"""Many images, one command: ``napari-flow-prior batch INPUT_DIR|ZARR --out DIR``.

Every input image ``NAME`` (the file's stem; its whole name with dots as underscores, ``x_png``
and ``x_npy``, when two files share a stem) is reconstructed as the ``reconstruct`` command would
do it and its outputs go to ``DIR/NAME/`` (reconstruction.tif, log_density.tif, ..., report.json). Each file is
written to a temporary name and renamed (``os.replace``), and ``report.json`` is written last, so
an image counts as finished only when all its outputs are complete: an interrupted batch leaves no
half-written output, and running the same command again skips the finished images (resumable) and
removes leftover temporary files; it refuses to resume with other settings (model file, operator,
noise, method, seed, solver options) than those recorded in the batch report. An image that fails (unreadable or corrupted file, wrong shape,
...) is recorded with its error and the batch goes on; ``DIR/batch_report.json`` lists every
image's status and is rewritten (atomically) after each image.

Input: a folder of images (TIFF, PNG, JPEG, .npy, .npz; one level, sorted), one such file, or a
zarr array whose leading axes are a stack of 2-D planes (needs the ``zarr`` package); plane ``i``
is named ``plane_00000i``. A TIFF or .npy file with three or more dimensions (a z-stack, a time
series; not RGB) is a stack too: its planes are named ``STEM_plane_00000i``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPORT = "batch_report.json"
DONE = "report.json"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _plane_loader(read_plane, index, path: Path):
    """A callable that saves one plane (``read_plane(index)``) to ``path`` (.npy) once and returns
    the path: the plane is read only when its turn comes."""

    def load():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part.npy")
            np.save(tmp, np.asarray(read_plane(index)))
            os.replace(tmp, path)
        return path

    return load


def _stack_shape(path: Path):
    """The shape of a TIFF or .npy file that holds a stack of 2-D grayscale planes (three or more
    dimensions, not an RGB(A) image), else None; read from the header only."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                shape = tuple(tif.series[0].shape)
        elif path.suffix.lower() == ".npy":
            shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        else:
            return None
    except Exception:  # unreadable: the normal path reports it
        return None
    if len(shape) < 3 or (len(shape) == 3 and shape[-1] in (3, 4)):
        return None
    return shape


def _items(source: Path, scratch: Path):
    """(name, path or loader) of every input image. The planes of a zarr array or of a stack file
    (TIFF, .npy) are saved to ``scratch`` as .npy when their turn comes."""
    from .imageio import image_files, read_image

    is_zarr = source.suffix == ".zarr" or (source.is_dir() and (
        (source / ".zarray").exists() or (source / "zarr.json").exists()))
    if not is_zarr:
        if not source.exists():
            raise FileNotFoundError(f"no such file or folder: {source}")
        items = []
        files = image_files(source)
        stems = [p.stem for p in files]
        for p in files:
            # the output folder's name: the file's stem, or with its suffix when two files share a stem
            base = p.stem if stems.count(p.stem) == 1 else p.name.replace(".", "_")
            shape = _stack_shape(p)
            if shape is None:
                items.append((base, p))
                continue
            cache = {}

            def read_plane(index, p=p, cache=cache):
                if "array" not in cache:  # a memory map where possible, else read once
                    cache["array"] = (np.load(p, mmap_mode="r") if p.suffix.lower() == ".npy"
                                      else read_image(p))
                return cache["array"][index]

            for i, index in enumerate(np.ndindex(*shape[:-2])):
                name = f"{base}_plane_{i:06d}"
                items.append((name, _plane_loader(read_plane, index, scratch / f"{name}.npy")))
        return items
    try:
        import zarr
    except ImportError:
        raise ValueError("reading a zarr input needs the 'zarr' package (pip install zarr)") from None
    array = zarr.open(str(source), mode="r")
    if not hasattr(array, "shape") or len(array.shape) < 2:
        raise ValueError(f"{source}: expected a zarr array of 2-D planes")
    n = int(np.prod(array.shape[:-2]))
    items = []
    for i in range(n):
        index = np.unravel_index(i, array.shape[:-2]) if n > 1 or len(array.shape) > 2 else ()
        name = f"plane_{i:06d}"
        items.append((name, _plane_loader(lambda ix: array[tuple(ix)], index, scratch / f"{name}.npy")))
    return items


def _run_settings(model, **settings) -> dict:
    """What decides a batch's results: the model file's content and the settings given."""
    from .flows.files import file_sha256, resolve_model_path

    return {"model_sha256": file_sha256(resolve_model_path(model)),
            **{k: v for k, v in settings.items() if v is not None}}


def _check_resumable(out: Path, run_settings: dict) -> None:
    """A batch resumes (skipping finished images) only with the settings that made them."""
    previous = out / REPORT
    if not previous.is_file():
        return
    try:
        earlier = json.loads(previous.read_text()).get("settings")
    except (OSError, ValueError):
        return
    if earlier is None or earlier == json.loads(json.dumps(run_settings, default=str)):
        return
    changed = sorted(k for k in set(earlier) | set(run_settings) if earlier.get(k) != run_settings.get(k))
    what = ", ".join(f"{k} {earlier.get(k)!r} -> {run_settings.get(k)!r}" for k in changed)
    raise ValueError(f"{out} holds the results of a batch with other settings ({what}); a batch resumes only "
                     "with the same settings: choose another --out, or delete the folder to start over")


def run_batch(source, out, *, model="nuclei", operator="mask:0.8", noise="0.01", method="map",
              simulate=False, device="auto", seed=0, block=32, progress=True, **settings) -> dict:
    """Process every image of ``source`` into ``out``; returns the batch report (see module doc).
    ``settings`` are the solver's (``cli.SOLVER_OPTIONS``), as for ``reconstruct_file``."""
    from .flows.settings import SPACES
    from .jobs import reconstruct_file
    from .solvers.checks import check_ensemble, check_posterior

    space, ensemble = settings.get("space"), settings.get("ensemble")
    if space is not None and space not in SPACES:  # fail once, not once per image
        raise ValueError(f"space must be one of {SPACES} or None, got {space!r}")
    if ensemble is not None:
        check_ensemble(ensemble)
    check_posterior(settings.get("chains"), settings.get("temperature"))

    source, out = Path(source), Path(out)
    run_settings = _run_settings(model, operator=operator, noise=noise, method=method, simulate=simulate,
                                 seed=seed, block=block, **settings)
    _check_resumable(out, run_settings)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.rglob("*.part"):  # temporary files of an interrupted run
        leftover.unlink()
    items = _items(source, out / ".planes")
    report = {"source": str(source), "out": str(out), "operator": operator, "method": method,
              "model": str(model), "settings": run_settings, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "images": {}}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="batch", unit="image", dynamic_ncols=True, file=sys.stderr)
    try:
        for name, path in items:
            target = out / name
            if (target / DONE).exists():
                report["images"][name] = {"status": "skipped"}
            else:
                t0 = time.time()
                try:
                    path = path() if callable(path) else path
                    done = reconstruct_file(path, model=model, operator=operator, noise=noise, method=method,
                                            out=target, simulate=simulate, device=device, seed=seed, block=block,
                                            **settings)
                    entry = {"status": "done", "seconds": round(time.time() - t0, 2)}
                    if "metrics" in done:
                        entry["psnr"] = done["metrics"]["flow"]["psnr"]
                    report["images"][name] = entry
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as err:  # record and go on with the next image
                    report["images"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            statuses = [v["status"] for v in report["images"].values()]
            report.update({s: statuses.count(s) for s in ("done", "skipped", "failed")})
            _write_json(out / REPORT, report)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=report["failed"], refresh=False)
    finally:
        if bar is not None:
            bar.close()
    report.setdefault("done", 0), report.setdefault("skipped", 0), report.setdefault("failed", 0)
    _write_json(out / REPORT, report)
    return report
