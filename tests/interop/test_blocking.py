"""
:mod:`rtunnel.blocking` against a real OpenSSH sshd: forwarding and event mode, backpressure,
errors as the library's own types, timeouts naming the call, several threads, two tunnels,
and the reactor thread's life. The subprocess tests (a plain script, Ctrl-C) are in
tests/test_blocking_script.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sync_support import (
    Pusher,
    echo_through,
    free_port,
    options_for,
    reactor_threads,
    sha,
    silent_server,
)

from rtunnel import (
    ChannelError,
    ChannelInfo,
    ForwardingError,
    ForwardState,
    HostKeyError,
    SpecError,
    TunnelObserver,
)
from rtunnel._bridge import HIGH_WATER, now, runner
from rtunnel.blocking import CallTimeoutError, Channel, ListenerClosed, Tunnel
from rtunnel.options import DEFAULT_MAX_PACKET, DEFAULT_WINDOW_SIZE
from rtunnel.testing._openssh import OpenSSHServer


@pytest.fixture
def tunnel(openssh_server: OpenSSHServer, openssh_client_key: Path) -> Iterator[Tunnel]:
    with Tunnel(
        openssh_server.host,
        openssh_server.port,
        options=options_for(openssh_server, openssh_client_key),
        timeout=30,
    ) as t:
        yield t
    assert reactor_threads() == 0


def test_forwarding_mode_echo_channel_table_and_cancel(
    tunnel: Tunnel, threaded_echo_port: int
) -> None:
    forward = tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
    assert forward.state is ForwardState.ACTIVE
    assert 0 < forward.port < 65536
    assert [f.port for f in tunnel.forwards] == [forward.port]
    payload = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(3):
        assert sha(echo_through(forward.port, payload)) == sha(payload)
    stats = tunnel.statistics()
    assert stats.channels_opened == 3
    assert stats.bytes_received == stats.bytes_sent == 3 * len(payload)
    assert stats.forwards_active == 1
    tunnel.cancel_forwarding("127.0.0.1", forward.port)
    assert tunnel.forwards == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forward.port), timeout=5).close()


def test_event_mode_accept_recv_sendall_eof(tunnel: Tunnel) -> None:
    listener = tunnel.listen("127.0.0.1", 0)
    payload = b"0123456789abcdef" * 65536  # 1 MiB
    answer: list[bytes] = []
    client = threading.Thread(
        target=lambda: answer.append(echo_through(listener.forward.port, payload))
    )
    client.start()
    with listener.accept(timeout=20) as channel:
        assert channel.info.connected_port == listener.forward.port
        assert channel.info.origin_address == "127.0.0.1"
        assert [c.channel_id for c in tunnel.channels] == [channel.channel_id]
        assert tunnel.channel(channel.channel_id).channel_id == channel.channel_id
        received = bytearray()
        while data := channel.recv(100_000, timeout=20):
            assert 0 < len(data) <= 100_000
            received += data
        assert sha(bytes(received)) == sha(payload)
        channel.sendall(bytes(received[::-1]), timeout=20)
        channel.send_eof()
    client.join(20)
    assert answer == [payload[::-1]]
    stats = tunnel.statistics()
    assert (stats.channels_opened, stats.bytes_sent, stats.bytes_received) == (
        1,
        len(payload),
        len(payload),
    )
    listener.close()
    with pytest.raises(ListenerClosed):
        listener.accept(timeout=5)


def test_a_slow_reader_stops_the_ssh_window(tunnel: Tunnel) -> None:
    """
    Nobody reads the channel: the remote client's sender must stall after about our window
    plus HIGH_WATER plus the sockets' buffers (sshd's and the kernel's), not after all 64 MiB,
    and what this process holds stays within HIGH_WATER plus one window.
    """
    total = 64 * 1024 * 1024
    listener = tunnel.listen("127.0.0.1", 0)
    pusher = Pusher(listener.forward.port, total)
    try:
        channel = listener.accept(timeout=20)
        stalled = pusher.stalled_at()
        held = runner.submit(now(lambda: channel._stream._buffered)).result(5)
        # Our side filled up to the high-water mark, and at most one window past it.
        assert HIGH_WATER <= held <= HIGH_WATER + DEFAULT_WINDOW_SIZE + DEFAULT_MAX_PACKET
        # The sender was stopped well before the end (OpenSSH's own ssh -R stops at about
        # 10 MiB here; see RELIABILITY.md).
        assert held < stalled < 24 * 1024 * 1024, stalled
        received = 0
        digest_in = bytearray()
        while data := channel.recv(1 << 20, timeout=30):
            received += len(data)
            if len(digest_in) < 16:
                digest_in += data[:16]
        assert received == total
        assert pusher.done.wait(10)
    finally:
        pusher.close()


def test_handler_runs_each_channel_in_a_thread_of_its_own(tunnel: Tunnel) -> None:
    seen: list[tuple[int, int]] = []
    gate = threading.Barrier(4, timeout=20)

    def handler(channel: Channel) -> None:
        # All four handlers are inside at once: each has its own thread.
        gate.wait()
        seen.append((channel.channel_id, threading.get_ident()))
        data = b""
        while chunk := channel.recv(timeout=20):
            data += chunk
        channel.sendall(data.upper())

    listener = tunnel.listen("127.0.0.1", 0, handler=handler)
    answers: dict[int, bytes] = {}
    clients = [
        threading.Thread(
            target=lambda i=i: answers.__setitem__(
                i, echo_through(listener.forward.port, f"client {i}".encode())
            )
        )
        for i in range(4)
    ]
    for c in clients:
        c.start()
    for c in clients:
        c.join(30)
    assert answers == {i: f"CLIENT {i}".encode() for i in range(4)}
    assert len(seen) == 4
    assert len({ident for _, ident in seen}) == 4
    assert len({cid for cid, _ in seen}) == 4
    listener.close()


def test_calls_from_several_threads(tunnel: Tunnel, threaded_echo_port: int) -> None:
    ports: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            forward = tunnel.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
            ports.append(forward.port)
            assert echo_through(forward.port, b"ping" * 1000) == b"ping" * 1000
            tunnel.statistics()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(set(ports)) == 8
    assert tunnel.statistics().forwards_active == 8
    assert tunnel.statistics().channels_opened == 8


def test_two_tunnels_at_once_share_one_reactor_thread(
    openssh_server: OpenSSHServer, openssh_client_key: Path, threaded_echo_port: int
) -> None:
    options = options_for(openssh_server, openssh_client_key)
    assert reactor_threads() == 0
    with (
        Tunnel(openssh_server.host, openssh_server.port, options=options) as first,
        Tunnel(openssh_server.host, openssh_server.port, options=options) as second,
    ):
        assert reactor_threads() == 1
        a = first.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
        b = second.request_forwarding("127.0.0.1", 0, "127.0.0.1", threaded_echo_port)
        assert a.port != b.port
        assert echo_through(a.port, b"first") == b"first"
        assert echo_through(b.port, b"second") == b"second"
        first.close()
        # The second one is unaffected by the first one's logoff.
        assert echo_through(b.port, b"still") == b"still"
        assert second.connected
        assert reactor_threads() == 1
    assert reactor_threads() == 0


def test_bad_host_key_is_a_host_key_error(
    openssh_server: OpenSSHServer, openssh_client_key: Path, tmp_path: Path
) -> None:
    wrong = tmp_path / "known_hosts"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    wrong.write_text(f"[{openssh_server.host}]:{openssh_server.port} ssh-ed25519 {other}\n")
    options = options_for(openssh_server, openssh_client_key, known_hosts=wrong)
    with pytest.raises(HostKeyError):  # noqa: SIM117 (the with is what is tested)
        with Tunnel(openssh_server.host, openssh_server.port, options=options, timeout=20):
            pass
    assert reactor_threads() == 0


def test_bad_arguments_are_spec_errors(openssh_server: OpenSSHServer) -> None:
    with pytest.raises(SpecError):
        Tunnel(openssh_server.host, 0)
    assert reactor_threads() == 0


def test_refused_forward_is_a_forwarding_error_and_the_tunnel_stays_up(
    tmp_path: Path, openssh_sshd: str, openssh_client_key: Path, threaded_echo_port: int
) -> None:
    allowed = free_port()
    server = OpenSSHServer(
        tmp_path / "sshd",
        authorized_keys=[openssh_client_key.with_suffix(".pub").read_text().strip()],
        sshd_path=openssh_sshd,
        extra_config=[f"PermitListen 127.0.0.1:{allowed}"],
    )
    server.start()
    try:
        with Tunnel(
            server.host, server.port, options=options_for(server, openssh_client_key)
        ) as tunnel:
            with pytest.raises(ForwardingError, match="remote port forwarding failed"):
                tunnel.request_forwarding("127.0.0.1", free_port(), "127.0.0.1", threaded_echo_port)
            forward = tunnel.request_forwarding(
                "127.0.0.1", allowed, "127.0.0.1", threaded_echo_port
            )
            assert forward.port == allowed
            assert echo_through(allowed, b"allowed") == b"allowed"
            assert tunnel.statistics().forwards_active == 1
    finally:
        server.stop()


def test_a_call_that_takes_too_long_is_a_timeout_naming_it(openssh_client_key: Path) -> None:
    with silent_server() as port:
        from rtunnel import PrivateKeyFile, TunnelOptions

        options = TunnelOptions.create(user="nobody", auth=[PrivateKeyFile(openssh_client_key)])
        tunnel = Tunnel("127.0.0.1", port, options=options)
        started = time.monotonic()
        with pytest.raises(CallTimeoutError, match=r"^logon\(\) did not finish within 1 s\.$") as e:
            tunnel.logon(timeout=1)
        elapsed = time.monotonic() - started
        assert isinstance(e.value, TimeoutError)
        assert 1.0 <= elapsed < 3.0, elapsed
        tunnel.close(timeout=10)
    assert reactor_threads() == 0


def test_recv_and_accept_timeouts(tunnel: Tunnel) -> None:
    listener = tunnel.listen("127.0.0.1", 0)
    started = time.monotonic()
    with pytest.raises(CallTimeoutError, match=r"^accept\(\) did not finish within 0\.5 s\.$"):
        listener.accept(timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 2.5
    with socket.create_connection(("127.0.0.1", listener.forward.port), timeout=10) as client:
        channel = listener.accept(timeout=10)
        with pytest.raises(CallTimeoutError, match=r"^recv\(\)"):
            channel.recv(timeout=0.5)
        # The timed-out recv was given up: the next one gets the data.
        client.sendall(b"late")
        assert channel.recv(timeout=10) == b"late"
        channel.close()
        assert client.recv(10) == b""
    # A closed channel: sendall fails with the library's error.
    with pytest.raises(ChannelError):
        channel.sendall(b"x", timeout=10)


def test_a_blocking_call_from_the_reactor_thread_is_refused(tunnel: Tunnel) -> None:
    outcome: list[BaseException] = []
    opened = threading.Event()

    class Reentrant(TunnelObserver):
        def channel_opened(self, info: ChannelInfo) -> None:
            try:
                tunnel.statistics()
            except RuntimeError as e:
                outcome.append(e)
            opened.set()

    tunnel.add_observer(Reentrant())
    listener = tunnel.listen("127.0.0.1", 0)
    with socket.create_connection(("127.0.0.1", listener.forward.port), timeout=10):
        assert opened.wait(10)
    assert len(outcome) == 1
    assert "reactor thread" in str(outcome[0])


def test_closed_tunnel_refuses_calls(
    openssh_server: OpenSSHServer, openssh_client_key: Path
) -> None:
    tunnel = Tunnel(
        openssh_server.host,
        openssh_server.port,
        options=options_for(openssh_server, openssh_client_key),
    )
    tunnel.logon()
    tunnel.close()
    tunnel.close()  # twice is fine
    from rtunnel import NotConnectedError

    with pytest.raises(NotConnectedError, match="closed"):
        tunnel.statistics()
    assert reactor_threads() == 0


def test_channel_stream_provides_what_twisted_calls() -> None:
    from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
    from zope.interface.verify import verifyObject

    from rtunnel._bridge import ChannelStream

    assert verifyObject(IHalfCloseableProtocol, ChannelStream())
    assert verifyObject(IPushProducer, ChannelStream())
