"""test_pytest_httpserver_original.py ported to this plugin, test by test and name by name
(docs/from-pytest-httpserver.md). It runs unchanged on loopback and on an exporter whose config has
RecordingHttpServer (replies and the request log need it), inside `jmp shell`."""

import hashlib
import threading

import pytest
from thermostat import Thermostat

from pytest_jumpstarter_http import HttpRequest, HttpResponse, HttpServerHandle

FIRMWARE = b"\x7fFW thermostat 1.5.0" * 1024
CONFIG = {"setpoint": 21.0, "unit": "C", "report_every": 60}
READING = {"serial": "TH-0042", "temperature": 21.5}


@pytest.fixture
def api(http_server: HttpServerHandle) -> str:
    return http_server.url_for("/api/v1")


def test_the_device_fetches_its_config(http_server: HttpServerHandle, api):
    http_server.respond("api/v1/config", json=CONFIG, headers={"ETag": '"v7"'})

    assert Thermostat(api).fetch_config().json() == CONFIG


def test_only_a_device_with_a_valid_token_gets_its_config(http_server: HttpServerHandle, api):
    valid = {"Authorization": "Bearer t0k3n"}
    http_server.respond("api/v1/config", match_headers=valid, json=CONFIG)
    http_server.respond("api/v1/config", json={"error": "bad token"}, status=401)

    assert Thermostat(api).fetch_config().status == 200
    assert Thermostat(api, token="expired").fetch_config().status == 401


def test_the_update_check_sends_the_version_and_channel(http_server: HttpServerHandle, api):
    stable = {"version": "1.4.2", "channel": "stable"}
    beta = {"version": "1.4.2", "channel": "beta"}
    http_server.respond("api/v1/updates", query_string=stable, json={"update": None})
    http_server.respond("api/v1/updates", query_string=beta, json={"update": "1.5.0b1"})

    assert Thermostat(api).check_for_update().json() == {"update": None}
    assert Thermostat(api, channel="beta").check_for_update().json() == {"update": "1.5.0b1"}


def test_the_device_posts_its_telemetry_as_json(http_server: HttpServerHandle, api):
    http_server.respond(
        "api/v1/telemetry", method="POST", match_json=READING, json={"accepted": True}, status=202
    )

    answer = Thermostat(api).send_telemetry(21.5)

    assert (answer.status, answer.json()) == (202, {"accepted": True})


def test_a_reading_the_cloud_does_not_expect_gets_a_422(http_server: HttpServerHandle, api):
    http_server.respond(
        "api/v1/telemetry", method="POST", match_json=READING, json={"accepted": True}, status=202
    )
    http_server.respond("api/v1/telemetry", method="POST", json={"accepted": False}, status=422)

    assert Thermostat(api).send_telemetry(85.0).status == 422


def test_the_thermostat_heats_when_the_cloud_says_so(http_server: HttpServerHandle, api):
    def decide(request: HttpRequest) -> HttpResponse:
        return HttpResponse(json={"heat": request.json()["temperature"] < CONFIG["setpoint"]})

    http_server.respond("api/v1/state", method="POST", handler=decide)

    assert Thermostat(api).report_state(18.0) is True
    assert Thermostat(api).report_state(23.0) is False


def test_the_device_registers_before_it_fetches_its_config(http_server: HttpServerHandle, api):
    registered = {"Authorization": "Bearer n3w"}
    http_server.respond("api/v1/register", method="POST", json={"token": "n3w"}, ordered=True)
    http_server.respond("api/v1/config", match_headers=registered, json=CONFIG, ordered=True)

    device = Thermostat(api, token="")
    device.register()

    assert device.fetch_config().json() == CONFIG
    http_server.check()  # a request out of order, or a step not reached, would fail here


def test_the_device_retries_a_busy_cloud(http_server: HttpServerHandle, api):
    http_server.respond("api/v1/config", body="busy", status=503, times=1)
    http_server.respond("api/v1/config", json=CONFIG)

    assert Thermostat(api).fetch_config().status == 200
    assert [request.status for request in http_server.requests] == [503, 200]


def test_the_log_shows_what_the_device_sent(http_server: HttpServerHandle, api):
    http_server.respond("api/v1/config", json=CONFIG)

    Thermostat(api).fetch_config()

    (request,) = http_server.requests
    assert (request.method, request.name) == ("GET", "api/v1/config")
    assert request.headers["User-Agent"] == "thermostat/1.4.2"
    assert request.status == 200


def test_every_heartbeat_reaches_the_cloud(http_server: HttpServerHandle, api):
    http_server.respond("api/v1/devices/*/heartbeat", method="POST", status=204)

    device = Thermostat(api)
    for _ in range(3):
        device.heartbeat()

    http_server.assert_requested("api/v1/devices/TH-0042/heartbeat", status=204, count=3)


def test_the_device_reports_its_boot_in_the_background(http_server: HttpServerHandle, api):
    boot, booted = "api/v1/devices/TH-0042/boot", "booted 1.4.2"
    http_server.respond(boot, method="POST", data=booted, status=204, times=1)
    device = threading.Thread(target=Thermostat(api).boot)  # the board powers on

    device.start()
    request = http_server.wait_for_request(boot, timeout=10)
    device.join()

    assert request.status == 204


def test_a_retired_api_is_a_404(http_server: HttpServerHandle):
    assert Thermostat(http_server.url_for("/api/v0")).fetch_config().status == 404
    http_server.assert_requested("api/v0/config", status=404)


def test_the_device_downloads_the_update(http_server: HttpServerHandle, served_dir):
    (served_dir / "files").mkdir()
    (served_dir / "files" / "thermostat-1.5.0.bin").write_bytes(FIRMWARE)

    digest = Thermostat.download(http_server.url_for("/files/thermostat-1.5.0.bin"))

    assert digest == hashlib.sha256(FIRMWARE).hexdigest()


def test_the_device_follows_the_redirect_to_the_latest_update(http_server: HttpServerHandle, served_dir):
    (served_dir / "files").mkdir()
    (served_dir / "files" / "thermostat-1.5.0.bin").write_bytes(FIRMWARE)
    image = http_server.url_for("/files/thermostat-1.5.0.bin")
    moved = {"Location": image}
    http_server.respond("updates/latest", status=302, headers=moved)

    digest = Thermostat.download(http_server.url_for("/updates/latest"))

    assert digest == hashlib.sha256(FIRMWARE).hexdigest()
    assert [(request.name, request.status) for request in http_server.requests] == [
        ("updates/latest", 302),
        ("files/thermostat-1.5.0.bin", 200),
    ]
