"""
An in-process SSH server built on Conch that implements the server side of remote
forwarding (RFC 4254 section 7), for testing SSH clients that use ``ssh -R``:
:class:`SSHTestServer`.

Pieces, outside in, each in its own module::

    SSHTestServer (_server) ---- listens ---> _ServerTransport (_transport), one per SSH
      + FaultControls (_faults)                 |  connection
                                                |  ssh-userauth (_auth): _UserAuthServer
                                                |     + Portal (_PasswordChecker,
                                                |     _PublicKeyChecker: keys and user
                                                |     certificates)
                                                |  ssh-connection (_forwarding):
                                                |     _ForwardingConnection
                                                |     tcpip-forward -> _Forward (_ports)
    inbound TCP connection -> _InboundProtocol <-> _ForwardedChannel (forwarded-tcpip)

The pieces see the server only through ``_context.ServerContext``; nothing below
``_server`` imports it.
"""

from __future__ import annotations

from rtunnel.testing.server._context import KbdIntPrompt
from rtunnel.testing.server._ports import ForwardListener, listen_addresses
from rtunnel.testing.server._server import SSHTestServer

__all__ = ["ForwardListener", "KbdIntPrompt", "SSHTestServer", "listen_addresses"]
