# pytester drops the modules an in-process run imported, but a PyO3 extension cannot be imported
# twice in one interpreter: import the driver stack (opendal) and trustme's cryptography (whose
# Rust backend keeps the classes it first saw: "curve must be an EllipticCurve instance" when an
# xdist worker's first TLS test was a pytester run) once, before any pytester run.
import jumpstarter_driver_http.driver  # noqa: F401
import pytest
import trustme  # noqa: F401

from pytest_jumpstarter_http import beneath


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester whose runs load only the plugins a user of this one would have loaded."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:asyncio -p no:aiohttp -p no:cacheprovider")
    monkeypatch.delenv("JUMPSTARTER_HOST", raising=False)
    return pytester


@pytest.fixture(params=["openat2", "walk"])
def lookup(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test with the kernel's lookup beneath a root (where there is one), then with the walk."""
    if request.param == "openat2" and not beneath.settings.openat2:
        pytest.skip("no openat2(2) on this system")
    if request.param == "walk":
        monkeypatch.setattr(beneath.settings, "openat2", False)
    return str(request.param)


pytest_plugins = ["jumpstarter_helpers"]
