"""
Running tunnels for months (issue #14): many tunnels from one configuration, reload,
status, health and metrics, systemd. Built on the public API of :mod:`rtunnel`.
"""
