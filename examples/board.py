"""A stand-in for a device under test that flashes itself from a URL, as a real board would.

In a lab, ``flash`` is a Jumpstarter driver call (``client.flasher.flash(url)``) and the board
downloads the image itself; here this machine downloads it, so the example runs anywhere.
"""

import hashlib
import urllib.request


def flash(url: str) -> str:
    """Download the image at ``url`` and return its sha256, as a board's flasher would report."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=30) as response:
        while chunk := response.read(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()
