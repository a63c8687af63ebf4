"""
Trusting the server's host key: known_hosts matching and fingerprints, OpenSSH
certificates (host and user), host certificates in the key exchange, and the policy that
decides.
"""
