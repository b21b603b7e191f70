"""Which cluster a run joins: an address where something other than a Ray GCS answers is one line at once."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from synthgen.errors import SynthgenError
from synthgen.generate.engine.session import _check_reachable, _what_answers


@pytest.fixture(params=["127.0.0.1", "0.0.0.0"])
def http_server(request):
    """A plain HTTP server on a free port: loopback only, or every interface (where Ray's own address for
    127.0.0.1, this node's IP, reaches it too)."""
    server = http.server.ThreadingHTTPServer((request.param, 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_an_http_server_given_as_address_is_one_line_within_seconds(http_server, tiny_checkpoint, tmp_path):
    address = f"127.0.0.1:{http_server}"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "synthgen", "run", "--count", "10", "--model", tiny_checkpoint,
                             "--out", str(tmp_path / "ds"), "--address", address, "--no-progress"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "RAY_ADDRESS": ""})
    wall = time.monotonic() - start
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == "", result.stderr  # no Ray warning, no traceback
    assert result.stderr.startswith(f"error: --address {address}: an HTTP server (HTTP/1.0 200 OK) answers at ")
    assert f"use http://{address}, or give the cluster's GCS port" in result.stderr
    assert wall < 30, wall  # it hung for minutes; the probe waits 2 s for a first byte that never comes
    assert not (tmp_path / "ds").exists()


def test_a_server_that_is_not_rays_is_refused_by_its_first_bytes():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def greet():
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.recv(1)

        threading.Thread(target=greet, daemon=True).start()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SynthgenError, match=r"a server that is not Ray's \(its first bytes: b'SSH-2.0"):
            _check_reachable(address, f"--address {address}")


def test_a_real_gcs_is_taken_for_one(ray_local):
    assert _what_answers(ray_local.get_runtime_context().gcs_address) is None
