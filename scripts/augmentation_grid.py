"""Write a PNG grid of one 1024 x 1024 section in many augmented forms, through train.json's own
augmentation transforms (so the picture shows exactly what training sees).

    .venv/bin/python scripts/augmentation_grid.py [--n 36] [--out bundle/docs/augmentations.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image
from skimage.segmentation import find_boundaries

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tile", type=int, default=256, help="pixels per grid cell")
    ap.add_argument("--out", default=str(ROOT / "bundle/docs/augmentations.png"))
    args = ap.parse_args()

    from plimonai.synthetic import make_lap_slice

    img, mask = make_lap_slice(args.seed)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle/configs/train.json"))
    parser["bundle_root"] = str(ROOT / "bundle")
    parser["num_samples"] = 1
    load = Compose(parser.get_parsed_content("load_transforms")[2:])  # label binarise + normalise on arrays
    aug = Compose(parser.get_parsed_content("train#augmentation"))
    aug.set_random_state(seed=args.seed)
    import torch

    base = load({"image": torch.as_tensor(img[None].astype(np.float32)), "label": torch.as_tensor(mask[None])})
    cells = []
    for i in range(args.n):
        out = aug(dict(base))
        out = out[0] if isinstance(out, list) else out
        x, y = np.asarray(out["image"][0]), np.asarray(out["label"][0]) > 0
        g = np.clip(255 * (1 - x), 0, 255).astype(np.uint8)  # attenuation back to transmittance-like grey
        rgb = np.stack([g, g, g], -1)
        rgb[find_boundaries(y, mode="inner")] = (255, 40, 40)
        cells.append(np.asarray(Image.fromarray(rgb).resize((args.tile, args.tile), Image.BILINEAR)))
    cols = int(np.ceil(np.sqrt(args.n)))
    rows = int(np.ceil(args.n / cols))
    grid = np.full((rows * args.tile, cols * args.tile, 3), 255, np.uint8)
    for i, c in enumerate(cells):
        r, k = divmod(i, cols)
        grid[r * args.tile:(r + 1) * args.tile, k * args.tile:(k + 1) * args.tile] = c
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(args.out, optimize=True)
    print(f"wrote {args.out}: {args.n} augmented forms of one {parser['patch_size']} section of slice seed {args.seed}")


if __name__ == "__main__":
    main()
