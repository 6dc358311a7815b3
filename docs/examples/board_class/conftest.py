import os

import pytest
from jumpstarter_testing.pytest import JumpstarterTest

#: Inside `jmp shell`, which sets JUMPSTARTER_HOST, the suite has its board.
ON_A_BOARD = bool(os.environ.get("JUMPSTARTER_HOST"))


@pytest.fixture
def http_exporter_client(request):
    """The board a JumpstarterTest class holds, inside `jmp shell`; elsewhere None, so the plugin
    chooses the backend itself (loopback, unless the run asks for an exporter)."""
    if ON_A_BOARD and request.cls is not None and issubclass(request.cls, JumpstarterTest):
        return request.getfixturevalue("client")
    return None
