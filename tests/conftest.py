# pytester drops the modules an in-process run imported, but opendal's PyO3 extension cannot be
# imported twice in one interpreter: import the driver stack once, before any pytester run.
import jumpstarter_driver_http.driver  # noqa: F401
import pytest


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose runs load only the plugins a user of this one would have loaded."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:asyncio -p no:aiohttp -p no:cacheprovider")
    monkeypatch.delenv("JUMPSTARTER_HOST", raising=False)
    return pytester


pytest_plugins = ["jumpstarter_helpers"]
