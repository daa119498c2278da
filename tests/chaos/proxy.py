"""A loopback TCP proxy that injects network faults between a client and a redis-server.

It listens on ``127.0.0.1:<free port>`` and forwards every accepted connection to the server's
port. It runs an asyncio loop in a daemon thread of its own, so sync and asyncio clients can
both use it, and its mode can be switched at any time from any thread (reliability notes §4.3):

* ``pass``: forward bytes both ways;
* ``blackhole``: keep connections open but drop every byte, both ways (a partition);
* ``delay_up(s)`` / ``delay_down(s)``: deliver client→server / server→client bytes *s* seconds
  after the proxy read them (byte order is kept; bytes sent before a client closes its end
  are still delivered, as TCP would);
* ``reset_after_request(marker)``: forward the next client→server chunk that contains *marker*,
  then close the client's side (with ``SO_LINGER 0``: a reset) before any reply reaches it; the
  server's reply is read and dropped, so the command has run but its result is unknown to the client.

Everything is closed on :meth:`close` (or on leaving the ``with`` block), and at the latest
after ``max_lifetime`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType

_Item = tuple[float, bytes, bool] | None  # (deliver at, data, reset the client after) or end of stream


class _Conn:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client, self.upstream = client, upstream
        self.doomed = False  # a reset is pending: drop server replies, then close

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            writer.transport.abort()


class FaultProxy:
    """``with FaultProxy(server.port) as proxy:`` then connect clients to ``proxy.port``."""

    def __init__(self, target_port: int, *, max_lifetime: float = 120.0) -> None:
        self.target_port = target_port
        self.port = 0
        self.bytes_up = 0  # bytes delivered to the server, for "no round trip" checks
        self.resets = 0  # resets done by reset_after_request
        self.accepted = 0  # client connections accepted
        self.held = 0  # chunks read and not yet delivered (or dropped): see :meth:`delivered`
        self._max_lifetime = max_lifetime
        self._delay = {"up": 0.0, "down": 0.0}
        self._blackhole = False
        self._marker: bytes | None = None
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            self.close()
            raise RuntimeError("the proxy did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- modes (callable from any thread) ---------------------------------------------------

    def pass_through(self) -> None:
        self._blackhole, self._marker, self._delay = False, None, {"up": 0.0, "down": 0.0}

    def blackhole(self) -> None:
        self._blackhole = True

    def delay_up(self, seconds: float) -> None:
        self._delay = {**self._delay, "up": seconds}

    def delay_down(self, seconds: float) -> None:
        self._delay = {**self._delay, "down": seconds}

    def delivered(self) -> bool:
        """True once every byte read so far has been delivered (or dropped by a reset): what a
        delay held back has landed. Poll it (``wait_until(proxy.delivered, ...)``) instead of
        sleeping for the delay: the proxy's thread may run late on a loaded machine."""
        return self.held == 0

    def reset_after_request(self, marker: bytes) -> None:
        """Arm a one-shot reset for the next request containing *marker* (then back to pass)."""
        self._marker = marker

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def _main(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self._max_lifetime)
        server.close()
        for conn in list(self._conns):
            conn.abort()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # -- forwarding -------------------------------------------------------------------------

    async def _handle(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_out.transport.abort()
            return
        conn = _Conn(client_out, server_out)
        self._conns.add(conn)
        try:
            await asyncio.gather(self._pump(client_in, conn, "up"), self._pump(server_in, conn, "down"))
        except asyncio.CancelledError:
            pass  # the proxy is closing (a cancelled handler task would be reported by asyncio.streams)
        finally:
            self._conns.discard(conn)
            conn.abort()

    async def _pump(self, source: asyncio.StreamReader, conn: _Conn, direction: str) -> None:
        """Read from *source*; a writer task delivers each chunk when its delay has passed."""
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        writer = asyncio.create_task(self._deliver(queue, conn, direction))
        loop, last = asyncio.get_running_loop(), 0.0
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if direction == "down" and conn.doomed:
                    conn.upstream.transport.abort()  # the doomed request's reply: it has run
                    break
                if self._blackhole:
                    continue
                reset = direction == "up" and self._marker is not None and self._marker in data
                if reset:
                    self._marker, conn.doomed = None, True
                last = max(loop.time() + self._delay[direction], last)
                self.held += 1
                queue.put_nowait((last, data, reset))
        queue.put_nowait(None)
        await writer

    async def _deliver(self, queue: asyncio.Queue[_Item], conn: _Conn, direction: str) -> None:
        loop = asyncio.get_running_loop()
        target = conn.upstream if direction == "up" else conn.client
        while (item := await queue.get()) is not None:
            at, data, reset = item
            try:
                await asyncio.sleep(max(0.0, at - loop.time()))
                if target.is_closing() or (direction == "down" and conn.doomed):
                    continue
                with contextlib.suppress(OSError):
                    target.write(data)
                    await target.drain()
                    if direction == "up":
                        self.bytes_up += len(data)
            finally:
                self.held -= 1
            if reset:
                sock = conn.client.get_extra_info("socket")
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.client.transport.abort()
                self.resets += 1
        if not target.is_closing() and not conn.doomed and target.can_write_eof():
            with contextlib.suppress(OSError):
                target.write_eof()  # half-close: the peer sees the end after every byte sent before it
