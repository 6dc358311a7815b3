"""One server for the whole module's tests: start it once, flash many times."""

import board
import pytest

pytestmark = pytest.mark.http_server(scope="session")

SEEN_URLS = set()


@pytest.mark.parametrize("attempt", range(3))
def test_flash_again_from_the_same_server(http_url, attempt):
    SEEN_URLS.add(http_url)
    assert len(SEEN_URLS) == 1
    assert board.flash(f"{http_url}/image.raw")
