"""
RELIABILITY.md D13, the count behind it: the connection pauses channel sources while more
than ``kex_queue_limit`` bytes of ours wait for a key exchange to finish. When the rekey
limit is smaller than what one exchange queued, flushing that queue starts the next
exchange, and the rest of the queue is queued again into it; the count must follow
exactly (it was reset to 0 after the flush, with the re-queued bytes still held). Whole
stack in memory (tests/memory_stack.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memory_stack import Stack, result_of
from test_kex_backpressure import CHUNK, _open_source_channels, _queued

REKEY_LIMIT = 64 * 1024
QUEUE_LIMIT = 96 * 1024


def _server_holds_input(stack: Stack) -> tuple[list[bytes], Any]:
    """The server stops reading (what we send is kept); its real reader, to resume."""
    server: Any = stack.server_transport
    deliver = server.dataReceived
    held: list[bytes] = []
    server.dataReceived = held.append
    return held, deliver


def test_bytes_requeued_by_the_flush_are_counted_exactly(tmp_path: Path) -> None:
    stack = Stack(tmp_path, rekey_bytes=REKEY_LIMIT, keepalive_interval=0)
    result_of(stack.connect())
    sources, wires = _open_source_channels(stack, 2)
    conn, client = stack.tunnel._conn, stack.client
    assert conn is not None
    conn.kex_queue_limit = QUEUE_LIMIT

    # The server starts a key exchange and does not answer ours for a while; local data
    # keeps coming until the queue passes its limit.
    held, deliver = _server_holds_input(stack)
    stack.server_transport.sendKexInit()
    stack.pump.flush()
    for source in sources:
        source.pump(limit=1024 * 1024)
    queued = _queued(client)
    assert conn.kex_blocked and all(s.paused for s in sources)
    assert QUEUE_LIMIT < queued <= QUEUE_LIMIT + 2 * (CHUNK + 64)
    assert conn._held_bytes == queued
    exchanges, started = client.key_exchanges, client.rekeys_by_us
    assert client.rekeys_by_peer == 0

    # The server answers, then stops reading again: our flush of ~100 KiB crosses the
    # 64 KiB rekey limit, starts our next exchange, and queues the rest into it.
    server: Any = stack.server_transport
    server.dataReceived = deliver
    for data in held:
        deliver(data)
    held, deliver = _server_holds_input(stack)
    stack.pump.flush()
    assert client.key_exchanges == exchanges + 1
    assert client._keyExchangeState != client._KEY_EXCHANGE_NONE  # the next one, ours
    requeued = _queued(client)
    # About what the flush could not send under the new keys: the queue less the limit.
    assert queued - REKEY_LIMIT - 2 * (CHUNK + 64) <= requeued <= queued - REKEY_LIMIT + CHUNK
    assert conn._held_bytes == requeued
    assert conn.kex_blocked is (requeued > QUEUE_LIMIT)

    # More data while this exchange is stuck: counted on top, paused past the limit.
    for source in sources:
        source.pump(limit=2 * 1024 * 1024)
    assert conn._held_bytes == _queued(client) > QUEUE_LIMIT
    assert conn.kex_blocked and all(s.paused for s in sources)
    assert _queued(client) <= QUEUE_LIMIT + 2 * (CHUNK + 64)

    # The server reads again: everything is sent, nothing is held, sources resume.
    server.dataReceived = deliver
    for data in held:
        deliver(data)
    for _ in range(20):
        stack.pump.flush()
        for source in sources:
            source.pump(limit=2 * 1024 * 1024)
        if not any(s.paused for s in sources) and _queued(client) == 0:
            break
    stack.pump.flush()
    assert conn._held_bytes == _queued(client) == 0
    assert not conn.kex_blocked
    assert not any(s.paused for s in sources)
    # Every limit crossed by what the sources wrote gave one exchange of ours (±2), the
    # server started only the first.
    crossings = sum(s.written for s in sources) / REKEY_LIMIT
    assert crossings - 2 <= client.rekeys_by_us - started <= crossings + 2
    assert client.rekeys_by_peer == 1
    # Nothing held was lost: each remote client got every byte its source wrote.
    assert [len(w.value()) for w in wires] == [s.written for s in sources]
    assert stack.tunnel.connected
