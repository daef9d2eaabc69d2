"""Many images, one command: ``napari-flow-prior batch INPUT_DIR|ZARR --out DIR``.

Every input image ``NAME`` is reconstructed as the ``reconstruct`` command would do it and its
outputs go to ``DIR/NAME/`` (reconstruction.tif, log_density.tif, ..., report.json). Each file is
written to a temporary name and renamed (``os.replace``), and ``report.json`` is written last, so
an image counts as finished only when all its outputs are complete: an interrupted batch leaves no
half-written output, and running the same command again skips the finished images (resumable) and
removes leftover temporary files. An image that fails (unreadable or corrupted file, wrong shape,
...) is recorded with its error and the batch goes on; ``DIR/batch_report.json`` lists every
image's status and is rewritten (atomically) after each image.

Input: a folder of images (TIFF, PNG, JPEG, .npy, .npz; one level, sorted), or a zarr array whose
leading axes are a stack of 2-D planes (needs the ``zarr`` package); plane ``i`` is named
``plane_00000i``.
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


def _items(source: Path, scratch: Path):
    """(name, path) of every input image; zarr planes are saved to ``scratch`` as .npy on demand."""
    from .imageio import image_files

    is_zarr = source.suffix == ".zarr" or (source.is_dir() and (
        (source / ".zarray").exists() or (source / "zarr.json").exists()))
    if not is_zarr:
        if not source.exists():
            raise FileNotFoundError(f"no such file or folder: {source}")
        return [(p.stem, p) for p in image_files(source)]
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

        def load(index=index, i=i):
            path = scratch / f"plane_{i:06d}.npy"
            if not path.exists():
                scratch.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".part.npy")
                np.save(tmp, np.asarray(array[tuple(index)]))
                os.replace(tmp, path)
            return path
        items.append((f"plane_{i:06d}", load))
    return items


def run_batch(source, out, *, model="nuclei", operator="mask:0.8", noise="0.01", method="map",
              simulate=False, device="auto", seed=0, block=32, progress=True, **settings) -> dict:
    """Process every image of ``source`` into ``out``; returns the batch report (see module doc).
    ``settings`` are the solver's (``cli.SOLVER_OPTIONS``), as for ``reconstruct_file``."""
    from .cli import reconstruct_file
    from .solvers import SPACES, check_ensemble, check_posterior

    space, ensemble = settings.get("space"), settings.get("ensemble")
    if space is not None and space not in SPACES:  # fail once, not once per image
        raise ValueError(f"space must be one of {SPACES} or None, got {space!r}")
    if ensemble is not None:
        check_ensemble(ensemble)
    check_posterior(settings.get("chains"), settings.get("temperature"))

    source, out = Path(source), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for leftover in out.rglob("*.part"):  # temporary files of an interrupted run
        leftover.unlink()
    items = _items(source, out / ".planes")
    report = {"source": str(source), "out": str(out), "operator": operator, "method": method,
              "model": str(model), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "images": {}}
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
