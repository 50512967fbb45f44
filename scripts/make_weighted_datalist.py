"""Merge synthetic training sets into one datalist with per-slice sampling weights.

Used by scripts/train_shipped_model.sh with bundle/configs/weighted_sampling.json: hard slices
(pale grey matter, strong vignetting) and pale ones are drawn more often, and each set gets a base
weight, without listing a slice twice (a repeated entry would be cached twice in RAM).

    python scripts/make_weighted_datalist.py --out samples/train_mixed.json \
        samples/train_lap:1 samples/train_mouse:2 samples/train_rat:2
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import fire


def _slice_info(set_dir: Path) -> dict[str, dict]:
    info = set_dir / "synthetic_info.json"
    return {s["name"]: s for s in json.loads(info.read_text())["slices"]} if info.is_file() else {}


def main(*sets: str, out: str = "samples/train_mixed.json", hard_weight: float = 3.0, pale_weight: float = 2.0,
         pale_od: float = 0.1) -> None:
    """``sets``: ``DIR[:WEIGHT]`` synthetic output folders (with datalist.json; synthetic_info.json
    gives each slice's ``hard`` flag and grey-matter OD). A slice's weight is the set's weight times
    ``hard_weight`` when hard, else ``pale_weight`` when its grey-matter OD < ``pale_od``, else 1."""
    out_path = Path(out).resolve()
    merged: dict[str, list] = {"training": [], "validation": []}
    for spec in sets:
        d, _, w = str(spec).partition(":")
        set_dir, base = Path(d).resolve(), float(w or 1.0)
        info = _slice_info(set_dir)
        dl = json.loads((set_dir / "datalist.json").read_text())
        for part in merged:
            for item in dl.get(part, []):
                item = {k: (os.path.relpath(Path(set_dir, v), out_path.parent) if isinstance(v, str) else v)
                        for k, v in item.items()}
                s = info.get(Path(item["image"]).name.split(".")[0], {})
                f = hard_weight if s.get("hard") else pale_weight if s.get("render", {}).get("od_gm", 1.0) < pale_od else 1.0
                if part == "training":
                    item["weight"] = base * f
                merged[part].append(item)
    out_path.write_text(json.dumps(merged, indent=1))
    n = len(merged["training"])
    print(f"{out_path}: {n} training (weights sum {sum(i['weight'] for i in merged['training']):.0f}), "
          f"{len(merged['validation'])} validation")


if __name__ == "__main__":
    fire.Fire(main)
