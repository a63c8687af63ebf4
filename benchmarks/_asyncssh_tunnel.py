"""
The asyncssh peer for the benchmark: the equivalent of ``ssh -N -R`` in a few lines.

``python3 benchmarks/_asyncssh_tunnel.py HOST PORT USER KEY KNOWN_HOSTS CIPHER
LISTEN_PORT TARGET_PORT``: log on, ask the server to listen on ``127.0.0.1:LISTEN_PORT``
and forward it to ``127.0.0.1:TARGET_PORT``, then stay up until killed. asyncssh's own
defaults otherwise (its window and packet size, as a user would get them).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import asyncssh


async def _main(argv: list[str]) -> None:
    host, port, user, key, known_hosts, cipher, listen_port, target_port = argv
    async with asyncssh.connect(
        host,
        int(port),
        username=user,
        client_keys=[key],
        known_hosts=known_hosts,
        encryption_algs=[cipher],
        agent_path=None,
        config=[],
    ) as conn:
        await conn.forward_remote_port("127.0.0.1", int(listen_port), "127.0.0.1", int(target_port))
        stop = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
