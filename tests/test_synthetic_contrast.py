"""The generator's contrast regimes (plimonai.synthetic.contrast): "inverted" (grey matter darker than
white matter) changes only the tissue's optical densities; the default leaves every byte unchanged."""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np
import pytest

from plimonai.synthetic import generate_dataset, make_lap_slice, plan_slice, render_window, transmittance_window
from plimonai.synthetic.contrast import CONTRASTS, apply_contrast
from test_synthetic_classes import DEFAULT_3_TINY, SMALL, TINY, _regions


@functools.lru_cache(maxsize=None)
def _render(seed: int, contrast: str):
    plan = plan_slice(seed, SMALL, "lap", contrast=contrast)
    image, mask = render_window(plan, 0, 0, *SMALL)
    return plan, image, mask


def test_default_is_byte_identical():
    image, mask = make_lap_slice(3, TINY, contrast="standard")
    assert (hashlib.sha256(image.tobytes()).hexdigest(), hashlib.sha256(mask.tobytes()).hexdigest()) == DEFAULT_3_TINY
    plan = plan_slice(3, TINY, "lap")
    assert "contrast" not in plan.info and apply_contrast(plan.params, 3, "standard") is plan.params


@pytest.mark.parametrize("seed", [3, 8])
def test_inverted_darkens_grey_matter_only(seed):
    std_plan, std, mask = _render(seed, "standard")
    inv_plan, inv, inv_mask = _render(seed, "inverted")
    assert np.array_equal(mask, inv_mask)  # same geometry
    assert inv_plan.info["contrast"] == "inverted"
    glass, gm, wm = _regions(std_plan)
    assert gm.sum() > 500 and wm.sum() > 500 and glass.sum() > 500
    # standard: white matter darker than grey matter; inverted: the other way round
    assert np.median(std[wm]) < np.median(std[gm])
    assert np.median(inv[gm]) < np.median(inv[wm])
    # pale white matter still attenuates (noise-free transmittance before illumination; glass = 1)
    t_inv = transmittance_window(inv_plan, 0, 0, *SMALL)[0]
    assert np.median(t_inv[wm]) < 0.95 and np.median(t_inv[gm]) < np.median(t_inv[wm])
    # glass away from tissue: same illumination, artifacts and sensor noise
    assert np.mean(std[glass] == inv[glass]) > 0.99
    p, q = std_plan.params, inv_plan.params
    assert q.od_gm > q.od_wm and p.od_wm > p.od_gm and (q.i0, q.vignetting, q.unit) == (p.i0, p.vignetting, p.unit)


def test_inverted_hard_slices_have_pale_white_matter():
    plan = plan_slice(5, TINY, "lap", hard=True, contrast="inverted")
    easy = [plan_slice(s, TINY, "lap", hard=False, contrast="inverted").params.od_wm for s in range(6)]
    assert plan.params.od_wm <= 0.15 and max(easy) > 0.15
    assert plan.params.od_gm >= 2.5 * plan.params.od_wm + 0.2


def test_dataset_option_and_errors(tmp_path):
    res = generate_dataset(tmp_path / "inv", kind="lap", n=2, seed=3, n_val=1, shape=TINY, preview=False,
                           contrast="inverted")
    info = json.loads((tmp_path / "inv" / "synthetic_info.json").read_text())
    assert info["contrast"] == "inverted" and all(s["contrast"] == "inverted" for s in info["slices"])
    assert res["n"] == 2
    plain = json.loads(json.dumps(generate_dataset(tmp_path / "std", kind="lap", n=1, seed=3, n_val=0, shape=TINY,
                                                   preview=False)))
    assert "contrast" not in json.loads((tmp_path / "std" / "synthetic_info.json").read_text()) and plain["n"] == 1
    with pytest.raises(ValueError, match="contrast"):
        plan_slice(3, TINY, "lap", contrast="negative")
    with pytest.raises(ValueError, match="contrast"):
        generate_dataset(tmp_path / "bad", n=1, shape=TINY, contrast="nope")
    assert CONTRASTS[0] == "standard"


def test_cli_synth_contrast(tmp_path):
    from plimonai.cli import synth

    synth(kind="lap", n=1, out=str(tmp_path / "c"), seed=3, n_val=0, shape=(TINY[0], TINY[1]), preview=False,
          contrast="inverted")
    info = json.loads((tmp_path / "c" / "synthetic_info.json").read_text())
    assert info["contrast"] == "inverted"
