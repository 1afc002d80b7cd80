"""Keep-alive connections spread evenly over the worker processes of ``serve --workers N``.

The workers accept from one shared socket, and a keep-alive connection stays with the worker
that accepted it. Whoever wakes first accepts, so a burst of new connections splits unevenly
(16 clients over two workers: 12/4, 11/5, even 16/0 while the second worker is still loading its
model; ``experiments/serve_balance.py``). The busier worker's clients then queue behind one core
while the other core idles, and throughput depends on the draw.

Each worker counts its open connections (:class:`CountingProtocol`, uvicorn's HTTP protocol with
two counters) and publishes the count in a file of its own, named by its process id, in a folder
the supervisor creates (``$CLIPDETECT_SERVE_SHARE``). A worker's file appears once its detector has
loaded, so only ready workers are counted. The service has no WebSocket route and uvicorn runs
with ``ws="none"``: an upgrade would hand a connection to another protocol object unseen by the
count. A worker holding more than its fair share,
``ceil(open connections of all workers / ready workers)``, answers its next requests with
``Connection: close`` (:class:`ShedExcess`), one per connection over the share. Those clients
reconnect, and a reconnecting client may land on either worker. A worker still over its share
sheds again, until the split is even. Reading the other workers' counts costs a few ``pread``
calls, at most every ``refresh`` seconds. A file whose process has died (a restarted worker) is
ignored and removed.
"""
from __future__ import annotations

import math
import os
import struct
import time
from pathlib import Path
from typing import Dict, Optional

from clipdetect.core.lock import pid_alive

__all__ = ["SHARE_ENV", "ConnectionShare", "CountingProtocol", "ShedExcess", "current_share", "start_share"]

#: the folder shared by the workers of one server (set by the supervisor, ``serve --workers``)
SHARE_ENV = "CLIPDETECT_SERVE_SHARE"
_COUNT = struct.Struct("<i")
_SHARE: list = [None]  # this worker's ConnectionShare, once its application has loaded


class ConnectionShare:
    """This worker's open-connection count, published in ``folder/<name>``, and the decision to shed.

    ``name`` defaults to the process id; files named by a process that no longer exists are ignored
    and removed (a worker that died and was restarted)."""

    def __init__(self, folder: str | os.PathLike, *, name: Optional[str] = None, refresh: float = 0.05):
        self.folder, self.refresh = Path(folder), refresh
        self.name = name or str(os.getpid())
        self.open = 0  # connections open in this worker
        self.shedding = 0  # responses marked Connection: close whose connection has not closed yet
        self._fds: Dict[str, int] = {}
        self._read_at, self._fair = -math.inf, math.inf
        self.fd = self._publish()

    def _publish(self) -> int:
        """(Re)create this worker's file with the current count; its descriptor."""
        fd = os.open(self.folder / self.name, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.pwrite(fd, _COUNT.pack(self.open), 0)
        return fd

    def _write(self) -> None:
        os.pwrite(self.fd, _COUNT.pack(self.open), 0)

    def _reopen(self) -> None:
        try:
            fd = self._publish()
        except OSError:
            return
        os.close(self.fd)
        self.fd = fd

    def opened(self) -> None:
        self.open += 1
        self._write()

    def closed(self) -> None:
        self.open = max(0, self.open - 1)
        self.shedding = max(0, self.shedding - 1)
        self._write()

    def counts(self) -> Dict[str, int]:
        """Open connections of every ready worker, this one included (this one alone when the
        folder cannot be read)."""
        out = {self.name: self.open}
        try:
            names = os.listdir(self.folder)
        except OSError:  # the folder is gone (a cleaner of temporary files): balance nothing
            return out
        if self.name not in names:  # this worker's file was removed: publish it again
            self._reopen()
        for name in set(self._fds) - set(names):  # a file another worker removed
            os.close(self._fds.pop(name))
        for name in names:
            if name == self.name:
                continue
            if name.isdigit() and not pid_alive(int(name)):
                self._forget(name, remove=True)
                continue
            try:
                fd = self._fds.get(name)
                if fd is None:
                    fd = self._fds[name] = os.open(self.folder / name, os.O_RDONLY | os.O_NOFOLLOW)
                raw = os.pread(fd, _COUNT.size, 0)
            except OSError:
                self._forget(name, remove=False)
                continue
            if len(raw) == _COUNT.size:
                out[name] = _COUNT.unpack(raw)[0]
        return out

    def _forget(self, name: str, *, remove: bool) -> None:
        """Drop the descriptor of ``name``'s file; ``remove``: delete the file too (its worker is dead)."""
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)
        if remove:
            try:
                os.unlink(self.folder / name)
            except OSError:
                pass

    def should_shed(self) -> bool:
        """True when this worker holds more connections than its fair share, counting those it
        already asked to close; each True asks one more connection to close."""
        now = time.monotonic()
        if now - self._read_at >= self.refresh:
            counts = self.counts()
            self._fair, self._read_at = math.ceil(sum(counts.values()) / len(counts)), now
        if self.open - self.shedding > self._fair:
            self.shedding += 1
            return True
        return False

    def close(self) -> None:
        for name in list(self._fds):
            os.close(self._fds.pop(name))
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        try:
            os.unlink(self.folder / self.name)
        except OSError:
            pass


def start_share() -> Optional[ConnectionShare]:
    """This worker's share, when the supervisor set ``$CLIPDETECT_SERVE_SHARE`` (else None)."""
    folder = os.environ.get(SHARE_ENV)
    if folder and _SHARE[0] is None:
        import atexit

        _SHARE[0] = share = ConnectionShare(folder)
        atexit.register(share.close)  # a worker that stops leaves no file behind
    return _SHARE[0]


def current_share() -> Optional[ConnectionShare]:
    return _SHARE[0]


def _base_protocol():
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # httptools missing: uvicorn's pure-Python protocol
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


class CountingProtocol(_base_protocol()):  # type: ignore[misc]
    """uvicorn's HTTP protocol, counting this worker's open connections in its share."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        share = current_share()
        if share is not None:
            share.opened()
        super().connection_made(transport)

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        share = current_share()
        if share is not None:
            share.closed()
        super().connection_lost(exc)


class ShedExcess:
    """ASGI wrapper: ``Connection: close`` on a response while this worker is over its share."""

    def __init__(self, app, share: ConnectionShare):
        self.app, self.share = app, share

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_shedding(message):
            if message["type"] == "http.response.start" and self.share.should_shed():
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return await self.app(scope, receive, send_shedding)
