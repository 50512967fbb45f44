"""Training datalists: MONAI's decathlon-style JSON, with every entry checked before training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from monai.data import load_decathlon_datalist

__all__ = ["load_datalist"]


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
