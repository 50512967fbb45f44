"""Slice lists and the dataset of pending slices that the inference evaluator iterates.

A slice list has one image path a line; blank lines and ``#`` comments are ignored; relative
paths are relative to the list file. Slices whose mask already exists are skipped (resume), and a
slice that fails to load becomes an error record instead of stopping the run.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

__all__ = ["SLICE_SUFFIXES", "read_slice_list", "list_slices", "slice_name", "SliceDataset"]

logger = logging.getLogger(__name__)

SLICE_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".h5", ".hdf5")


def slice_name(path: str | os.PathLike) -> str:
    """File name without its (possibly double, ``.nii.gz``) extension."""
    name = Path(path).name
    for suf in sorted(SLICE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return Path(name).stem


def read_slice_list(path: str | os.PathLike) -> list[str]:
    """Image paths of a slice-list file, absolute, in list order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"slice list not found: {path}")
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line).expanduser()
            out.append(str(p if p.is_absolute() else (path.parent / p).resolve()))
    return out


def list_slices(
    slice_list: str | os.PathLike | None = None,
    dataset_dir: str | os.PathLike | None = None,
    images: Sequence[str] | None = None,
) -> list[str]:
    """The run's slices: an explicit ``images`` list, else ``slice_list``, else every slice file
    in ``dataset_dir`` (and its ``images/`` subfolder, the generator's layout), sorted."""
    if images:
        return [str(Path(p).resolve()) for p in images]
    if slice_list:
        return read_slice_list(slice_list)
    if dataset_dir:
        d = Path(dataset_dir)
        if not d.is_dir():
            raise FileNotFoundError(f"dataset_dir not found: {d}")
        roots = [d / "images"] if (d / "images").is_dir() else [d]
        return sorted(str(p.resolve()) for r in roots for p in r.iterdir() if p.name.lower().endswith(SLICE_SUFFIXES))
    raise ValueError("no slices given: set --slice_list LIST.txt or --dataset_dir DIR")


class SliceDataset(Dataset):
    """Pending slices of a run, as dicts ``{"image", "image_path", "name", "index"}`` through ``transform``.

    Args:
        images: slice paths in run order.
        transform: preprocessing applied in ``__getitem__`` (MONAI Compose).
        mask_path_fn: maps an image path to its final mask path (for resume).
        overwrite: redo slices whose mask exists.
        select: optional function choosing this worker's share (MPI), given the pending records.
        stream_select: optional ``path -> bool`` (e.g. :class:`plimonai.inferers.StreamSelector`); slices
            it picks skip ``transform`` and arrive as ``{..., "stream": True, "image": placeholder}`` for the
            evaluator's streaming inferer (huge PM slices, read lazily there).

    A slice whose transform raises becomes ``{"error": "...", "image": placeholder (1, 1, 1)}``; the
    evaluator records it as failed and goes on. ``skipped`` lists the slices already done.
    """

    def __init__(
        self,
        images: Sequence[str],
        transform: Callable | None = None,
        mask_path_fn: Callable[[str], os.PathLike] | None = None,
        overwrite: bool = False,
        select: Callable[[list[dict]], list[dict]] | None = None,
        stream_select: Callable[[str], bool] | None = None,
    ) -> None:
        self.transform = transform
        self.stream_select = stream_select
        self.all = [
            {"image": str(p), "image_path": str(p), "name": slice_name(p), "index": i} for i, p in enumerate(images)
        ]
        self.skipped: list[dict] = []
        pending = []
        for rec in self.all:
            if mask_path_fn is not None and not overwrite and Path(mask_path_fn(rec["image"])).exists():
                self.skipped.append(rec)
            else:
                pending.append(rec)
        self.pending = select(pending) if select is not None else pending

    @property
    def all_paths(self) -> list[str]:
        """Every slice of the run in list order (done, pending and skipped)."""
        return [r["image"] for r in self.all]

    def __len__(self) -> int:
        return len(self.pending)

    def __getitem__(self, i: int) -> dict:
        rec = dict(self.pending[i])
        t0 = time.perf_counter()
        try:
            if not os.path.isfile(rec["image"]):
                raise FileNotFoundError(f"{rec['image']}: slice file not found")
            if self.stream_select is not None and self.stream_select(rec["image"]):
                out = {**rec, "stream": True, "image": torch.zeros(1, 1, 1)}
            else:
                out = self.transform(rec) if self.transform is not None else rec
        except Exception as e:  # any bad slice becomes a record; the run goes on
            root: BaseException = e
            while root.__cause__ is not None and str(root).startswith("applying transform"):  # Compose's wrapper
                root = root.__cause__
            msg = f"{type(root).__name__}: {root}"
            if rec["image"] not in msg:
                msg = f"{rec['image']}: {msg}"
            logger.debug(traceback.format_exc())
            out = {**rec, "error": msg.splitlines()[0][:500], "image": torch.zeros(1, 1, 1)}
        out["load_seconds"] = time.perf_counter() - t0
        return out
