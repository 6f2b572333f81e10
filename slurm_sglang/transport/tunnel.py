"""Tunnel: a local port on 127.0.0.1 forwarded, connection by connection, through a transport."""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
from types import TracebackType

from slurm_sglang.transport.base import Stream, Transport, TransportError, TunnelError

logger = logging.getLogger("slurm_sglang.transport")

# Loopback only: a tunnel to a model server must never be reachable from the network.
_LISTEN_HOST = "127.0.0.1"
_CHUNK = 65536


class Tunnel:
    """Listens on 127.0.0.1 and forwards each connection to remote_host:remote_port."""

    def __init__(
        self, transport: Transport, remote_host: str, remote_port: int, local_port: int = 0
    ) -> None:
        self.transport = transport
        self.remote_host = remote_host
        self.remote_port = remote_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.bind((_LISTEN_HOST, local_port))
        except OSError as error:
            self._listener.close()
            if error.errno == errno.EADDRINUSE:
                raise TunnelError(
                    f"local port {local_port} is already in use on {_LISTEN_HOST}: "
                    "pick another one, or 0 for any free port"
                ) from None
            raise TunnelError(f"cannot listen on {_LISTEN_HOST}:{local_port}: {error}") from None
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.local_port: int = self._listener.getsockname()[1]
        self.url = f"http://{_LISTEN_HOST}:{self.local_port}"
        self.failures = 0  # connections that could not reach the target
        self._closed = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._open_streams: set[socket.socket | Stream] = set()
        self._streams_lock = threading.Lock()
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="tunnel-accept", daemon=True
        )
        self._acceptor.start()
        logger.debug(
            "tunnel %s -> %s:%d through %s",
            self.url,
            remote_host,
            remote_port,
            transport.describe(),
        )

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self._wake_reader:
                        return
                    try:
                        client, _address = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        return
                    client.setblocking(True)
                    threading.Thread(
                        target=self._serve, args=(client,), name="tunnel-conn", daemon=True
                    ).start()

    def _serve(self, client: socket.socket) -> None:
        """Connect upstream, then pump both directions until both ends are done."""
        try:
            upstream = self.transport.open_stream(self.remote_host, self.remote_port, timeout=30)
        except TransportError as error:
            with self._streams_lock:
                self.failures += 1
            logger.warning("tunnel: %s", error)
            client.close()
            return
        with self._streams_lock:
            self._open_streams.update((client, upstream))
        pump = threading.Thread(
            target=_pump, args=(upstream, client), name="tunnel-pump", daemon=True
        )
        pump.start()
        _pump(client, upstream)
        pump.join()
        with self._streams_lock:
            self._open_streams.difference_update((client, upstream))
        client.close()
        upstream.close()

    def wait(self) -> None:
        """Block until close() (from another thread or a signal handler) or Ctrl-C."""
        while not self._closed.wait(0.5):
            pass

    def close(self) -> None:
        """Stop listening and cut every open connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")
        self._acceptor.join()
        self._listener.close()
        self._wake_reader.close()
        self._wake_writer.close()
        with self._streams_lock:
            streams = list(self._open_streams)
        for stream in streams:
            with contextlib.suppress(OSError):
                stream.close()

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_tunnel(
    transport: Transport, remote_host: str, remote_port: int, local_port: int = 0
) -> Tunnel:
    """Forward 127.0.0.1:local_port (0: any free port) to remote_host:remote_port via transport."""
    return Tunnel(transport, remote_host, remote_port, local_port)


def _pump(source: socket.socket | Stream, sink: socket.socket | Stream) -> None:
    """Copy source to sink until EOF, then half-close sink so the other side sees the end."""
    try:
        while chunk := source.recv(_CHUNK):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        _shutdown_write(sink)


def _shutdown_write(stream: socket.socket | Stream) -> None:
    with contextlib.suppress(OSError, EOFError):
        if isinstance(stream, socket.socket):
            stream.shutdown(socket.SHUT_WR)
        else:
            shutdown_write = getattr(stream, "shutdown_write", None)
            if shutdown_write is not None:
                shutdown_write()
