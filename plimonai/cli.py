"""The ``plimonai`` command (fire): synthetic data and helpers around the bundle.

    plimonai synth --kind lap --n 10 --out samples/lap --seed 0
    plimonai demo --out demo_out
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
) -> None:
    """Generate synthetic 3D-PLI slices with ground truth (images/, labels/, slices.txt, datalist.json).

    ``--partial_labels``: training labels mark only about ``partial_fraction`` of the pixels (border
    band, strokes, blobs) and 255 elsewhere, for bundle/configs/finetune.json; labels_full/ keeps the complete masks.
    """
    from plimonai.synthetic import generate_dataset

    if isinstance(shape, (list, tuple)):
        shape = tuple(int(s) for s in shape)
    res = generate_dataset(
        out_dir=out, kind=kind, n=n, seed=seed, n_val=n_val, shape=shape, preview=preview, hard_fraction=hard_fraction,
        partial_labels=partial_labels, partial_fraction=partial_fraction,
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


def main() -> None:
    fire.Fire({"synth": synth, "infer": infer})


if __name__ == "__main__":
    main()
