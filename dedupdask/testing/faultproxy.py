"""Test helper: a loopback TCP proxy in front of an HTTP server that fails on cue.

Put it in front of the :class:`~dedupdask.testing.SeaweedFS` S3 server and point the client
at :attr:`FaultProxy.endpoint`; it forwards bytes both ways and reads the HTTP/1.1 request
framing (``Content-Length`` and chunked bodies) of what the client sends, so a test can cue
an outage on *the n-th request that matches a pattern* (``GET /bucket/shard.zip``) and,
optionally, after *k bytes of that request's response*, instead of racing a timer against
the job. What an outage looks like is the ``mode``:

``reset``
    connections are cut with a TCP RST; new ones are accepted and reset at once
    (a crashed backend behind a load balancer). Fails fast.
``refuse``
    the listening socket is closed: connecting gives ``ECONNREFUSED`` (nothing listening).
``hang``
    connections are accepted, requests read and never answered (a black hole): the client
    waits for its own timeouts.

An outage lasts until :meth:`FaultProxy.heal` (``once=False``), or only cuts the connection
that carried the cue (``once=True``: a blip). Everything runs in daemon threads, binds to
127.0.0.1 only, and stops on :meth:`FaultProxy.close`.

Examples
--------
>>> with FaultProxy(("127.0.0.1", 9)) as proxy:  # doctest: +SKIP
...     proxy.fail_on(r"GET /input/00002\\.zip", nth=2, response_bytes=100)
...     ...  # run against proxy.endpoint; the 2nd GET of the zip is cut after 100 bytes
...     proxy.heal()
"""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultProxy", "Request"]

MODES = ("reset", "refuse", "hang")
_CHUNK = 64 * 2**10


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it: ``method``, ``target`` (path and query), headers."""

    method: str
    target: str
    headers: dict[str, str]

    @property
    def line(self) -> str:
        """``"GET /bucket/key?x=1"``, what :meth:`FaultProxy.fail_on` patterns are matched to."""
        return f"{self.method} {self.target}"


class _RequestParser:
    """Incremental HTTP/1.1 request framing of a client-to-server byte stream.

    :meth:`feed` returns the requests whose head ends in the data, with the offset (in that
    data) where each request starts, so the proxy can stop just before a request's bytes.
    """

    def __init__(self) -> None:
        self.head = bytearray()
        self.state = "head"  # head | body | chunk_size | chunk_data | trailer
        self.left = 0  # body or chunk bytes still to skip
        self.line = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, Request]]:
        out: list[tuple[int, Request]] = []
        i, n = 0, len(data)
        while i < n:
            if self.state == "head":
                begin = 0 if self.head else i  # a head begun in an earlier feed: offset 0
                tail = bytes(self.head[-3:])  # the blank line may straddle two feeds
                k = (tail + data[i:]).find(b"\r\n\r\n")
                if k < 0:
                    self.head += data[i:]
                    return out
                end = i + k + 4 - len(tail)
                self.head += data[i:end]
                i = end
                req, length, chunked = self._parse_head(bytes(self.head))
                out.append((begin, req))
                self.head.clear()
                if chunked:
                    self.state = "chunk_size"
                elif length:
                    self.state, self.left = "body", length
            elif self.state == "body":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "head"
            elif self.state in ("chunk_size", "trailer"):
                j = data.find(b"\n", i)
                if j < 0:
                    self.line += data[i:]
                    return out
                self.line += data[i : j + 1]
                i = j + 1
                text = bytes(self.line).strip()
                self.line.clear()
                if self.state == "trailer":
                    if not text:
                        self.state = "head"
                    continue
                size = int(text.split(b";")[0] or b"0", 16)
                if size == 0:
                    self.state = "trailer"
                else:
                    self.state, self.left = "chunk_data", size + 2  # data and its CRLF
            elif self.state == "chunk_data":
                take = min(self.left, n - i)
                self.left -= take
                i += take
                if not self.left:
                    self.state = "chunk_size"
        return out

    @staticmethod
    def _parse_head(head: bytes) -> tuple[Request, int, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        method, target = (parts + ["", ""])[:2]
        headers: dict[str, str] = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = 0 if chunked else int(headers.get("content-length", "0") or 0)
        return Request(method, target, headers), length, chunked


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) so the peer sees ``ECONNRESET`` at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked in recv() on it
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    """One client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: socket.socket) -> None:
        self.proxy, self.client = proxy, client
        self.upstream: socket.socket | None = None
        self.parser = _RequestParser()
        self.budget: int | None = None  # response bytes still allowed before the cut
        self.cue: _Cue | None = None  # the cue whose response this connection carries
        self.closed = threading.Event()

    def cut(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        self.proxy._forget(self)

    def run(self) -> None:
        try:
            self.upstream = socket.create_connection(self.proxy.upstream, timeout=10)
            self.upstream.settimeout(None)
        except OSError:
            self.cut()
            return
        threading.Thread(target=self._downstream, daemon=True, name="faultproxy-down").start()
        self._upstream_pump()

    def _upstream_pump(self) -> None:
        """Client -> server: frame requests, check the cue before forwarding each one."""
        assert self.upstream is not None
        while not self.closed.is_set():
            try:
                data = self.client.recv(_CHUNK)
            except OSError:
                break
            if not data:
                break
            for offset, req in self.parser.feed(data):
                action = self.proxy._on_request(self, req)
                if action == "cut_now":  # the bytes before this request still go through
                    try:
                        self.upstream.sendall(data[:offset])
                    except OSError:
                        pass
                    self.cut()
                    return
                if action == "hang":
                    self._hang()
                    return
            try:
                self.upstream.sendall(data)
            except OSError:
                break
        self.cut()

    def _hang(self) -> None:
        """Read and drop what the client sends; never answer, until healed or closed."""
        if self.upstream is not None:
            _reset(self.upstream)
        self.client.settimeout(0.2)
        while not self.closed.is_set() and self.proxy._mode_now() == "hang":
            try:
                data = self.client.recv(_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            for _, req in self.parser.feed(data):  # recorded, so a test can count attempts
                self.proxy._record(req)
        self.cut()

    def _downstream(self) -> None:
        """Server -> client, counting bytes when a cue limits the response."""
        assert self.upstream is not None
        while not self.closed.is_set():
            try:
                data = self.upstream.recv(_CHUNK)
            except OSError:
                break
            if not data:
                break
            with self.proxy._lock:
                budget = self.budget
            if budget is not None:
                data = data[:budget]
                with self.proxy._lock:
                    self.budget = budget - len(data)
            try:
                if data:
                    self.client.sendall(data)
            except OSError:
                break
            if budget is not None and budget - len(data) <= 0:
                self.proxy._cue_fired(self)
                return
        self.cut()


@dataclass
class _Cue:
    match: Callable[[Request], bool]
    nth: int
    response_bytes: int
    mode: str
    once: bool
    seen: int = 0


class FaultProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``upstream`` and fails on cue.

    Parameters
    ----------
    upstream : (host, port) or str
        Where to forward; a URL such as ``http://127.0.0.1:8333`` is accepted.
    port : int
        Port to listen on (0: any free port).

    Attributes
    ----------
    requests : list of Request
        Every request seen, in order (a test can assert what the client did).
    fired : threading.Event
        Set when the armed cue has fired.
    """

    def __init__(self, upstream: tuple[str, int] | str, port: int = 0) -> None:
        if isinstance(upstream, str):
            hostport = upstream.split("://", 1)[-1].split("/", 1)[0]
            host, _, p = hostport.rpartition(":")
            upstream = (host or "127.0.0.1", int(p))
        self.upstream = upstream
        self.requests: list[Request] = []
        self.fired = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._cue: _Cue | None = None
        self._mode: str | None = None  # None: pass traffic
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self.port = port
        self._thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        """Listen and forward (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self._listener = ls
        self._thread = threading.Thread(target=self._accept_loop, args=(ls,), daemon=True,
                                        name="faultproxy-accept")
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self._stop.set()
        self._stop_listening()
        self._cut_all()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:<port>``, the URL to give the client."""
        return f"http://127.0.0.1:{self.port}"

    # -- cues ------------------------------------------------------------------------------------
    def fail_on(
        self,
        pattern: str | Callable[[Request], bool] = "",
        *,
        nth: int = 1,
        response_bytes: int = 0,
        mode: str = "reset",
        once: bool = False,
    ) -> None:
        """Arm a cue: fail at the ``nth`` request whose :attr:`Request.line` matches ``pattern``.

        Parameters
        ----------
        pattern : str or callable
            A regular expression searched in ``"METHOD /target"`` (``""``: every request), or
            a predicate on :class:`Request`.
        nth : int
            Which matching request (1 = the first) fires the cue.
        response_bytes : int
            0: that request is never forwarded. k > 0: it is forwarded and the first k bytes
            of its response (status line and headers included) reach the client, then the
            connection is cut: a transfer broken mid-stream.
        mode : str
            What the outage looks like afterwards (``reset``, ``refuse``, ``hang``).
        once : bool
            Only cut the connection that carried the cue; keep serving afterwards.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if nth < 1 or response_bytes < 0:
            raise ValueError("nth must be >= 1 and response_bytes >= 0")
        if callable(pattern):
            match = pattern
        else:
            rx = re.compile(pattern)

            def match(req: Request) -> bool:
                return rx.search(req.line) is not None

        with self._lock:
            self._cue = _Cue(match, nth, response_bytes, mode, once)
            self.fired.clear()

    def fail(self, mode: str = "reset") -> None:
        """Start an outage now: every connection is cut and new ones fail as ``mode`` says."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            self._cue = None
            self._mode = mode
        self._cut_all()
        if mode == "refuse":
            self._stop_listening()

    def heal(self) -> None:
        """End the outage (and disarm any cue): traffic passes again, on the same port."""
        with self._lock:
            self._cue = None
            self._mode = None
        if self._listener is None and not self._stop.is_set():
            self.start()

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self.requests.clear()

    def matching(self, pattern: str) -> list[Request]:
        """The requests seen so far whose line matches ``pattern``."""
        rx = re.compile(pattern)
        with self._lock:
            return [r for r in self.requests if rx.search(r.line)]

    # -- internals -------------------------------------------------------------------------------
    def _mode_now(self) -> str | None:
        with self._lock:
            return self._mode

    def _accept_loop(self, ls: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = ls.accept()
            except OSError:
                return  # listener closed
            mode = self._mode_now()
            if mode == "reset" or mode == "refuse":
                _reset(client)
                continue
            conn = _Conn(self, client)
            with self._lock:
                self._conns.add(conn)
            if mode == "hang":
                threading.Thread(target=conn._hang, daemon=True, name="faultproxy-hang").start()
                continue
            threading.Thread(target=conn.run, daemon=True, name="faultproxy-up").start()

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _on_request(self, conn: _Conn, req: Request) -> str | None:
        """Record ``req``; return None (forward), ``"cut_now"`` or ``"hang"``."""
        with self._lock:
            self.requests.append(req)
            mode, cue = self._mode, self._cue
            if mode is not None:
                return "hang" if mode == "hang" else "cut_now"
            if cue is None or not cue.match(req):
                return None
            cue.seen += 1
            if cue.seen < cue.nth:
                return None
            self._cue = None
            if cue.response_bytes:
                conn.budget, conn.cue = cue.response_bytes, cue
                return None  # forwarded; _downstream cuts after the budget
        self._fire(cue, conn)
        return "hang" if (cue.mode == "hang" and not cue.once) else "cut_now"

    def _cue_fired(self, conn: _Conn) -> None:
        """The response budget of a cue is spent."""
        cue, conn.cue = conn.cue, None
        conn.cut()
        if cue is not None:
            self._fire(cue, conn)

    def _fire(self, cue: _Cue, conn: _Conn) -> None:
        if not cue.once:
            with self._lock:
                self._mode = cue.mode
            self._cut_all(keep=conn if cue.mode == "hang" else None)
            if cue.mode == "refuse":
                self._stop_listening()
        self.fired.set()

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _cut_all(self, keep: Any = None) -> None:
        with self._lock:
            conns = [c for c in self._conns if c is not keep]
        for c in conns:
            c.cut()

    def _stop_listening(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            try:
                ls.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            ls.close()
        t, self._thread = self._thread, None
        if t is not None and t is not threading.current_thread():
            t.join(5)
