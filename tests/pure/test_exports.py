"""The public surface is what we mean it to be (after klein's test_exports)."""

from __future__ import annotations

import subprocess
import sys

from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from zope.interface.verify import verifyObject

import rtunnel
from rtunnel._model import ChannelInfo
from rtunnel.client.channels.channel import ForwardedChannel
from rtunnel.client.channels.connection import ForwardingConnection


def test_public_names() -> None:
    assert sorted(rtunnel.__all__) == sorted(
        [
            "AcceptHook",
            "AlgorithmOptions",
            "AlreadyConnectedError",
            "AuthOptions",
            "ChannelOptions",
            "HostKeyOptions",
            "ReachOptions",
            "StayingUpOptions",
            "TunnelOptions",
            "TunnelSettings",
            "AskPassword",
            "AuthenticationError",
            "CertificateFile",
            "ChannelError",
            "ChannelInfo",
            "ChannelOpenRequest",
            "ConnectError",
            "ConnectionLostError",
            "CredentialError",
            "DecompressError",
            "DecryptError",
            "ECDHKeyExchangeError",
            "Forward",
            "ForwardState",
            "ForwardRetryLimitError",
            "ForwardingError",
            "GSSAPI",
            "GroupForward",
            "GroupObserver",
            "GroupServer",
            "GroupServerStatus",
            "TunnelGroup",
            "HostKeyError",
            "HostKeyInfo",
            "HostKeySignatureError",
            "HostKeyPolicy",
            "JumpHost",
            "KeepaliveError",
            "KeyExchangeError",
            "KeyboardInteractive",
            "KeyboardInteractiveChallenge",
            "KeyboardInteractivePrompt",
            "NegotiationError",
            "NotConnectedError",
            "Password",
            "PrivateKey",
            "PrivateKeyFile",
            "ProtocolError",
            "Proxy",
            "RTunnelError",
            "ReconnectAttempt",
            "ReconnectLimitError",
            "ReconnectPolicy",
            "ForwardPolicy",
            "ReverseTunnel",
            "SSHAgent",
            "SSHCertificate",
            "SpecError",
            "ProxyAuthenticationError",
            "ProxyError",
            "TimedOutError",
            "TunnelObserver",
            "TunnelStatistics",
            "VersionError",
            "__version__",
            "CustomAuth",
            "CustomAuthStep",
            "decode_packet",
            "encode_packet",
            "get_ssh_param",
            "get_ssh_param_bytes",
            "read_ssh_params",
            "set_ssh_param",
        ]
    )
    for name in rtunnel.__all__:
        assert getattr(rtunnel, name) is not None


def test_error_codes_are_stable() -> None:
    codes = {
        name: getattr(rtunnel, name).code for name in rtunnel.__all__ if name.endswith("Error")
    }
    assert codes == {
        "AlreadyConnectedError": 104,
        "AuthenticationError": 1032,
        "ChannelError": 1021,
        "ConnectError": 1036,
        "ConnectionLostError": 1001,
        "CredentialError": 302,
        "DecompressError": 1016,
        "DecryptError": 1015,
        "ECDHKeyExchangeError": 1038,
        "ForwardRetryLimitError": 10057,
        "ForwardingError": 1098,
        "HostKeyError": 1030,
        "HostKeySignatureError": 1031,
        "KeepaliveError": 1039,
        "KeyExchangeError": 1034,
        "NegotiationError": 1003,
        "NotConnectedError": 1117,
        "ProtocolError": 1023,
        "RTunnelError": 1036,
        "ReconnectLimitError": 1037,
        "SpecError": 10022,
        "TimedOutError": 201,
        "ProxyError": 1036,
        "ProxyAuthenticationError": 1036,
        "VersionError": 1002,
    }
    assert all(issubclass(getattr(rtunnel, n), rtunnel.RTunnelError) for n in codes)


def test_importing_rtunnel_installs_no_reactor() -> None:
    # Conch's userauth imports the global reactor; the pytest plugin imports rtunnel
    # before pytest-twisted installs the reactor it was asked for (--reactor=asyncio).
    code = (
        "import sys, rtunnel, rtunnel.testing.pytest_plugin; "
        "sys.exit('twisted.internet.reactor' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_channel_provides_what_it_declares() -> None:
    conn = ForwardingConnection(
        None,  # type: ignore[arg-type]
        window_size=65536,
        max_packet=32768,
        max_channels=1,
        on_started=lambda c: None,
        on_stopped=lambda c: None,
    )
    info = ChannelInfo(0, "forwarded-tcpip", "127.0.0.1", 1, "127.0.0.1", 2)
    channel = ForwardedChannel(conn, 0, 0, 0, 1024, 65536, 32768, info)
    for interface in (ITransport, IPushProducer, IConsumer):
        assert verifyObject(interface, channel)
    assert verifyObject(IPushProducer, conn)


def test_importing_rtunnel_silences_conchs_dsa_warning() -> None:
    """
    cryptography 51 deprecates DSA and Conch's key module touches dsa.* for every key:
    with rtunnel imported, handling an Ed25519 key prints nothing (even with ``-W
    default``), while another warning from the same place would still be shown.
    """
    code = (
        "import rtunnel, warnings\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519\n"
        "from twisted.conch.ssh import keys\n"
        "key = keys.Key(ed25519.Ed25519PrivateKey.generate())\n"
        "key.public().toString('openssh'); key.sign(b'x')\n"
        "warnings.warn_explicit('another warning', UserWarning, 'keys.py', 1,\n"
        "                      module='twisted.conch.ssh.keys')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "DSA is deprecated and support" not in done.stderr
    assert done.stderr.count("UserWarning: another warning") == 1, done.stderr


def test_testing_public_names() -> None:
    """rtunnel.testing's surface: what users import to test their code (issue #16)."""
    import rtunnel.testing
    from rtunnel.testing import pytest_plugin

    assert sorted(rtunnel.testing.__all__) == [
        "FaultProxy",
        "ForwardListener",
        "InboundConnection",
        "KbdIntPrompt",
        "KeyKind",
        "MemoryPair",
        "OpenSSHServer",
        "SSHTestServer",
        "WaitTimeoutError",
        "certificate_line",
        "client_key",
        "generate_client_key",
        "host_key",
        "make_certificate",
    ]
    for name in rtunnel.testing.__all__:
        assert getattr(rtunnel.testing, name) is not None
    assert sorted(pytest_plugin.__all__) == [
        "ssh_client_key",
        "ssh_fault_proxy",
        "ssh_known_hosts",
        "ssh_memory_pair",
        "ssh_test_server",
        "ssh_user",
    ]
    assert issubclass(rtunnel.testing.WaitTimeoutError, TimeoutError)


def test_memory_pair_surface() -> None:
    """The memory pair's public methods and attributes, as docs/testing.md lists them."""
    from rtunnel.testing import InboundConnection, MemoryPair

    assert sorted(n for n in vars(MemoryPair) if not n.startswith("_")) == [
        "advance",
        "close",
        "connect",
        "connection_attempts",
        "connections",
        "drop",
        "flush",
        "host",
        "kill",
        "logon",
        "make_tunnel",
        "port",
        "refuse_connections",
        "run",
    ]
    pair = MemoryPair()
    try:
        attributes = {"client_key", "directory", "known_hosts", "reactor", "server"}
        attributes |= {"tunnel", "user"}
        assert attributes <= set(vars(pair)), attributes - set(vars(pair))
    finally:
        pair.close()
    assert sorted(n for n in vars(InboundConnection) if not n.startswith("_")) == [
        "abort",
        "close",
        "closed",
        "connectionLost",
        "dataReceived",
        "readConnectionLost",
        "write",
        "writeConnectionLost",
        "write_eof",
    ]
