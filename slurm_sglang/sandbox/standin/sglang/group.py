"""The multi-node group: a real TCP rendezvous at --dist-init-addr, like torch's TCPStore.

Node rank 0 listens and admits every other rank; the others connect and stay connected.
Both sides send heartbeats. As in sglang 0.5.23, only the head's end is felt: workers exit
when rank 0 goes ("Connection closed by peer"), while a worker's death goes unnoticed by the
head and the other workers, which keep running (the head blocks at its next collective). The
launcher has to stop the survivors itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import socket
import threading
import time
from typing import Any, NoReturn

from .settings import StandinSettings
from .standin_log import fatal, log

PROTOCOL = "sglang-standin-group-1"
MAX_MESSAGE_BYTES = 1 << 20
JOIN_GRACE_SECONDS = 10.0
Message = dict[str, Any]


def parse_dist_init_addr(value: str) -> tuple[str, int]:
    """Split `host:port` or `[ipv6]:port` into host and port; ValueError if malformed."""
    if value.startswith("["):
        host, closed, rest = value[1:].partition("]")
        if not closed or not rest.startswith(":"):
            raise ValueError(f"--dist-init-addr {value!r} is not [IPv6]:port")
        port_text = rest[1:]
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"--dist-init-addr {value!r} is not host:port (IPv6 in brackets)")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--dist-init-addr {value!r} has no valid host and port")
    return host, int(port_text)


class Connection:
    """One TCP link of the group, carrying newline-delimited JSON messages."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._reader = sock.makefile("rb")
        self._send_lock = threading.Lock()
        self.last_seen = time.monotonic()

    def send(self, message: Message) -> bool:
        """Send one message; False if the link is broken."""
        data = (json.dumps(message) + "\n").encode()
        if not self._send_lock.acquire(timeout=2.0):
            return False
        try:
            self._sock.sendall(data)
            return True
        except OSError:
            return False
        finally:
            self._send_lock.release()

    def receive(self) -> Message | None:
        """Block for the next message; None once the peer closed the link or broke it."""
        try:
            line = self._reader.readline(MAX_MESSAGE_BYTES)
        except OSError:
            return None
        if not line.endswith(b"\n"):
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return None
        if not isinstance(message, dict):
            return None
        self.last_seen = time.monotonic()
        return message

    def close(self) -> None:
        """Close the link (the peer sees end of stream)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _start_thread(target: Any, *args: Any) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()


def _fail_as_client(host: str, port: int, timeout: float) -> NoReturn:
    fatal(
        "torch.distributed.DistNetworkError: The client socket has timed out after "
        f"{int(timeout * 1000)}ms while trying to connect to ({host}, {port})."
    )


def _connect(host: str, port: int, timeout: float) -> Connection:
    """Connect to the head, retrying until `timeout` as a TCPStore client does."""
    deadline = time.monotonic() + timeout
    pause = 0.1
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _fail_as_client(host, port, timeout)
        try:
            sock = socket.create_connection((host, port), timeout=min(remaining, 5.0))
        except OSError:
            time.sleep(min(pause, max(deadline - time.monotonic(), 0)))
            pause = min(pause * 2, 1.0)
            continue
        sock.settimeout(None)
        return Connection(sock)


def join_problem(join: Message, head: Message, members: dict[int, Message]) -> str | None:
    """Why the head must refuse this join message, or None if it fits the group."""
    if join.get("protocol") != PROTOCOL:
        return f"protocol {join.get('protocol')!r} is not {PROTOCOL!r}"
    rank = join.get("node_rank")
    if not isinstance(rank, int) or isinstance(rank, bool):
        return f"node rank {rank!r} is not an integer"
    nnodes = head["nnodes"]
    if not 0 <= rank < nnodes:
        return f"node rank {rank} is out of range for --nnodes {nnodes} (valid: 0..{nnodes - 1})"
    if rank == 0 or rank in members:
        first = head if rank == 0 else members[rank]
        return f"duplicate node rank {rank}: already joined from {first.get('hostname')}"
    for key, flag in (
        ("nnodes", "--nnodes"),
        ("model_path", "--model-path"),
        ("tp_size", "--tp-size"),
        ("pp_size", "--pp-size"),
    ):
        if join.get(key) != head.get(key):
            return (
                f"mismatched {flag}: node rank {rank} has {join.get(key)!r}, "
                f"node rank 0 has {head.get(key)!r}"
            )
    return None


class HeadGroup:
    """Node rank 0's side: listen at --dist-init-addr, admit every rank, watch them all."""

    def __init__(self, me: Message, dist_init_addr: str, settings: StandinSettings) -> None:
        self._me = me
        self._host, self._port = parse_dist_init_addr(dist_init_addr)
        self._settings = settings
        self._condition = threading.Condition()
        self._members: dict[int, tuple[Connection, Message]] = {}
        self._loaded: set[int] = set()
        self._stopping = False
        self._gone: set[int] = set()
        self.peer_gone = threading.Event()

    def form(self, timeout: float) -> list[Message]:
        """Wait until all --nnodes ranks joined; return every rank's description, rank order."""
        listener = self._listen(timeout)
        expected = int(self._me["nnodes"]) - 1
        log(f"Waiting for {expected} other node rank(s) at {self._host}:{self._port}")
        _start_thread(self._accept, listener)
        _start_thread(self._heartbeat)
        with self._condition:
            formed = self._condition.wait_for(lambda: len(self._members) == expected, timeout)
            if not formed:
                joined = len(self._members) + 1
                missing = sorted(set(range(1, expected + 1)) - set(self._members))
                self._break(
                    f"torch.distributed.DistStoreError: Timed out after {int(timeout) + 1} "
                    f"seconds waiting for clients. {joined}/{expected + 1} clients joined. "
                    f"(missing node ranks: {', '.join(map(str, missing))})"
                )
            ranks = [self._me] + [self._members[rank][1] for rank in sorted(self._members)]
        self._broadcast({"type": "group", "ranks": ranks})
        return ranks

    def wait_loaded(self) -> None:
        """Wait for every rank to finish loading, up to sglang's barrier timeout."""
        expected = int(self._me["nnodes"]) - 1
        timeout = self._settings.load_barrier_seconds
        with self._condition:
            if not self._condition.wait_for(lambda: len(self._loaded) == expected, timeout):
                slow = sorted(set(self._members) - self._loaded)
                self._break(
                    f"Timed out after {timeout:g} s waiting for other ranks that didn't finish "
                    f"loading: node ranks {slow}"
                )

    def shutdown(self) -> None:
        """Broadcast sglang's ShutdownReq so every rank exits cleanly."""
        with self._condition:
            self._stopping = True
        self._broadcast({"type": "shutdown"})

    def _listen(self, timeout: float) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM
            )[0]
        except OSError:
            self._wait_as_client(timeout)
        listener = socket.socket(family, kind, proto)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(address)
            listener.listen(128)
        except OSError as error:
            listener.close()
            if error.errno == errno.EADDRNOTAVAIL:
                self._wait_as_client(timeout)
            name = errno.errorcode.get(error.errno or 0, "EUNKNOWN")
            fatal(
                "torch.distributed.DistNetworkError: The server socket has failed to listen on "
                f"any local network address. port: {self._port}, useIpv6: "
                f"{int(family == socket.AF_INET6)}, code: -{error.errno}, name: {name}, "
                f"message: {error.strerror}"
            )
        return listener

    def _wait_as_client(self, timeout: float) -> NoReturn:
        # torch's rank 0 also connects to --dist-init-addr as a client: when the address is
        # not this node's, it waits for the full timeout and fails like any other client.
        log(f"{self._host} is not an address of this node; connecting to it as a client")
        connection = _connect(self._host, self._port, timeout)
        connection.close()
        fatal(
            f"--dist-init-addr {self._host}:{self._port} answers but is not this node "
            f"({self._me.get('hostname')}): node rank 0 must run on the dist-init host"
        )

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except OSError:
                return
            _start_thread(self._serve_peer, Connection(sock), str(address[0]))

    def _serve_peer(self, connection: Connection, address: str) -> None:
        join = connection.receive()
        if join is None or join.get("type") != "join":
            connection.close()
            return
        with self._condition:
            members = {rank: info for rank, (_, info) in self._members.items()}
            problem = join_problem(join, self._me, members)
            if problem is None:
                rank = int(join["node_rank"])
                self._members[rank] = (connection, join)
                self._condition.notify_all()
        if problem is not None:
            connection.send({"type": "refuse", "error": problem})
            self._break(
                f"Refused node rank {join.get('node_rank')!r} from {join.get('hostname')} "
                f"({address}): {problem}"
            )
        log(f"Node rank {rank} joined from {join.get('hostname')} ({join.get('ip')})")
        while True:
            message = connection.receive()
            if message is None:
                self._lost(rank)
                return
            if message.get("type") == "loaded":
                with self._condition:
                    self._loaded.add(rank)
                    self._condition.notify_all()
            elif message.get("type") == "error":
                self._break(f"Node rank {rank} failed: {message.get('error')}")

    def _heartbeat(self) -> None:
        interval = self._settings.heartbeat_interval_seconds
        timeout = self._settings.heartbeat_timeout_seconds
        while True:
            time.sleep(interval)
            with self._condition:
                members = list(self._members.items())
            for rank, (connection, _) in members:
                if rank in self._gone:
                    continue
                silent = time.monotonic() - connection.last_seen
                if not connection.send({"type": "heartbeat"}) or silent > timeout:
                    self._lost(rank)

    def _lost(self, rank: int) -> None:
        """Note that `rank` left, and carry on: sglang's head is not told a peer died.

        It learns nothing until its next collective, which then blocks in NCCL (see
        HeadGroup.block_on_collective); during start-up it waits at the loading barrier.
        """
        with self._condition:
            if self._stopping or rank in self._gone:
                return
            self._gone.add(rank)
        self.peer_gone.set()

    def block_on_collective(self, watchdog_seconds: float) -> None:
        """A forward batch after a peer died: block until sglang's watchdog ends the head."""
        if not self.peer_gone.is_set():
            return
        time.sleep(watchdog_seconds)
        fatal(
            "Watchdog caught collective operation timeout: a forward batch took longer than "
            f"--watchdog-timeout {watchdog_seconds:g} s (a tensor-parallel peer is gone)"
        )

    def _break(self, reason: str) -> NoReturn:
        self._broadcast({"type": "abort", "error": reason})
        fatal(reason)

    def _broadcast(self, message: Message) -> None:
        with self._condition:
            connections = [connection for connection, _ in self._members.values()]
        for connection in connections:
            connection.send(message)


class WorkerGroup:
    """Node rank >= 1's side: connect to rank 0, stay connected, exit when the group breaks."""

    def __init__(self, me: Message, dist_init_addr: str, settings: StandinSettings) -> None:
        self._me = me
        self._host, self._port = parse_dist_init_addr(dist_init_addr)
        self._settings = settings
        self._condition = threading.Condition()
        self._ranks: list[Message] | None = None
        self._connection: Connection | None = None

    def join(self, timeout: float) -> list[Message]:
        """Connect, send this rank's description, and wait for the full group."""
        started = time.monotonic()
        connection = _connect(self._host, self._port, timeout)
        self._connection = connection
        connection.send(self._me)
        _start_thread(self._listen_to_head, connection)
        _start_thread(self._heartbeat, connection)
        # A grace period lets rank 0, when alive, time out first and send the reason.
        remaining = max(timeout - (time.monotonic() - started), 0.0) + JOIN_GRACE_SECONDS
        with self._condition:
            if not self._condition.wait_for(lambda: self._ranks is not None, remaining):
                fatal(
                    f"torch.distributed.DistStoreError: Timed out after {int(timeout) + 1} "
                    "seconds waiting for the group to form at "
                    f"{self._host}:{self._port}"
                )
            assert self._ranks is not None
            return self._ranks

    def report_loaded(self) -> None:
        """Tell rank 0 this node finished loading."""
        if self._connection is not None:
            self._connection.send({"type": "loaded"})

    def report_error(self, error: str) -> None:
        """Tell rank 0 why this node fails, before exiting."""
        if self._connection is not None:
            self._connection.send({"type": "error", "error": error})

    def _listen_to_head(self, connection: Connection) -> None:
        while True:
            message = connection.receive()
            kind = None if message is None else message.get("type")
            if message is None:
                fatal(
                    "RuntimeError: [gloo/transport/tcp/pair.cc] Connection closed by peer "
                    f"[{self._host}]:{self._port} (node rank 0 left the group)"
                )
            elif kind == "group":
                with self._condition:
                    self._ranks = list(message.get("ranks", []))
                    self._condition.notify_all()
            elif kind == "refuse":
                fatal(f"Node rank 0 refused this rank: {message.get('error')}")
            elif kind == "abort":
                fatal(f"Node rank 0 aborted the group: {message.get('error')}")
            elif kind == "shutdown":
                fatal("Received ShutdownReq from node rank 0; exiting.", exit_code=0)

    def _heartbeat(self, connection: Connection) -> None:
        interval = self._settings.heartbeat_interval_seconds
        timeout = self._settings.heartbeat_timeout_seconds
        while True:
            time.sleep(interval)
            connection.send({"type": "heartbeat"})
            silent = time.monotonic() - connection.last_seen
            if silent > timeout:
                fatal(
                    f"RuntimeError: no heartbeat from node rank 0 ({self._host}) for "
                    f"{silent:.1f} s (peer hung or unreachable)"
                )
