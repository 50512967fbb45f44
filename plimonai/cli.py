"""The ``plimonai`` command (fire): synthetic data and helpers around the bundle.

    plimonai synth --kind lap --n 10 --out samples/lap --seed 0
    plimonai demo --out demo_out
    plimonai report OUT          (OUT/report.html: stack quality control of an inference output folder)
    plimonai pseudo_labels PM.tif --out pseudo_pm   (PM crops labelled by the LAP-scale model, for finetune.json)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fire

BUNDLE_ROOT = Path(__file__).resolve().parent.parent / "bundle"


def synth(
    kind: str = "lap",
    n: int = 10,
    out: str = "samples/lap",
    seed: int = 0,
    n_val: int = 2,
    shape: tuple | None = None,
    preview: bool = True,
    hard_fraction: float = 0.3,
    partial_labels: bool = False,
    partial_fraction: float = 0.1,
    section_class: str = "human",
    unscanned_border: float = 0.0,
    output_format: str = "uint16",
    file_format: str = "tif",
    retardation: bool = False,
    contrast: str = "standard",
) -> None:
    """Generate synthetic 3D-PLI slices with ground truth (images/, labels/, slices.txt, datalist.json).

    ``--partial_labels``: training labels mark only about ``partial_fraction`` of the pixels (border
    band, strokes, blobs) and 255 elsewhere, for bundle/configs/finetune.json; labels_full/ keeps the complete masks.

    LAP options (defaults reproduce the original slices byte for byte; bundle/docs/synthetic_data.md):
    ``--section_class`` human (whole section) | mouse | rat | monkey | human_hemisphere | mixed (a
    class per seed) | a comma-separated list; ``--unscanned_border True`` (or a probability): zero
    bands along image edges / a frame, image and label 0 there; ``--output_format ntransmittance``:
    float32 [0, 1], glass ~0.9, unscanned exactly 0; ``--file_format h5``: images as HDF5 ``/Image`` +
    ``/pyramid/NN`` (labels stay TIFF); ``--retardation True``: also retardation/<name> (float32
    [0, 1]), datalist items get a "retardation" key; ``--contrast inverted``: stain-like contrast, grey
    matter darker than white matter (a domain the shipped model never saw). Example::

        plimonai synth --n 20 --out data/mixed --section_class mixed --output_format ntransmittance
            --file_format h5 --retardation True --unscanned_border True    (one command line)
    """
    from plimonai.synthetic import generate_dataset

    if isinstance(shape, (list, tuple)):
        shape = tuple(int(s) for s in shape)
    res = generate_dataset(
        out_dir=out, kind=kind, n=n, seed=seed, n_val=n_val, shape=shape, preview=preview, hard_fraction=hard_fraction,
        partial_labels=partial_labels, partial_fraction=partial_fraction,
        section_class=",".join(section_class) if isinstance(section_class, (list, tuple)) else section_class,
        unscanned_border=float(unscanned_border), output_format=output_format, file_format=file_format,
        retardation=bool(retardation), contrast=str(contrast),
    )
    # a summary line, not the dict: fire would render a returned dict as a help page
    print(f"wrote {res['n']} {kind} slices {res['shape'][0]} x {res['shape'][1]} ({res['n_train']} training, "
          f"{res['n_val']} validation, {sum(res['hard'])} hard) to {res['out_dir']} in {res['seconds']:.1f} s; "
          f"datalist: {Path(res['out_dir']) / res['files']['datalist']}")


def infer(slice_list: str = "", dataset_dir: str = "", output_dir: str = "out", bundle_root: str = str(BUNDLE_ROOT), *overrides: str) -> int:
    """Run the bundle's inference (same as ``python -m monai.bundle run inference ...``)."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--config_file", f"{bundle_root}/configs/inference.json",
        "--meta_file", f"{bundle_root}/configs/metadata.json",
        "--bundle_root", bundle_root, "--output_dir", output_dir,
    ]
    if slice_list:
        cmd += ["--slice_list", slice_list]
    if dataset_dir:
        cmd += ["--dataset_dir", dataset_dir]
    return subprocess.call([*cmd, *overrides], env=os.environ.copy())


def _config_qc(config_file: str | os.PathLike) -> dict:
    """The literal values of the ``qc`` section of a bundle config (expressions and references skipped)."""
    import json

    cfg = json.loads(Path(config_file).read_text())
    qc = cfg.get("qc") or {}
    return {k: v for k, v in qc.items() if not (isinstance(v, str) and v[:1] in ("$", "@", "%"))}


def report(out: str, config_file: str = "", **qc) -> None:
    """Write OUT/report.html (stack QC) for an existing inference output folder, finished or not.

    Thresholds: the ``qc`` section of ``config_file`` (default: the bundle's inference.json), each
    overridable, e.g. ``plimonai report OUT --area_tolerance 0.3 --shape_iou_min 0.8``.
    """
    from plimonai.qc import write_report
    from plimonai.qc.report import QC_CSV
    from plimonai.qc.stack import qc_settings

    cfg_file = Path(config_file) if config_file else BUNDLE_ROOT / "configs" / "inference.json"
    settings = qc_settings({**(_config_qc(cfg_file) if cfg_file.is_file() else {}), **qc})
    path = write_report(out, settings)
    import csv

    with open(Path(out) / QC_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    flagged = [r for r in rows if r["flags"]]
    names = ", ".join(f"{r['slice']} ({r['flags']})" for r in flagged[:20]) + (" ..." if len(flagged) > 20 else "")
    print(f"wrote {path}: {len(rows)} slices, {len(flagged)} flagged{': ' + names if flagged else ''}")


def pseudo_labels(
    *images: str,
    out: str = "pseudo_pm",
    ckpt: str = str(BUNDLE_ROOT / "models" / "model.pt"),
    slice_list: str = "",
    level: int | None = None,
    band_px: int = 3,
    margin: float = 2.2,
    crop: int = 1024,
    max_crops: int = 48,
    n_val: int = 2,
    validation_datalist: str = "",
    seed: int = 0,
) -> None:
    """PM slices without full labels -> pseudo-labelled full-resolution crops and OUT/datalist.json.

    The LAP-scale model (``--ckpt``) runs on the pyramid level nearest LAP scale (``--level`` to pick one);
    its mask is upsampled, and a band of ``--band_px`` model pixels around the border plus low-margin
    pixels (``--margin``) are left unlabelled (255). Then fine-tune on OUT, and refine on your labelled
    tiles (bundle/docs/finetune.md)::

        plimonai pseudo_labels pm_0001.tif pm_0002.tif --out pseudo_pm [--validation_datalist my_tiles/datalist.json]
    """
    from plimonai.data import read_slice_list
    from plimonai.pseudo_labels import pm_pseudo_labels

    paths = [*images, *(read_slice_list(slice_list) if slice_list else [])]
    if not paths:
        raise SystemExit("no PM slices given: pass image paths or --slice_list LIST.txt")
    res = pm_pseudo_labels(paths, out, ckpt_path=ckpt, level=level, band_px=band_px, margin=margin, crop=crop,
                           max_crops=max_crops, n_val=n_val, validation_datalist=validation_datalist or None, seed=seed)
    for s in res["slices"]:
        print(f"{s['image']}: level {s['level']} {s['level_shape'][0]} x {s['level_shape'][1]} (1/{s['factor']:g}), "
              f"{s['labelled_fraction']:.0%} labelled, {s['crops']} crops")
    print(f"wrote {res['n_training']} training and {res['n_validation']} validation crops; datalist: {res['datalist']}\n"
          f"next: python -m monai.bundle run training --config_file \"['{BUNDLE_ROOT}/configs/train.json',"
          f"'{BUNDLE_ROOT}/configs/finetune.json','{BUNDLE_ROOT}/configs/finetune_pm.json']\" "
          f"--meta_file {BUNDLE_ROOT}/configs/metadata.json --bundle_root {BUNDLE_ROOT} --dataset_dir {out}")


def main() -> None:
    fire.Fire({"synth": synth, "infer": infer, "report": report, "pseudo_labels": pseudo_labels})


if __name__ == "__main__":
    main()
