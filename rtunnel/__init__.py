"""
rtunnel: SSH reverse tunnels (``ssh -R``) for Twisted.
"""

from rtunnel._model import (
    AcceptHook,
    ChannelInfo,
    ChannelOpenRequest,
    Forward,
    ForwardState,
    TunnelObserver,
)
from rtunnel.client.credentials import Password, PrivateKeyFile
from rtunnel.errors import (
    AlreadyConnectedError,
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectionLostError,
    CredentialError,
    ForwardingError,
    HostKeyError,
    NotConnectedError,
    ProtocolError,
    RTunnelError,
    SpecError,
)
from rtunnel.tunnel import HostKeyPolicy, ReverseTunnel

__version__ = "0.1.0.dev0"

__all__ = [
    "AcceptHook",
    "AlreadyConnectedError",
    "AuthenticationError",
    "ChannelError",
    "ChannelInfo",
    "ChannelOpenRequest",
    "ConnectError",
    "ConnectionLostError",
    "CredentialError",
    "Forward",
    "ForwardState",
    "ForwardingError",
    "HostKeyError",
    "HostKeyPolicy",
    "NotConnectedError",
    "Password",
    "PrivateKeyFile",
    "ProtocolError",
    "RTunnelError",
    "ReverseTunnel",
    "SpecError",
    "TunnelObserver",
    "__version__",
]
