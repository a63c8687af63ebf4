"""
rtunnel: SSH reverse tunnels (``ssh -R``) for Twisted.
"""

from rtunnel._model import (
    AcceptHook,
    ChannelInfo,
    ChannelOpenRequest,
    Forward,
    ForwardState,
    ReconnectAttempt,
    TunnelObserver,
)
from rtunnel._policy import ReconnectPolicy
from rtunnel.client.credentials import (
    AskPassword,
    CertificateFile,
    KeyboardInteractive,
    KeyboardInteractiveChallenge,
    KeyboardInteractivePrompt,
    Password,
    PrivateKey,
    PrivateKeyFile,
    SSHAgent,
)
from rtunnel.client.verify import HostKeyInfo
from rtunnel.errors import (
    AlreadyConnectedError,
    AuthenticationError,
    ChannelError,
    ConnectError,
    ConnectionLostError,
    CredentialError,
    ForwardingError,
    ForwardRetryLimitError,
    HostKeyError,
    KeepaliveError,
    NegotiationError,
    NotConnectedError,
    ProtocolError,
    ReconnectLimitError,
    RTunnelError,
    SpecError,
)
from rtunnel.tunnel import HostKeyPolicy, ReverseTunnel

__version__ = "0.1.0.dev0"

__all__ = [
    "AcceptHook",
    "AlreadyConnectedError",
    "AskPassword",
    "AuthenticationError",
    "CertificateFile",
    "ChannelError",
    "ChannelInfo",
    "ChannelOpenRequest",
    "ConnectError",
    "ConnectionLostError",
    "CredentialError",
    "Forward",
    "ForwardRetryLimitError",
    "ForwardState",
    "ForwardingError",
    "HostKeyError",
    "HostKeyInfo",
    "HostKeyPolicy",
    "KeepaliveError",
    "KeyboardInteractive",
    "KeyboardInteractiveChallenge",
    "KeyboardInteractivePrompt",
    "NegotiationError",
    "NotConnectedError",
    "Password",
    "PrivateKey",
    "PrivateKeyFile",
    "ProtocolError",
    "RTunnelError",
    "ReconnectAttempt",
    "ReconnectLimitError",
    "ReconnectPolicy",
    "ReverseTunnel",
    "SSHAgent",
    "SpecError",
    "TunnelObserver",
    "__version__",
]
