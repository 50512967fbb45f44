"""Synthetic 3D-PLI slices with exact ground truth (test bed, demo data, training set).

Public API::

    image, mask = make_lap_slice(seed, shape=(2080, 2776), hard=None)   # uint16, uint8 {0, 1}
    info = write_pm_slice(image_path, mask_path, shape=(20000, 20000), seed=0, tile=1024)
    summary = generate_dataset(out_dir, kind="lap", n=10, seed=0, n_val=2, shape=None,
                               preview=True, hard_fraction=0.3)

Modules: ``geometry`` (tissue level sets: pieces, folded cortex, holes; uses ``shapes`` blobs and
``sulci`` carving), ``artifacts`` (dust, bubbles, edges, ink), ``render`` (intensity model and
acquisition, window by window), ``lap`` / ``pm`` (whole slices / tiled BigTIFF writer), ``dataset``
(dataset folders), ``fields`` and ``curves`` (random fields, window upsampling, thick curves).
See bundle/docs/synthetic_data.md.
"""

from .dataset import generate_dataset, save_preview
from .geometry import GeometryParams, SectionGeometry, build_section, draw_geometry_params
from .lap import LAP_SHAPE, make_lap_slice
from .pm import PM_SHAPE, read_tile, write_pm_slice
from .render import (
    RenderParams,
    RenderPlan,
    draw_render_params,
    plan_slice,
    render_window,
    transmittance_window,
)

__all__ = [
    "LAP_SHAPE",
    "PM_SHAPE",
    "GeometryParams",
    "RenderParams",
    "RenderPlan",
    "SectionGeometry",
    "build_section",
    "draw_geometry_params",
    "draw_render_params",
    "generate_dataset",
    "make_lap_slice",
    "plan_slice",
    "read_tile",
    "render_window",
    "save_preview",
    "transmittance_window",
    "write_pm_slice",
]
