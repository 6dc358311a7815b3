"""What several test modules ask of a URL."""

from __future__ import annotations

import urllib.error
import urllib.request


def status(url: str) -> int:
    """The status a GET of ``url`` gets, an error's included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
