"""
The ``ssh-connection`` service (RFC 4254) and its channels: global requests, forwarded
channels with flow control both ways, the targets they are spliced to (TCP, and SOCKS for
dynamic forwards), the idle timeout and keepalives.
"""
