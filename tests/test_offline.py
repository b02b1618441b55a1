"""The suite runs offline (tests/conftest.py): a name lookup or connection beyond this machine
raises, so a test that passes never fetched anything; loopback (the serve tests) still works."""
from __future__ import annotations

import socket

import pytest


def test_the_network_is_out_of_reach_and_loopback_is_not():
    with pytest.raises(RuntimeError, match="network"):
        socket.create_connection(("example.com", 80), timeout=1)
    with pytest.raises(RuntimeError, match="network"):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(RuntimeError, match="network"):
        socket.socket().connect(("93.184.216.34", 80))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    with socket.create_connection(srv.getsockname(), timeout=5):
        pass
    srv.close()
