"""Serve a directory on 127.0.0.1 until stdin closes: ``python bench/serve.py SERVER DIR``.

SERVER is jumpstarter-http or pytest-httpserver. The large-file benchmark runs each Python
server in a process of its own so that its peak RSS is the server's alone. The first line
written to stdout is the server's base URL.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def jumpstarter_http(root: Path) -> Iterator[str]:
    from pytest_jumpstarter_http import LoopbackServer

    with LoopbackServer(root).start() as server:
        yield server.url


@contextmanager
def jumpstarter_https(root: Path) -> Iterator[str]:
    """The loopback server over TLS, with the certificate and key in ``$BENCH_TLS_DIR`` (bench/tlsfile.py)."""
    from pytest_jumpstarter_http import LoopbackServer
    from pytest_jumpstarter_http.records import TlsSpec
    from pytest_jumpstarter_http.tls import Tls

    tls = Path(os.environ["BENCH_TLS_DIR"])
    spec = TlsSpec((tls / "cert.pem").read_text(), (tls / "key.pem").read_text())
    with LoopbackServer(root, tls=Tls(spec, tls / "ca.pem", None)).start() as server:
        yield server.url


@contextmanager
def pytest_httpserver(root: Path) -> Iterator[str]:
    import logging
    import re

    from pytest_httpserver import HTTPServer
    from werkzeug import Request, Response
    from werkzeug.wsgi import wrap_file

    def stream(request: Request) -> Response:
        # wrap_file streams the file in blocks instead of reading it into memory.
        file = (root / request.path.lstrip("/")).open("rb")
        return Response(
            wrap_file(request.environ, file), mimetype="application/octet-stream", direct_passthrough=True
        )

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    # threaded: the concurrent downloads would otherwise queue one behind the other.
    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.expect_request(re.compile("/.+")).respond_with_handler(stream)
    server.start()
    try:
        yield server.url_for("").rstrip("/")
    finally:
        server.clear()
        server.stop()


SERVERS = {
    "jumpstarter-http": jumpstarter_http,
    "jumpstarter-https": jumpstarter_https,
    "pytest-httpserver": pytest_httpserver,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    with SERVERS[args.server](args.root) as url:
        print(url, flush=True)
        sys.stdin.read()
    # Outside pytest nothing stops the plugin's event-loop thread, which is not a daemon, so a normal
    # exit would wait for it forever; the server is already stopped, so leave without waiting.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
