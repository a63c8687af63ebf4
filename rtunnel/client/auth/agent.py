"""
Public-key authentication through ``ssh-agent`` (the agent protocol,
draft-miller-ssh-agent): list the agent's keys, have it sign.

Conch's :class:`~twisted.conch.ssh.agent.SSHAgentClient` speaks the protocol but always
signs with flags 0, which for RSA keys means SHA-1 ``ssh-rsa`` signatures that OpenSSH
8.8+ refuses; the sign request here sets ``SSH_AGENT_RSA_SHA2_256/512`` (section 4.5.1).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch.ssh import agent
from twisted.conch.ssh.common import NS, getNS
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol

from rtunnel._core.text import printable
from rtunnel.errors import CredentialError

__all__ = ["AgentConnection", "connect_agent"]

#: draft-miller-ssh-agent section 4.5.1.
SSH_AGENT_RSA_SHA2_256 = 2
SSH_AGENT_RSA_SHA2_512 = 4


class AgentConnection:
    """One connection to an agent."""

    def __init__(self, protocol: agent.SSHAgentClient) -> None:
        self._protocol = protocol

    async def identities(self) -> list[tuple[bytes, str]]:
        """The agent's keys (and certificates): (public blob, comment) pairs."""
        found = await self._protocol.requestIdentities()
        return [(bytes(blob), comment.decode("utf-8", "replace")) for blob, comment in found]

    async def sign(self, blob: bytes, data: bytes, algorithm: bytes) -> bytes:
        """
        Have the agent sign ``data`` with the key of ``blob``.

        :param algorithm: the signature algorithm wanted (chooses the RSA flag).
        :return: the signature as it goes in the request (``string alg, string sig``).
        """
        flags = 0
        if algorithm.startswith(b"rsa-sha2-512"):
            flags = SSH_AGENT_RSA_SHA2_512
        elif algorithm.startswith(b"rsa-sha2-256"):
            flags = SSH_AGENT_RSA_SHA2_256
        response: bytes = await self._protocol.sendRequest(
            agent.AGENTC_SIGN_REQUEST, NS(blob) + NS(data) + struct.pack(">L", flags)
        )
        if response[:1] != bytes((agent.AGENT_SIGN_RESPONSE,)):
            raise CredentialError("The agent refused to sign.")
        return bytes(getNS(response[1:])[0])

    def close(self) -> None:
        """Close the connection."""
        transport = self._protocol.transport
        if transport is not None:
            transport.loseConnection()


async def connect_agent(reactor: Any, path: str) -> AgentConnection:
    """
    Connect to the agent listening on the Unix socket ``path``.

    :raises CredentialError: when it cannot be reached.
    """
    try:
        protocol = await connectProtocol(UNIXClientEndpoint(reactor, path), agent.SSHAgentClient())
    except Exception as e:
        raise CredentialError(
            f"Could not connect to the agent at {printable(path, None)}: {e}"
        ) from None
    return AgentConnection(protocol)
