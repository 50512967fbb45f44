"""Training datalists: MONAI's decathlon-style JSON, with every entry checked before training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from monai.data import load_decathlon_datalist

__all__ = ["load_datalist", "sample_weights"]


def load_datalist(
    datalist: str | os.PathLike,
    data_list_key: str = "training",
    base_dir: str | os.PathLike | None = None,
    keys: Sequence[str] = ("image", "label"),
) -> list[dict]:
    """Load ``datalist[data_list_key]`` (paths relative to ``base_dir``, default the JSON's folder)
    and raise ``FileNotFoundError`` naming the entry, key and path of any missing file (MONAI's loader
    only joins paths, so a typo would surface mid-training)."""
    datalist = Path(datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"datalist not found: {datalist}")
    base = Path(base_dir) if base_dir else datalist.parent
    try:
        items = load_decathlon_datalist(str(datalist), is_segmentation=True, data_list_key=data_list_key, base_dir=str(base))
    except (KeyError, ValueError) as e:
        raise ValueError(f"{datalist}: no usable '{data_list_key}' list ({e})") from e
    for i, item in enumerate(items):
        for k in keys:
            if k not in item:
                raise KeyError(f"{datalist}: entry {i} of '{data_list_key}' has no '{k}' ({item})")
            if not os.path.isfile(item[k]):
                raise FileNotFoundError(f"{datalist}: entry {i} of '{data_list_key}', '{k}' file not found: {item[k]}")
    return items


def sample_weights(items: Sequence[dict], key: str = "weight") -> list[float]:
    """Per-entry sampling weights from an optional ``key`` of each datalist entry (default 1.0), for
    ``torch.utils.data.WeightedRandomSampler`` (bundle/configs/weighted_sampling.json): oversample rare
    or hard slices without listing them twice (a repeated entry would be cached twice)."""
    out = []
    for i, item in enumerate(items):
        w = item.get(key, 1.0)
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"datalist entry {i}: '{key}' must be a number, got {w!r}") from None
        if not w >= 0 or w == float("inf"):
            raise ValueError(f"datalist entry {i}: '{key}' must be finite and >= 0, got {w}")
        out.append(w)
    if out and not any(out):
        raise ValueError(f"every datalist entry has '{key}' 0: nothing to sample")
    return out
