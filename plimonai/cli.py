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
) -> dict:
    """Generate synthetic 3D-PLI slices with ground truth (images/, labels/, slices.txt, datalist.json)."""
    from plimonai.synthetic import generate_dataset

    if isinstance(shape, (list, tuple)):
        shape = tuple(int(s) for s in shape)
    return generate_dataset(
        out_dir=out, kind=kind, n=n, seed=seed, n_val=n_val, shape=shape, preview=preview, hard_fraction=hard_fraction
    )


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
