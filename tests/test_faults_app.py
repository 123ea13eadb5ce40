"""The fault suite (issue 14), part 3: the notebook app on a shared machine. `make app` served with no token and
accepted WebSocket sessions with a foreign Origin or Host, so any page in the user's browser (cross-site WebSocket,
DNS rebinding) could press Train or start a sweep.

A real server (`python -m miras_lite.app`, what `make app` runs) on a free port, a one-cell notebook folder, and a
WebSocket client (the `websockets` package) playing the browser: with the printed token and the server's own
origin the session opens; a foreign Origin, a foreign Host, or no token are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NOTEBOOK = '''import marimo

app = marimo.App()


@app.cell
def _():
    answer = 42
    return (answer,)


if __name__ == "__main__":
    app.run()
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """(port, token, server stdout path): `python -m miras_lite.app FOLDER --headless` with no token given."""
    folder = tmp_path_factory.mktemp("notebooks")
    (folder / "tiny.py").write_text(NOTEBOOK)
    port, log = free_port(), folder.parent / "app.log"
    with open(log, "w") as output:
        server = subprocess.Popen([sys.executable, "-m", "miras_lite.app", str(folder), "--headless", "--port",
                                   str(port)], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env={**os.environ, "MARIMO_SKIP_UPDATE_CHECK": "1"})
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert time.monotonic() < deadline, f"the app did not open port {port}: {log.read_text()[-3000:]}"
            time.sleep(0.1)
        found = re.search(rf"open http://localhost:{port}/\?access_token=([A-Za-z0-9_-]+)", log.read_text())
        assert found, f"the URL with its token was not printed: {log.read_text()[-3000:]}"
        yield port, found.group(1), log
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def websocket(port, token=None, origin=None):
    """Open a marimo session like the browser does -> "accepted: <first message>" or "refused: <HTTP status>"."""
    url = f"ws://127.0.0.1:{port}/ws?session_id=s_{os.urandom(4).hex()}&file=tiny.py"
    if token is not None:
        url += f"&access_token={token}"

    async def attempt():
        try:
            async with connect(url, origin=origin, open_timeout=30) as session:
                return f"accepted: {await asyncio.wait_for(session.recv(), 60)}"
        except InvalidStatus as error:
            return f"refused: {error.response.status_code}"

    return asyncio.run(attempt())


def raw_handshake(port, host, origin, token):
    """A WebSocket handshake with any Host header (what a DNS-rebinding page sends) -> the HTTP status line."""
    request = (f"GET /ws?session_id=s_raw&file=tiny.py&access_token={token} HTTP/1.1\r\nHost: {host}\r\n"
               f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        return sock.recv(4096).decode("latin-1").split("\r\n", 1)[0]


def http_status(port, path, headers):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    return response.status


def test_make_app_runs_the_guarded_launcher():
    result = subprocess.run(["make", "-n", "app"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = [line for line in result.stdout.splitlines() if "notebooks" in line][-1]
    assert "-m miras_lite.app notebooks/" in line and "marimo run" not in line


def test_the_printed_token_and_the_servers_origin_open_a_session(app):
    port, token, _ = app
    assert websocket(port, token, origin=f"http://127.0.0.1:{port}").startswith("accepted: ")
    assert websocket(port, token, origin=f"http://localhost:{port}").startswith("accepted: ")
    assert websocket(port, token, origin=None).startswith("accepted: ")  # a non-browser client, with the token


def test_a_foreign_origin_is_refused_even_with_the_token(app):
    """A cross-site WebSocket: a page of evil.example opened in the user's browser."""
    port, token, _ = app
    for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"http://127.0.0.1:{port + 1}"):
        assert websocket(port, token, origin=origin) == "refused: 403", origin


def test_a_foreign_host_is_refused_even_with_the_token(app):
    """DNS rebinding: evil.example now resolves to 127.0.0.1; its page's requests carry Host: evil.example."""
    port, token, _ = app
    assert raw_handshake(port, f"evil.example:{port}", f"http://evil.example:{port}", token).split()[1] == "403"
    assert raw_handshake(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", token).split()[1] == "101"
    assert http_status(port, f"/?access_token={token}", {"Host": f"evil.example:{port}"}) == 403
    assert http_status(port, f"/?access_token={token}", {"Origin": "http://evil.example"}) == 403


def test_without_the_token_no_session_opens(app):
    port, token, _ = app
    assert websocket(port, None, origin=f"http://127.0.0.1:{port}").startswith("refused: ")
    assert websocket(port, token[:-1] + ("a" if token[-1] != "a" else "b"),
                     origin=f"http://127.0.0.1:{port}").startswith("refused: ")
