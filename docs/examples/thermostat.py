"""The device of the pytest-httpserver port (docs/from-pytest-httpserver.md): a thermostat's cloud
client, as its firmware would have it. urllib plays the firmware here, so both suites run anywhere;
on a board, the test hands the same URL to the board's own client."""

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Thermostat:
    def __init__(self, api: str, *, token: str = "t0k3n", channel: str = "stable") -> None:
        self.api = api.rstrip("/")  # the cloud API's base URL, e.g. https://cloud.example/api/v1
        self.serial = "TH-0042"
        self.version = "1.4.2"
        self.token = token
        self.channel = channel

    def call(self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None):
        """One request to the cloud; a 503 is retried twice, as the firmware does."""
        url = f"{self.api}/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        headers = {"Authorization": f"Bearer {self.token}", "User-Agent": f"thermostat/{self.version}"}
        if isinstance(body, str):
            data: bytes | None = body.encode()
            headers["Content-Type"] = "text/plain"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = None
        for _ in range(3):
            request = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = Answer(response.status, response.read())
            except urllib.error.HTTPError as error:
                with error:
                    answer = Answer(error.code, error.read())
            if answer.status != 503:
                break
        return answer

    # What the firmware does with it:

    def register(self) -> None:
        self.token = self.call("POST", "register", body={"serial": self.serial}).json()["token"]

    def fetch_config(self) -> Answer:
        return self.call("GET", "config")

    def check_for_update(self) -> Answer:
        return self.call("GET", "updates", query={"version": self.version, "channel": self.channel})

    def send_telemetry(self, temperature: float) -> Answer:
        return self.call("POST", "telemetry", body={"serial": self.serial, "temperature": temperature})

    def report_state(self, temperature: float) -> bool:
        """Send the room's temperature; return whether the cloud says to heat."""
        return bool(self.call("POST", "state", body={"temperature": temperature}).json()["heat"])

    def heartbeat(self) -> Answer:
        return self.call("POST", f"devices/{self.serial}/heartbeat")

    def boot(self) -> Answer:
        return self.call("POST", f"devices/{self.serial}/boot", body=f"booted {self.version}")

    @staticmethod
    def download(url: str) -> str:
        """Download an update (following redirects); return its sha256."""
        with urllib.request.urlopen(url, timeout=30) as response:
            return hashlib.sha256(response.read()).hexdigest()
