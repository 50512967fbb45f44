"""Writers for tissue masks and quick-look overlays."""

from .background import BackgroundWriter, first_error
from .overlay import SaveOverlayd, overlay_path_for, render_overlay, save_overlay
from .writers import (
    IMAGE_EXTENSIONS,
    SaveMaskd,
    atomic_path,
    is_temp_path,
    mask_path_for,
    source_path,
    split_image_name,
    write_mask,
)

__all__ = [
    "BackgroundWriter",
    "IMAGE_EXTENSIONS",
    "SaveMaskd",
    "SaveOverlayd",
    "atomic_path",
    "is_temp_path",
    "mask_path_for",
    "overlay_path_for",
    "first_error",
    "render_overlay",
    "save_overlay",
    "source_path",
    "split_image_name",
    "write_mask",
]
