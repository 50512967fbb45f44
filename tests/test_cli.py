import json
import subprocess
import sys
from pathlib import Path

import tifffile

ROOT = Path(__file__).resolve().parent.parent


def test_synth_cli_writes_dataset(tmp_path):
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "-m", "plimonai.cli", "synth", "--kind", "lap", "--n", "3", "--n_val", "1",
                        "--shape", "160,200", "--seed", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wrote 3 lap slices 160 x 200 (2 training, 1 validation" in r.stdout and "SYNOPSIS" not in r.stdout
    dl = json.loads((out / "datalist.json").read_text())
    assert len(dl["training"]) == 2 and len(dl["validation"]) == 1
    lines = (out / "slices.txt").read_text().split()
    assert len(lines) == 3
    img = tifffile.imread(out / lines[0])
    assert img.shape == (160, 200) and img.dtype.name == "uint16"
    assert tifffile.imread(out / dl["training"][0]["label"]).shape == (160, 200)
