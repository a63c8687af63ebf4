"""The SSH client side of rtunnel: transport, authentication, host keys, connection, channels."""
