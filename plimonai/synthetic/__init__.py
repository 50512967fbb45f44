"""Synthetic 3D-PLI slices with exact ground truth (test bed, demo data, training set).

Public API::

    image, mask = make_lap_slice(seed, shape=(2080, 2776), hard=None)   # uint16, uint8 {0, 1}
    image, mask, ret = make_lap_slice(seed, section_class="mouse", unscanned_border=True,
                                      output_format="ntransmittance", retardation=True)
    info = write_pm_slice(image_path, mask_path, shape=(20000, 20000), seed=0, tile=1024)
    summary = generate_dataset(out_dir, kind="lap", n=10, seed=0, n_val=2, shape=None,
                               preview=True, hard_fraction=0.3, section_class="human",
                               unscanned_border=False, output_format="uint16", file_format="tif",
                               retardation=False)

Modules: ``geometry`` (tissue level sets: pieces, folded cortex, holes; uses ``shapes`` blobs and
``sulci`` carving), ``classes`` (mouse / rat / monkey / human hemisphere / whole human section
parameter draws), ``unscanned`` (zero-padded unscanned bands), ``retardation`` (matching
retardation images), ``contrast`` (stain-like contrast regime: grey matter darker than white
matter), ``formats`` (HDF5 ``/Image`` + ``/pyramid/NN`` writer), ``artifacts`` (dust,
bubbles, edges, ink), ``render`` (intensity model and acquisition, window by window), ``lap`` /
``pm`` (whole slices / tiled BigTIFF writer), ``dataset`` (dataset folders), ``fields`` and
``curves`` (random fields, window upsampling, thick curves).
See bundle/docs/synthetic_data.md.
"""

from .classes import SECTION_CLASSES, pick_section_class
from .dataset import generate_dataset, save_preview
from .formats import write_h5_image
from .geometry import GeometryParams, SectionGeometry, build_section, draw_geometry_params
from .lap import LAP_SHAPE, make_lap_slice, render_plan, render_retardation
from .pm import PM_SHAPE, read_tile, write_pm_slice
from .render import (
    RenderParams,
    RenderPlan,
    draw_render_params,
    ntransmittance,
    plan_slice,
    render_window,
    transmittance_window,
)
from .retardation import retardation_window

__all__ = [
    "LAP_SHAPE",
    "PM_SHAPE",
    "SECTION_CLASSES",
    "GeometryParams",
    "RenderParams",
    "RenderPlan",
    "SectionGeometry",
    "build_section",
    "draw_geometry_params",
    "draw_render_params",
    "generate_dataset",
    "make_lap_slice",
    "ntransmittance",
    "pick_section_class",
    "plan_slice",
    "read_tile",
    "render_plan",
    "render_retardation",
    "render_window",
    "retardation_window",
    "save_preview",
    "transmittance_window",
    "write_h5_image",
    "write_pm_slice",
]
