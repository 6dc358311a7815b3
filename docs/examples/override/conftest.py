from pathlib import Path

import pytest


@pytest.fixture
def served_dir():
    """Every test in this folder serves the folder's own images/, not the run's --http-root."""
    return Path(__file__).parent / "images"
