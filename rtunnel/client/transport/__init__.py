"""
The SSH transport (RFC 4253): the binary packet layer, key exchange, algorithm lists,
legacy ciphers, socket options, and :class:`~.client_transport.ClientTransport`.
"""
