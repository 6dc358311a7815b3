from pathlib import Path

import pytest


@pytest.fixture
def served_dir():
    """Every test in this folder serves the folder's own images/, whatever --http-root says."""
    return Path(__file__).parent / "images"
