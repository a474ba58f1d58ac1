"""Test configuration: offline, CPU, float32, fixed seeds.

Runtime shape checking of jaxtyping annotations is switched on for the package
through pytest's ``--jaxtyping-packages`` option (see pyproject.toml).
"""

import os
import pathlib

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    """Real records copied from ../shared/data (attribution in tests/data/README.md)."""
    return DATA
