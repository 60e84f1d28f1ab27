"""Hostile and malformed clients against the real daemon's socket, peer
credentials, and the dashboard's token wall."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgpack
import pytest
from harness import Naosd, clean_env, reap, start_naosd

from naosd import protocol

pytestmark = pytest.mark.e2e


OPEN: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets():
    yield
    while OPEN:
        OPEN.pop().close()


def connect(d: Naosd, hello: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    OPEN.append(s)
    s.settimeout(10)
    s.connect(str(d.socket))
    if hello:
        s.sendall(protocol.encode_frame(protocol.hello("client")))
        assert read_frame(s)["type"] == "hello"
    return s


def read_frame(s: socket.socket) -> dict:
    decoder = protocol.FrameDecoder()
    while True:
        data = s.recv(65536)
        if not data:
            raise ConnectionError("closed")
        msgs = decoder.feed(data)
        if msgs:
            return msgs[0]


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


def still_serving(d: Naosd) -> None:
    assert d.ctl("ping").returncode == 0


def test_garbage_bytes_get_an_error_frame_and_a_close(daemon: Naosd):
    s = connect(daemon, hello=False)
    s.sendall(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
    frame = read_frame(s)
    assert frame["type"] == "error" and frame["code"] == "protocol_error"
    assert closed(s)
    still_serving(daemon)


def test_oversized_length_is_refused(daemon: Naosd):
    s = connect(daemon)
    s.sendall(struct.pack(">I", 2**31))
    frame = read_frame(s)
    assert frame["code"] == "protocol_error" and "limit" in frame["message"]
    assert closed(s)
    still_serving(daemon)


def test_request_before_hello_and_wrong_version(daemon: Naosd):
    s = connect(daemon, hello=False)
    s.sendall(protocol.encode_frame(protocol.request(1, "ping")))
    assert "hello" in read_frame(s)["message"]
    s2 = connect(daemon, hello=False)
    s2.sendall(protocol.encode_frame({"type": "hello", "protocol": 99}))
    assert "unsupported protocol version 99" in read_frame(s2)["message"]
    still_serving(daemon)


def test_wrong_types_and_unknown_methods_keep_the_connection(daemon: Naosd):
    s = connect(daemon)
    s.sendall(protocol.encode_frame(protocol.request(1, "no.such.method")))
    assert read_frame(s) == protocol.error(1, "method_not_found",
                                           "unknown method 'no.such.method'")
    s.sendall(protocol.encode_frame({"type": "request", "id": 2, "method": 5}))
    assert read_frame(s)["code"] == "invalid_request"
    s.sendall(protocol.encode_frame(protocol.request(3, "audit.tail", {"n": "many"})))
    frame = read_frame(s)
    assert frame["id"] == 3 and "'n'" in frame["message"]
    s.sendall(protocol.encode_frame(protocol.request(4, "ping", {"extra": 1})))
    assert "unknown parameter" in read_frame(s)["message"]
    s.sendall(protocol.encode_frame(protocol.request(5, "ping")))
    assert read_frame(s)["result"]["pong"] is True


def test_truncated_frame_then_disconnect(daemon: Naosd):
    s = connect(daemon)
    frame = protocol.encode_frame(protocol.request(1, "ping"))
    s.sendall(frame[:-2])
    s.close()
    still_serving(daemon)


def test_silent_client_is_dropped_after_the_handshake_timeout(base: Path):
    env = clean_env(XDG_RUNTIME_DIR=str(base), NAOS_HANDSHAKE_TIMEOUT="0.5")
    d = start_naosd(base, env=env)
    try:
        s = connect(d, hello=False)
        started = time.monotonic()
        frame = read_frame(s)
        assert "no hello" in frame["message"]
        assert closed(s)
        assert time.monotonic() - started < 8
        still_serving(d)
    finally:
        d.stop()
        assert not reap(d)


def test_pipelined_requests_are_answered_by_id(daemon: Naosd):
    s = connect(daemon)
    s.sendall(b"".join(protocol.encode_frame(protocol.request(i, "ping"))
                       for i in range(1, 51)))
    decoder, seen = protocol.FrameDecoder(), set()
    while len(seen) < 50:
        for m in decoder.feed(s.recv(65536)):
            assert m["type"] == "reply"
            seen.add(m["id"])
    assert seen == set(range(1, 51))


def test_raw_msgpack_without_length_prefix(daemon: Naosd):
    s = connect(daemon, hello=False)
    s.sendall(msgpack.packb({"type": "hello", "protocol": 1}))
    frame = read_frame(s)
    assert frame["type"] == "error"
    still_serving(daemon)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_other_users_are_refused_by_peer_credentials(daemon: Naosd):
    # Open up the file permissions on purpose: SO_PEERCRED must still refuse.
    os.chmod(daemon.socket.parent, 0o755)
    os.chmod(daemon.socket, 0o777)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become nobody, connect, report the first frame's code
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            c = socket.socket(socket.AF_UNIX)
            c.connect(str(daemon.socket))
            code = protocol.FrameDecoder().feed(c.recv(65536))[0]["code"]
            os.write(write_end, code.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        got = os.read(read_end, 100).decode()
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert got == "permission_denied"
    rows = json.loads(daemon.ctl("audit", "tail", "--type", "client.refused",
                                 "--json").stdout)
    assert rows and rows[-1]["detail"]["uid"] == 65534


def test_dashboard_requires_the_token(daemon: Naosd):
    info = json.loads(daemon.ctl("dashboard", "--json", check=True).stdout)
    url, login = info["url"], info["login_url"]
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url + "api/v1/status", timeout=10)
    denied.value.close()
    assert denied.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong:
        urllib.request.urlopen(url + "?token=wrong", timeout=10)
    wrong.value.close()
    assert wrong.value.code == 403
    token = login.split("token=", 1)[1]
    req = urllib.request.Request(url + "api/v1/status",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.load(resp)["pid"] == daemon.pid
    rebound = urllib.request.Request(url + "api/v1/status", headers={
        "Authorization": f"Bearer {token}", "Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as host:
        urllib.request.urlopen(rebound, timeout=10)
    host.value.close()
    assert host.value.code == 403


def test_dashboard_login_sets_a_strict_httponly_cookie(daemon: Naosd):
    info = json.loads(daemon.ctl("dashboard", "--json", check=True).stdout)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(info["login_url"], timeout=10)
    redirect.value.close()
    assert redirect.value.code == 303
    cookie = redirect.value.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = {"a": value} if depth % 2 else [value]
    return value


def ask(s: socket.socket, message: dict) -> dict:
    body = msgpack.packb(message, use_bin_type=True)
    s.sendall(struct.pack(">I", len(body)) + body)
    return read_frame(s)


@pytest.mark.parametrize(("method", "value", "why"), [
    pytest.param("agent.run", nested(1000), "nested deeper than 64 levels", id="run-deep"),
    pytest.param("saga.run", nested(1000), "nested deeper than 64 levels", id="saga-deep"),
    pytest.param("pool.submit", nested(1001), "nested deeper than 64 levels", id="pool-deep"),
    pytest.param("agent.run", msgpack.Timestamp(1_700_000_000, 0),
                 "params.input: msgpack timestamp values are not allowed", id="timestamp"),
    pytest.param("agent.run", {"blob": b"\x00\x01"},
                 "params.input.blob: binary values are not allowed", id="binary"),
    pytest.param("agent.run", {"k": {7: "seven"}},
                 "params.input.k: map keys must be strings, got int 7", id="int-key"),
])
def test_values_json_cannot_hold_never_reach_an_agent(daemon: Naosd, method, value, why):
    assert daemon.ctl("create", "e", "--template", "echo").returncode == 0
    s = connect(daemon)
    answer = ask(s, {"type": "request", "id": 1, "method": method,
                     "params": {"name": "e", "input": value}})
    assert (answer["type"], answer["id"], answer["code"]) == ("error", 1, "invalid_request")
    assert why in answer["message"]
    run = ask(s, protocol.request(2, "agent.run", {"name": "e", "input": {"ok": [1, 2.5]}}))
    assert run["result"]["output"] == {"ok": [1, 2.5]}
    info = ask(s, protocol.request(3, "agent.inspect", {"name": "e"}))["result"]
    assert info["restarts"] == 0 and not info["last_error"]


def test_binary_is_refused_where_a_parameter_takes_none(daemon: Naosd):
    s = connect(daemon)
    answer = ask(s, {"type": "request", "id": 1, "method": "agent.run",
                     "params": {"name": "e", "input": b"raw"}})
    assert (answer["id"], answer["code"]) == (1, "invalid_request")
    assert "parameter 'input': binary values are not allowed" in answer["message"]


def test_ids_0_and_negative_streams_cancel_and_duplicates(daemon: Naosd):
    s = connect(daemon)
    follow = {"type": "request", "id": 0, "method": "audit.tail",
              "params": {"n": 0, "follow": True}}
    s.sendall(protocol.encode_frame(follow))
    duplicate = ask(s, follow)
    assert (duplicate["id"], duplicate["code"]) == (0, "invalid_request")
    assert ask(s, protocol.request(-5, "ping"))["result"]["pong"] is True
    s.sendall(protocol.encode_frame({"type": "cancel", "id": 0}))
    assert read_frame(s) == {"type": "end", "id": 0}
    bad = ask(s, {"type": "request", "id": 2.0, "method": "ping"})
    assert (bad["id"], bad["code"]) == (None, "invalid_request") and "'id'" in bad["message"]


def test_the_request_timeout_field_is_checked(daemon: Naosd):
    s = connect(daemon)
    assert ask(s, protocol.request(1, "ping", timeout=5))["type"] == "reply"
    for bad in (0, 100_000, "soon"):
        answer = ask(s, {**protocol.request(2, "ping"), "timeout": bad})
        assert (answer["id"], answer["code"]) == (2, "invalid_request")
        assert "'timeout' must be a number of seconds" in answer["message"]


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_16mib_frame_before_the_hello_is_refused_without_growing_naosd(daemon: Naosd):
    """16 M empty arrays in one frame once cost naosd 1.2 GiB and 15 s."""
    body = b"\xdd" + struct.pack(">I", (16 << 20) - 5) + b"\x90" * ((16 << 20) - 5)
    before = vm_rss_kib(daemon.pid)
    s = connect(daemon, hello=False)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(struct.pack(">I", len(body)) + body)  # naosd stops reading at 1 MiB
    answer = read_frame(s)
    assert (answer["code"], answer["id"]) == ("protocol_error", None)
    assert "limit is 4096 before the hello" in answer["message"]
    still_serving(daemon)
    assert vm_rss_kib(daemon.pid) - before < 8 * 1024


def test_every_refused_client_reads_why(base: Path):
    env = clean_env(XDG_RUNTIME_DIR=str(base), NAOS_MAX_CONNECTIONS="1")
    d = start_naosd(base, env=env)
    try:
        held = connect(d)  # the one connection allowed
        for _ in range(20):
            out = d.ctl("ping")
            assert out.returncode == 4, out
            assert "too many connections (limit 1)" in out.stderr
        for _ in range(20):
            s = connect(d, hello=False)
            assert read_frame(s)["message"] == "too many connections (limit 1)"
            assert closed(s)  # naosd's side is shut down...
            s.sendall(protocol.encode_frame(protocol.hello("client")))  # ...not its reading
            s.close()
        assert ask(held, protocol.request(1, "ping"))["result"]["pong"] is True
    finally:
        d.stop()
        assert not reap(d)
