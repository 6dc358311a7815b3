"""A thermostat that talks to its cloud API, tested with pytest-httpserver 1.x: the suite that
test_from_pytest_httpserver.py ports to this plugin, test by test (docs/from-pytest-httpserver.md)."""

import hashlib
import re
import threading

import pytest
from pytest_httpserver import HTTPServer, RequestMatcher
from thermostat import Thermostat
from werkzeug import Request, Response

FIRMWARE = b"\x7fFW thermostat 1.5.0" * 1024
CONFIG = {"setpoint": 21.0, "unit": "C", "report_every": 60}
READING = {"serial": "TH-0042", "temperature": 21.5}


@pytest.fixture
def api(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/api/v1")


def test_the_device_fetches_its_config(httpserver: HTTPServer, api):
    httpserver.expect_request("/api/v1/config").respond_with_json(CONFIG, headers={"ETag": '"v7"'})

    assert Thermostat(api).fetch_config().json() == CONFIG


def test_only_a_device_with_a_valid_token_gets_its_config(httpserver: HTTPServer, api):
    valid = {"Authorization": "Bearer t0k3n"}
    httpserver.expect_request("/api/v1/config", headers=valid).respond_with_json(CONFIG)
    httpserver.expect_request("/api/v1/config").respond_with_json({"error": "bad token"}, status=401)

    assert Thermostat(api).fetch_config().status == 200
    assert Thermostat(api, token="expired").fetch_config().status == 401


def test_the_update_check_sends_the_version_and_channel(httpserver: HTTPServer, api):
    stable = {"version": "1.4.2", "channel": "stable"}
    beta = {"version": "1.4.2", "channel": "beta"}
    httpserver.expect_request("/api/v1/updates", query_string=stable).respond_with_json({"update": None})
    httpserver.expect_request("/api/v1/updates", query_string=beta).respond_with_json({"update": "1.5.0b1"})

    assert Thermostat(api).check_for_update().json() == {"update": None}
    assert Thermostat(api, channel="beta").check_for_update().json() == {"update": "1.5.0b1"}


def test_the_device_posts_its_telemetry_as_json(httpserver: HTTPServer, api):
    httpserver.expect_request("/api/v1/telemetry", method="POST", json=READING).respond_with_json(
        {"accepted": True}, status=202
    )

    answer = Thermostat(api).send_telemetry(21.5)

    assert (answer.status, answer.json()) == (202, {"accepted": True})


def test_a_reading_the_cloud_does_not_expect_gets_a_422(httpserver: HTTPServer, api):
    httpserver.expect_request("/api/v1/telemetry", method="POST", json=READING).respond_with_json(
        {"accepted": True}, status=202
    )
    httpserver.expect_request("/api/v1/telemetry", method="POST").respond_with_json(
        {"accepted": False}, status=422
    )

    assert Thermostat(api).send_telemetry(85.0).status == 422


def test_the_thermostat_heats_when_the_cloud_says_so(httpserver: HTTPServer, api):
    def decide(request: Request) -> Response:
        heat = request.get_json()["temperature"] < CONFIG["setpoint"]
        return Response(f'{{"heat": {str(heat).lower()}}}', content_type="application/json")

    httpserver.expect_request("/api/v1/state", method="POST").respond_with_handler(decide)

    assert Thermostat(api).report_state(18.0) is True
    assert Thermostat(api).report_state(23.0) is False


def test_the_device_registers_before_it_fetches_its_config(httpserver: HTTPServer, api):
    registered = {"Authorization": "Bearer n3w"}
    httpserver.expect_ordered_request("/api/v1/register", method="POST").respond_with_json({"token": "n3w"})
    httpserver.expect_ordered_request("/api/v1/config", headers=registered).respond_with_json(CONFIG)

    device = Thermostat(api, token="")
    device.register()

    assert device.fetch_config().json() == CONFIG
    httpserver.check_assertions()  # a request out of order would fail here


def test_the_device_retries_a_busy_cloud(httpserver: HTTPServer, api):
    httpserver.expect_oneshot_request("/api/v1/config").respond_with_data("busy", status=503)
    httpserver.expect_request("/api/v1/config").respond_with_json(CONFIG)

    assert Thermostat(api).fetch_config().status == 200
    assert [response.status_code for _, response in httpserver.log] == [503, 200]


def test_the_log_shows_what_the_device_sent(httpserver: HTTPServer, api):
    httpserver.expect_request("/api/v1/config").respond_with_json(CONFIG)

    Thermostat(api).fetch_config()

    ((request, response),) = httpserver.log
    assert (request.method, request.path) == ("GET", "/api/v1/config")
    assert request.headers["User-Agent"] == "thermostat/1.4.2"
    assert response.status_code == 200


def test_every_heartbeat_reaches_the_cloud(httpserver: HTTPServer, api):
    any_device = re.compile(r"^/api/v1/devices/[^/]+/heartbeat$")
    httpserver.expect_request(any_device, method="POST").respond_with_data("", status=204)

    device = Thermostat(api)
    for _ in range(3):
        device.heartbeat()

    beat = RequestMatcher("/api/v1/devices/TH-0042/heartbeat", method="POST")
    httpserver.assert_request_made(beat, count=3)


def test_the_device_reports_its_boot_in_the_background(httpserver: HTTPServer, api):
    boot, booted = "/api/v1/devices/TH-0042/boot", "booted 1.4.2"
    httpserver.expect_oneshot_request(boot, method="POST", data=booted).respond_with_data("", status=204)
    device = threading.Thread(target=Thermostat(api).boot)  # the board powers on

    with httpserver.wait(timeout=10) as waiting:
        device.start()
    device.join()

    assert waiting.result


def test_a_retired_api_is_a_404(httpserver: HTTPServer):
    httpserver.no_handler_status_code = 404  # the default is 500

    assert Thermostat(httpserver.url_for("/api/v0")).fetch_config().status == 404
    with pytest.raises(AssertionError, match="No handler found"):
        httpserver.check_assertions()


def test_the_device_downloads_the_update(httpserver: HTTPServer):
    httpserver.expect_request("/files/thermostat-1.5.0.bin").respond_with_data(
        FIRMWARE, content_type="application/octet-stream"
    )

    digest = Thermostat.download(httpserver.url_for("/files/thermostat-1.5.0.bin"))

    assert digest == hashlib.sha256(FIRMWARE).hexdigest()


def test_the_device_follows_the_redirect_to_the_latest_update(httpserver: HTTPServer):
    image = httpserver.url_for("/files/thermostat-1.5.0.bin")
    moved = {"Location": image}
    httpserver.expect_request("/updates/latest").respond_with_data("", status=302, headers=moved)
    httpserver.expect_request("/files/thermostat-1.5.0.bin").respond_with_data(FIRMWARE)

    digest = Thermostat.download(httpserver.url_for("/updates/latest"))

    assert digest == hashlib.sha256(FIRMWARE).hexdigest()
    assert [(request.path, response.status_code) for request, response in httpserver.log] == [
        ("/updates/latest", 302),
        ("/files/thermostat-1.5.0.bin", 200),
    ]
