"""
User authentication (RFC 4252): the credentials a tunnel logs on with, the
``ssh-userauth`` client, key formats, ssh-agent, askpass, GSSAPI and signature algorithms.
"""
