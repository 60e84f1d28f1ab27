"""The held admin port (naosd.runtime.admin_port): the Linux socket rules it relies
on, checked on real sockets, and the choice between a required, a preferred and a
free port."""

from __future__ import annotations

import socket

import pytest

from naosd.errors import Unavailable
from naosd.runtime.admin_port import hold_admin_port

HOST = "127.0.0.1"


def test_a_held_port_takes_thespians_bind_and_listen_but_nobody_elses():
    with hold_admin_port(HOST) as held:
        port = held.getsockname()[1]
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.bind((HOST, port))  # a plain bind, or a client's ephemeral port
        with socket.socket() as admin:  # what Thespian's admin does
            admin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            admin.bind((HOST, port))
            admin.listen()
            with socket.socket() as late:
                late.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError, match="Address already in use"):
                    late.bind((HOST, port))


@pytest.mark.parametrize("listen", [False, True])
def test_a_taken_preferred_port_is_replaced_and_a_taken_required_one_refused(listen: bool):
    with socket.socket() as squatter:
        squatter.bind((HOST, 0))
        port = squatter.getsockname()[1]
        if listen:
            squatter.listen()
        with hold_admin_port(HOST, preferred=port) as held:
            assert held.getsockname()[1] != port
        with pytest.raises(Unavailable, match=f"{port} is already in use") as err:
            hold_admin_port(HOST, required=port)
        assert ("listening: pid" if listen else "(bound)") in str(err.value)


def test_a_free_preferred_port_is_used():
    with hold_admin_port(HOST) as probe:
        port = probe.getsockname()[1]
    with hold_admin_port(HOST, preferred=port) as held:
        assert held.getsockname()[1] == port
