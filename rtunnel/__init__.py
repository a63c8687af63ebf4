"""
rtunnel: SSH reverse tunnels (``ssh -R``) for Twisted.

The public names are imported on first use (PEP 562's module ``__getattr__``): ``import
rtunnel`` alone stays cheap, so a command that needs a few of them does not pay for the
rest (proxies, jump hosts, certificates...) at start (issue #17).
"""

import importlib
from typing import TYPE_CHECKING

from rtunnel import _quiet  # noqa: F401 (first: installs the warning filter)
from rtunnel._core.version import __version__

if TYPE_CHECKING:
    from rtunnel._core.forward_policy import ForwardPolicy
    from rtunnel._core.policy import ReconnectPolicy
    from rtunnel._core.sshparam import (
        decode_packet,
        encode_packet,
        get_ssh_param,
        get_ssh_param_bytes,
        read_ssh_params,
        set_ssh_param,
    )
    from rtunnel._model import (
        AcceptHook,
        ChannelInfo,
        ChannelOpenRequest,
        Forward,
        ForwardState,
        ReconnectAttempt,
        TunnelObserver,
        TunnelStatistics,
    )
    from rtunnel.client.auth.credentials import (
        GSSAPI,
        AskPassword,
        CertificateFile,
        CustomAuth,
        CustomAuthStep,
        KeyboardInteractive,
        KeyboardInteractiveChallenge,
        KeyboardInteractivePrompt,
        Password,
        PrivateKey,
        PrivateKeyFile,
        SSHAgent,
    )
    from rtunnel.client.hostkeys.certificates import SSHCertificate
    from rtunnel.client.hostkeys.verify import HostKeyInfo
    from rtunnel.client.reach.jump import JumpHost
    from rtunnel.client.reach.proxy import Proxy
    from rtunnel.errors import (
        AlreadyConnectedError,
        AuthenticationError,
        ChannelError,
        ConnectError,
        ConnectionLostError,
        CredentialError,
        DecompressError,
        DecryptError,
        ECDHKeyExchangeError,
        ForwardingError,
        ForwardRetryLimitError,
        HostKeyError,
        HostKeySignatureError,
        KeepaliveError,
        KeyExchangeError,
        NegotiationError,
        NotConnectedError,
        ProtocolError,
        ProxyAuthenticationError,
        ProxyError,
        ReconnectLimitError,
        RTunnelError,
        SpecError,
        TimedOutError,
        VersionError,
    )
    from rtunnel.group import (
        GroupForward,
        GroupObserver,
        GroupServer,
        GroupServerStatus,
        TunnelGroup,
    )
    from rtunnel.options import (
        AlgorithmOptions,
        AuthOptions,
        ChannelOptions,
        HostKeyOptions,
        ReachOptions,
        StayingUpOptions,
        TunnelOptions,
        TunnelSettings,
    )
    from rtunnel.tunnel import HostKeyPolicy, ReverseTunnel

#: Each public name -> the module that defines it.
_WHERE: dict[str, str] = {
    "ForwardPolicy": "rtunnel._core.forward_policy",
    "ReconnectPolicy": "rtunnel._core.policy",
    "decode_packet": "rtunnel._core.sshparam",
    "encode_packet": "rtunnel._core.sshparam",
    "get_ssh_param": "rtunnel._core.sshparam",
    "get_ssh_param_bytes": "rtunnel._core.sshparam",
    "read_ssh_params": "rtunnel._core.sshparam",
    "set_ssh_param": "rtunnel._core.sshparam",
    "AcceptHook": "rtunnel._model",
    "ChannelInfo": "rtunnel._model",
    "ChannelOpenRequest": "rtunnel._model",
    "Forward": "rtunnel._model",
    "ForwardState": "rtunnel._model",
    "ReconnectAttempt": "rtunnel._model",
    "TunnelObserver": "rtunnel._model",
    "TunnelStatistics": "rtunnel._model",
    "AskPassword": "rtunnel.client.auth.credentials",
    "CertificateFile": "rtunnel.client.auth.credentials",
    "CustomAuth": "rtunnel.client.auth.credentials",
    "CustomAuthStep": "rtunnel.client.auth.credentials",
    "GSSAPI": "rtunnel.client.auth.credentials",
    "KeyboardInteractive": "rtunnel.client.auth.credentials",
    "KeyboardInteractiveChallenge": "rtunnel.client.auth.credentials",
    "KeyboardInteractivePrompt": "rtunnel.client.auth.credentials",
    "Password": "rtunnel.client.auth.credentials",
    "PrivateKey": "rtunnel.client.auth.credentials",
    "PrivateKeyFile": "rtunnel.client.auth.credentials",
    "SSHAgent": "rtunnel.client.auth.credentials",
    "SSHCertificate": "rtunnel.client.hostkeys.certificates",
    "HostKeyInfo": "rtunnel.client.hostkeys.verify",
    "JumpHost": "rtunnel.client.reach.jump",
    "Proxy": "rtunnel.client.reach.proxy",
    "AlreadyConnectedError": "rtunnel.errors",
    "AuthenticationError": "rtunnel.errors",
    "ChannelError": "rtunnel.errors",
    "ConnectError": "rtunnel.errors",
    "ConnectionLostError": "rtunnel.errors",
    "CredentialError": "rtunnel.errors",
    "DecompressError": "rtunnel.errors",
    "DecryptError": "rtunnel.errors",
    "ECDHKeyExchangeError": "rtunnel.errors",
    "ForwardRetryLimitError": "rtunnel.errors",
    "ForwardingError": "rtunnel.errors",
    "HostKeyError": "rtunnel.errors",
    "HostKeySignatureError": "rtunnel.errors",
    "KeepaliveError": "rtunnel.errors",
    "KeyExchangeError": "rtunnel.errors",
    "NegotiationError": "rtunnel.errors",
    "NotConnectedError": "rtunnel.errors",
    "ProtocolError": "rtunnel.errors",
    "ProxyAuthenticationError": "rtunnel.errors",
    "ProxyError": "rtunnel.errors",
    "RTunnelError": "rtunnel.errors",
    "ReconnectLimitError": "rtunnel.errors",
    "SpecError": "rtunnel.errors",
    "TimedOutError": "rtunnel.errors",
    "VersionError": "rtunnel.errors",
    "AlgorithmOptions": "rtunnel.options",
    "AuthOptions": "rtunnel.options",
    "ChannelOptions": "rtunnel.options",
    "HostKeyOptions": "rtunnel.options",
    "ReachOptions": "rtunnel.options",
    "StayingUpOptions": "rtunnel.options",
    "TunnelOptions": "rtunnel.options",
    "TunnelSettings": "rtunnel.options",
    "GroupForward": "rtunnel.group",
    "GroupObserver": "rtunnel.group",
    "GroupServer": "rtunnel.group",
    "GroupServerStatus": "rtunnel.group",
    "TunnelGroup": "rtunnel.group",
    "HostKeyPolicy": "rtunnel.tunnel",
    "ReverseTunnel": "rtunnel.tunnel",
}


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'rtunnel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


__all__ = [
    "GSSAPI",
    "AcceptHook",
    "AlgorithmOptions",
    "AlreadyConnectedError",
    "AskPassword",
    "AuthOptions",
    "AuthenticationError",
    "CertificateFile",
    "ChannelError",
    "ChannelInfo",
    "ChannelOpenRequest",
    "ChannelOptions",
    "ConnectError",
    "ConnectionLostError",
    "CredentialError",
    "CustomAuth",
    "CustomAuthStep",
    "DecompressError",
    "DecryptError",
    "ECDHKeyExchangeError",
    "Forward",
    "ForwardPolicy",
    "ForwardRetryLimitError",
    "ForwardState",
    "ForwardingError",
    "GroupForward",
    "GroupObserver",
    "GroupServer",
    "GroupServerStatus",
    "HostKeyError",
    "HostKeyInfo",
    "HostKeyOptions",
    "HostKeyPolicy",
    "HostKeySignatureError",
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
    "ProxyAuthenticationError",
    "ProxyError",
    "RTunnelError",
    "ReachOptions",
    "ReconnectAttempt",
    "ReconnectLimitError",
    "ReconnectPolicy",
    "ReverseTunnel",
    "SSHAgent",
    "SSHCertificate",
    "SpecError",
    "StayingUpOptions",
    "TimedOutError",
    "TunnelGroup",
    "TunnelObserver",
    "TunnelOptions",
    "TunnelSettings",
    "TunnelStatistics",
    "VersionError",
    "__version__",
    "decode_packet",
    "encode_packet",
    "get_ssh_param",
    "get_ssh_param_bytes",
    "read_ssh_params",
    "set_ssh_param",
]
