import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/helpers.py for configs' _target_
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return ROOT / "bundle"
