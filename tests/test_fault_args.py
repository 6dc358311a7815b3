"""The arguments of ``inject()`` and ``http_fault`` (issue 17): every number bounded so that it
crosses Jumpstarter's wire exactly, any path spelling the server serves gets the fault.

The device is a plain ``http.client`` on a real loopback server: unlike urllib or curl, it sends
a path exactly as written (``/sub//a.raw``, ``/sub/%2e/a.raw``).
"""

from __future__ import annotations

import http.client
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pytest_jumpstarter_http import HttpServerHandle
from pytest_jumpstarter_http.records import FaultSpec

MAX_WHOLE = 2**53 - 1


def status_of(http_server: HttpServerHandle, path: str) -> int:
    """The status the server answers a GET of the URL path ``path``, sent as written."""
    connection = http.client.HTTPConnection("127.0.0.1", http_server.port, timeout=10)
    try:
        connection.request("GET", urlsplit(http_server.url).path + path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"delay": 10**400},
            "inject(): delay=<a whole number of 401 digits> is out of range; give a "
            "number of seconds from 0 to 86400.",
        ),
        (
            {"delay": float("nan")},
            "inject(): delay=nan is out of range; give a number of seconds from 0 to 86400.",
        ),
        (
            {"delay": float("inf")},
            "inject(): delay=inf is out of range; give a number of seconds from 0 to 86400.",
        ),
        (
            {"delay": 86401},
            "inject(): delay=86401 is out of range; give a number of seconds from 0 to 86400.",
        ),
        (
            {"rate": 10**400},
            "inject(): rate=<a whole number of 401 digits> is out of range; give a number "
            f"of bytes per second from 1 to {MAX_WHOLE}.",
        ),
        (
            {"rate": 1e300},
            "inject(): rate=1e+300 is out of range; give a number of bytes per second from 1 to "
            f"{MAX_WHOLE}.",
        ),
        (
            {"cut_after": 10**400},
            "inject(): cut_after=<a whole number of 401 digits> is out of range; give a "
            f"whole number of bytes from 0 to {MAX_WHOLE}.",
        ),
        (
            {"stall_after": 2**53},
            f"inject(): stall_after={2**53} is out of range; give a whole number of "
            f"bytes from 0 to {MAX_WHOLE}.",
        ),
        (
            {"times": 10**400},
            "inject(): times=<a whole number of 401 digits> is out of range; give a whole "
            f"number of requests from 1 to {MAX_WHOLE}.",
        ),
        (
            {"cut_after": 10**400 - 1},
            "inject(): cut_after=<a whole number of 400 digits> is out of range",
        ),
        (
            {"times": 10**5000},
            "inject(): times=<a whole number of 5001 digits> is out of range; give a whole "
            f"number of requests from 1 to {MAX_WHOLE}.",
        ),
        ({"status": 600}, "inject(): status=600 is out of range; give an HTTP error status from 400 to 599."),
        (
            {"times": True},
            "inject(): times=True is not a whole number; give a whole number of requests from 1 to "
            f"{MAX_WHOLE}.",
        ),
        ({"delay": "1" * 500}, "inject(): delay='11111111111111111111111111111111111111111111111…"),
    ],
)
def test_a_number_out_of_range_is_one_sentence_naming_it_and_its_range(
    http_server: HttpServerHandle, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=r"^inject\(\): ") as raised:
        http_server.inject("x.bin", **kwargs)  # type: ignore[arg-type]
    text = str(raised.value)
    assert text.startswith(message), text
    assert len(text) < 200
    assert text.count(". ") == 0  # one sentence


def test_the_largest_numbers_cross_the_wire_exactly() -> None:
    spec = FaultSpec("a.bin", delay=86400, cut_after=MAX_WHOLE, times=MAX_WHOLE).under(("/runs/gw0",))
    wire = {key: float(value) if isinstance(value, int) else value for key, value in spec.as_dict().items()}
    assert FaultSpec.from_dict(wire) == spec
    assert FaultSpec("b.bin", rate=MAX_WHOLE).rate == MAX_WHOLE


def test_a_huge_times_never_turns_downloads_into_500s(
    http_server: HttpServerHandle, served_dir: Path
) -> None:
    (served_dir / "a.raw").write_text("ok")
    http_server.url_for("a.raw")
    with pytest.raises(ValueError, match="times=<a whole number of 401 digits> is out of range"):
        http_server.inject("a.raw", times=10**400)
    assert status_of(http_server, "/a.raw") == 200


def test_a_path_like_path_is_a_path(http_server: HttpServerHandle, served_dir: Path) -> None:
    (served_dir / "sub").mkdir()
    (served_dir / "sub" / "a.raw").write_text("ok")
    http_server.url_for("sub/a.raw")
    fault = http_server.inject(Path("sub/a.raw"), status=503)
    assert fault.path == "sub/a.raw"
    assert status_of(http_server, "/sub/a.raw") == 503


def test_a_path_of_another_type_is_named(http_server: HttpServerHandle) -> None:
    with pytest.raises(ValueError, match="bytes") as raised:
        http_server.inject(b"a.raw", status=503)  # type: ignore[arg-type]
    assert str(raised.value) == (
        "inject(): path=b'a.raw' is a bytes, not a path; give a str or os.PathLike path relative to "
        "the server's URL."
    )


#: Spellings of ``/sub/a.raw`` that aiohttp's static route serves as that very file.
SPELLINGS = [
    "/sub/a.raw",
    "/sub//a.raw",
    "/sub/./a.raw",
    "/./sub/a.raw",
    "/sub/../sub/a.raw",
    "/sub/%2e/a.raw",
    "/sub/%2E%2E/sub/a.raw",
    "/sub///a.raw",
    "/sub/a.raw/",
]


def test_every_spelling_the_server_serves_gets_the_fault(
    http_server: HttpServerHandle, served_dir: Path
) -> None:
    (served_dir / "sub").mkdir()
    (served_dir / "sub" / "a.raw").write_text("ok")
    (served_dir / "sub" / "b.raw").write_text("ok")
    http_server.url_for("sub/a.raw")
    http_server.url_for("sub/b.raw")
    fault = http_server.inject("sub/a.raw", status=503)
    assert {spelling: status_of(http_server, spelling) for spelling in SPELLINGS} == dict.fromkeys(
        SPELLINGS, 503
    )
    assert fault.hits == len(SPELLINGS)
    # Normalising never widens the fault to a neighbour.
    assert status_of(http_server, "/sub/../sub/b.raw") == 200
    assert status_of(http_server, "/sub/.//b.raw") == 200


def test_a_spelling_matches_below_the_handles_prefix_only() -> None:
    spec = FaultSpec("images/*.raw").under(("/runs/gw0/t",))
    assert spec.matches("/runs//gw0/./t/images/x/../a.raw/")
    assert not spec.matches("/runs/gw0/t/../u/images/a.raw")


def test_a_huge_marker_value_fails_its_test_in_one_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.http_fault("image.raw", delay=10**400)
        def test_huge_delay(http_server):
            pass

        @pytest.mark.http_fault("image.raw", times=10**400)
        def test_huge_times(http_server):
            pass

        @pytest.mark.http_fault("image.raw", cut_after=float("nan"))
        def test_nan_cut(http_server):
            pass
        """
    )
    result = pytester.runpytest("-rA")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(
        [
            "*@pytest.mark.http_fault: inject(): delay=<a whole number of 401 digits> is out of range; "
            "give a number of seconds from 0 to 86400.",
            "*@pytest.mark.http_fault: inject(): times=<a whole number of 401 digits> is out of range; "
            f"give a whole number of requests from 1 to {MAX_WHOLE}.",
            "*@pytest.mark.http_fault: inject(): cut_after=nan is not a whole number; give a whole number "
            f"of bytes from 0 to {MAX_WHOLE}.",
        ]
    )
    output = result.stdout.str()
    assert "Traceback" not in output
    assert "OverflowError" not in output
    assert "pytest_jumpstarter_http/" not in output  # no frame of the plugin: the sentence is the failure
