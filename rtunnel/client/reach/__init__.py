"""
Reaching the SSH server other than by a direct TCP connection: through an HTTP or SOCKS
proxy, over a ``ProxyCommand``'s standard input and output, or through jump hosts.
"""
