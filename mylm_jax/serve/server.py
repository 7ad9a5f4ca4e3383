"""uvicorn, set up to be exposed: time limits on every connection and a bounded drain.

    server = make_server(app, host, port)     # app = create_app(engine): its options decide
    server.run()                              # `mylm serve`; BackgroundServer(app) in a thread

uvicorn closes an idle keep-alive connection (timeout_keep_alive) but gives no deadline to a
connection that has not finished its headers: one that sends half a request line and stops
is held for ever, and a few hundred of them take every connection. `HeaderTimeoutH11` adds
that deadline: from the connection's first moment, and from the first byte of each later
request, the headers must be complete within --header-timeout seconds, or the connection is
closed. Headers may be 16 KiB at most (h11's limit; larger ones get a 400). Beyond
--max-connections open connections, uvicorn answers 503 (limit_concurrency).

SIGTERM (or Ctrl-C): `Server.shutdown` first drains the engine (every request still
waiting for a slot gets a 503 now; no new one is admitted) while uvicorn waits for the
running ones. At --drain-timeout seconds the engine cuts those still running (a 503, or an
error event and [DONE] in a stream), so their connections end in order; uvicorn's own
graceful-shutdown timeout, CUT_GRACE later, cancels whatever still hangs.
"""

from __future__ import annotations

import asyncio
import threading
import time

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEADER_BYTES = 16 * 1024
CUT_GRACE = 2.0  # seconds the cut requests get to send their last bytes before uvicorn cancels them


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's line and headers."""

    header_timeout = 10.0  # set per server by `make_server` (a subclass per value)

    def connection_made(self, transport) -> None:
        self._header_timer = None
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def connection_lost(self, exc) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _watch_headers(self) -> None:
        """Armed while h11 waits for a request's headers (IDLE), disarmed once they are in."""
        if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()  # nothing to answer: there is no request yet


class Server(uvicorn.Server):
    """uvicorn.Server whose shutdown refuses the requests that have not started and cuts the
    running ones at the drain's deadline."""

    def __init__(self, config: uvicorn.Config, engine, drain_timeout: float):
        super().__init__(config)
        self.engine, self.drain_timeout = engine, drain_timeout

    async def shutdown(self, sockets=None) -> None:
        self.engine.drain()
        deadline = asyncio.get_running_loop().call_later(self.drain_timeout, self.engine.cut)
        try:
            await super().shutdown(sockets=sockets)
        finally:
            deadline.cancel()


def make_server(app, host: str = "127.0.0.1", port: int = 0) -> Server:
    """A Server for `app` (create_app's: app.state.engine holds the options and the drain)."""
    engine = app.state.engine
    options = engine.options
    protocol = type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": options.header_timeout})
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol, ws="none",
                            lifespan="on", timeout_keep_alive=options.idle_timeout,
                            timeout_graceful_shutdown=options.drain_timeout + CUT_GRACE,
                            limit_concurrency=options.max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    return Server(config, engine, options.drain_timeout)


class BackgroundServer:
    """The server for `app` in a thread (the tests, scripts/bench_serve.py); port 0: a free port."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.server = make_server(app, host, port)
        self.drain_timeout = app.state.engine.options.drain_timeout
        self.thread = threading.Thread(target=self.server.run, name="mylm-uvicorn", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        bound = self.server.servers[0].sockets[0].getsockname()
        self.url = f"http://{bound[0]}:{bound[1]}"

    def stop(self) -> None:
        """What SIGTERM does: drain, then stop."""
        self.server.should_exit = True
        self.thread.join(timeout=self.drain_timeout + CUT_GRACE + 30)
