"""Abusive clients against one gateway worker: memory, and whether /healthz stays answered.

    .venv/bin/python bench/abuse.py [--connections 2000] [--hold 15] [--streams] [--only NAME ...]

Starts the development upstream (in this process, on a thread) and `gateway serve` (one worker,
a temporary SQLite database, GATEWAY_SECRET set, the HTTP limits at their defaults unless the
options below change them), then runs each abuse in turn:

  admin_body   an unauthenticated POST /admin/keys announcing and sending a 300 MiB body
  big_header   GET /healthz with a 100 MiB header
  slowloris    --connections connections held open: half send nothing, half send a partial
               head and one more header line every 2 s
  streams      (--streams) 20 clients request a streamed chat completion with a large max_tokens
               (a long canned answer, streamed slowly) and never read; the gateway should end each
               stream_write_timeout_s after its writes block, and release the upstream connection

For each one: the gateway's RSS (VmRSS) and open fds before, their peak during (sampled every
20 ms) and --settle (10) seconds after the abusive clients are gone; what the abusive clients saw; and a /healthz probe on a new
connection every 100 ms throughout (its max latency and failures). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from overhead import BIN, free_port, rss_mb, stop, wait_port

from gateway.dev import DevUpstream

MiB = 1024 * 1024
SECRET = "abuse-bench-" + "s" * 36  # 48 characters


@dataclass
class Probe:
    """GET /healthz on a new connection every 100 ms; latencies and failures per phase."""

    port: int
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(4096):
                        data += chunk
                if not data.startswith(b"HTTP/1.1 200"):
                    self.failures += 1
                self.latencies.append(time.monotonic() - started)
            except OSError:
                self.failures += 1
                self.latencies.append(time.monotonic() - started)
            self.stopped.wait(0.1)

    def reset(self) -> None:
        self.latencies, self.failures = [], 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssSampler:
    """Peak RSS and peak open fds of a process, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self.peak_fds, self.stopped = pid, 0.0, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.peak_fds = max(self.peak_fds, fds(self.pid))
            self.stopped.wait(0.02)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def send_and_answer(
    port: int, head: bytes, body_chunks: Callable[[], Iterable[bytes]], limit_s: float
) -> str:
    """Send ``head`` then the chunks on one connection from a thread; return what came back and when."""
    sock = connect(port)
    sent = [0]

    def sender() -> None:
        try:
            sock.sendall(head)
            sent[0] += len(head)
            for chunk in body_chunks():
                sock.sendall(chunk)
                sent[0] += len(chunk)
        except OSError:
            pass

    thread = threading.Thread(target=sender, daemon=True)
    started = time.monotonic()
    thread.start()
    sock.settimeout(limit_s)
    data, outcome = b"", "open"
    try:
        while chunk := sock.recv(65536):
            data += chunk
        outcome = "closed"
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = f"still open after {limit_s:.0f} s"
    elapsed = time.monotonic() - started
    sock.close()
    thread.join(5)
    status = data.split(b"\r\n", 1)[0].decode(errors="replace").removeprefix("HTTP/1.1 ") or "no answer"
    return f"{status}; {outcome} after {elapsed:.1f} s; client sent {sent[0] / MiB:.1f} MiB"


def admin_body(port: int, _args: argparse.Namespace) -> str:
    size = 300 * MiB
    head = (
        b"POST /admin/keys HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    return send_and_answer(port, head, lambda: (b"x" * MiB for _ in range(300)), 60)


def big_header(port: int, _args: argparse.Namespace) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: "
    return send_and_answer(port, head, lambda: [*(b"a" * MiB for _ in range(100)), b"\r\n\r\n"], 60)


def slowloris(port: int, args: argparse.Namespace) -> str:
    n, opened, refused = args.connections, [], 0
    sel = selectors.DefaultSelector()
    for i in range(n):
        try:
            sock = connect(port)
        except OSError:
            refused += 1
            continue
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, (i % 2 == 1, time.monotonic()))
        opened.append(sock)
    started, closed, answered, busy = time.monotonic(), [], 0, 0
    next_line = started + 2
    while sel.get_map() and time.monotonic() - started < args.hold:
        for key, _ in sel.select(timeout=0.2):
            conn = cast(socket.socket, key.fileobj)
            try:
                data = conn.recv(65536)
            except (ConnectionResetError, BlockingIOError):
                data = b""
            if data.startswith(b"HTTP/1.1 408"):
                answered += 1
            elif data.startswith(b"HTTP/1.1 503"):
                busy += 1
            if not data:
                closed.append(time.monotonic() - started)
                sel.unregister(conn)
        if time.monotonic() >= next_line:  # the slow half sends one more header line
            next_line += 2
            for key in list(sel.get_map().values()):
                if key.data[0]:
                    with contextlib.suppress(OSError):
                        cast(socket.socket, key.fileobj).send(b"X-Slow: 1\r\n")
    still = len(sel.get_map())
    for sock in opened:
        sock.close()
    last = f", the last after {max(closed):.1f} s" if closed else ""
    return (
        f"{len(opened)} opened ({refused} failed to connect); {len(closed)} closed by the gateway{last} "
        f"({answered} with 408, {busy} with 503); {still} still open after {args.hold:.0f} s"
    )


def _ended(sock: socket.socket) -> bool:
    """The peer has closed or reset the connection (TCP state CLOSE_WAIT or CLOSE), without reading."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] in (7, 8)


def streams(port: int, args: argparse.Namespace) -> str:
    body = (
        b'{"model": "mistral-7b", "stream": true, "max_tokens": 1000000, '
        b'"messages": [{"role": "user", "content": "Write a very long story."}]}'
    )
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (args.key.encode(), len(body))
    )
    socks = [connect(port, rcvbuf=4096) for _ in range(20)]
    for sock in socks:
        sock.sendall(head + body)
    started, ended = time.monotonic(), dict[int, float]()
    while len(ended) < len(socks) and time.monotonic() - started < args.stream_hold:  # never read meanwhile
        for i, sock in enumerate(socks):
            if i not in ended and _ended(sock):
                ended[i] = time.monotonic() - started
        time.sleep(0.2)
    for sock in socks:
        sock.close()
    up = args.upstream
    last = f", the last after {max(ended.values()):.0f} s" if ended else ""
    return (
        f"{len(ended)}/20 connections ended by the gateway{last} (waited up to {args.stream_hold:.0f} s); "
        f"upstream streams: {up.streams_completed} completed, {up.streams_aborted} aborted"
    )


ABUSES: dict[str, tuple[str, Callable[[int, argparse.Namespace], str]]] = {
    "admin_body": ("300 MiB unauthenticated POST /admin/keys", admin_body),
    "big_header": ("100 MiB header on /healthz", big_header),
    "slowloris": ("idle / slowloris connections", slowloris),
    "streams": ("20 streamed completions never read", streams),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=2000, help="slowloris: connections held open")
    ap.add_argument(
        "--hold", type=float, default=20, help="slowloris: longest wait for the gateway to close them"
    )
    ap.add_argument("--streams", action="store_true", help="also run the non-reading streams abuse")
    ap.add_argument("--stream-write-timeout", type=float, default=30, help="server.stream_write_timeout_s")
    ap.add_argument("--stream-reply-mib", type=float, default=8, help="length of the canned streamed answer")
    ap.add_argument(
        "--stream-chunk-delay-ms",
        type=float,
        default=10,
        help="upstream pause between chunks (8 MiB at 10 ms: about 50 s per answer)",
    )
    ap.add_argument("--only", nargs="*", choices=list(ABUSES), help="run only these abuses")
    ap.add_argument(
        "--settle", type=float, default=10, help="seconds after an abuse before RSS is read again"
    )
    ap.add_argument(
        "--server",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra `server:` settings for config.yaml, e.g. max_connections=4096",
    )
    args = ap.parse_args()
    args.stream_hold = args.stream_write_timeout + 60
    names = args.only or [n for n in ABUSES if n != "streams" or args.streams]

    work = Path(tempfile.mkdtemp(prefix="gw-abuse-"))
    words = max(1, int(args.stream_reply_mib * MiB / 6))
    upstream = DevUpstream(
        reply=" ".join(["lorem"] * words),
        chunks=max(1, words // 300),
        record=False,
        chunk_delay_s=args.stream_chunk_delay_ms / 1000,
    ).start()
    args.upstream = upstream
    gw_port = free_port()
    (work / "policies").mkdir()
    (work / "policies" / "bundle.yaml").write_text("version: 1\ndefaults: {}\n")
    extra = "".join(f"  {kv.split('=', 1)[0]}: {kv.split('=', 1)[1]}\n" for kv in args.server)
    (work / "config.yaml").write_text(f"""\
deployments:
  eu: {{kind: openai_compatible, base_url: "{upstream.url}", model: m, jurisdiction: EU, region: fr,
        timeouts: {{connect_s: 5, read_s: 60, total_s: 600}}}}
models:
  mistral-7b: {{deployments: [eu]}}
storage:
  database_url: sqlite:///{work}/gateway.db
  spool_dir: {work}/spool
server:
  port: {gw_port}
  policies_dir: {work / "policies"}
  stream_write_timeout_s: {args.stream_write_timeout}
  secret_key: ${{GATEWAY_SECRET}}
{extra}""")
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(work / "config.yaml"),
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_SECRET": SECRET,
    }
    args.key = subprocess.run(
        [BIN / "gateway", "keys", "create", "--tenant", "bench", "--app", "abuse"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = open(work / "gateway.log", "w")  # noqa: SIM115 - kept open for the process lifetime
    gateway = subprocess.Popen([BIN / "gateway", "serve"], env=env, stdout=log, stderr=log, cwd=work)
    rows = []
    try:
        wait_port(gw_port)
        probe = Probe(gw_port)
        prober = threading.Thread(target=probe.run, daemon=True)
        prober.start()
        time.sleep(2)
        for name in names:
            label, run = ABUSES[name]
            if name == "slowloris":
                label = f"{args.connections:,} {label}"
            before, fds_before = rss_mb(gateway.pid), fds(gateway.pid)
            probe.reset()
            with RssSampler(gateway.pid) as sampler:
                seen = run(gw_port, args)
            time.sleep(args.settle)
            after, fds_after = rss_mb(gateway.pid), fds(gateway.pid)
            lat = max(probe.latencies, default=0.0)
            back = "yes" if after <= before * 1.10 else "no"
            rows.append(
                (
                    label,
                    seen,
                    f"{before:.0f} / {sampler.peak:.0f} / {after:.0f} MB",
                    back,
                    f"{fds_before} / {sampler.peak_fds} / {fds_after}",
                    f"{lat * 1000:.0f} ms",
                    f"{probe.failures}/{len(probe.latencies)}",
                )
            )
            print(f"{label}: {seen}", flush=True)
        probe.stopped.set()
        prober.join(10)
    finally:
        stop(gateway)
        upstream.stop()
        log.close()
        lines = (work / "gateway.log").read_text().splitlines()
        warnings = [line for line in lines if "HTTP limit" in line]
        if not rows:
            print("gateway log:", *lines[-30:], sep="\n")
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nMachine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}; one gateway worker; RSS after = {args.settle:.0f} s after the "
        f"abusive clients are gone.\n"
    )
    print(
        "| abuse | what the abusive client saw | RSS before / peak / after | RSS back within 10% | "
        "open fds before / peak / after | /healthz max latency | /healthz failed |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\ngateway limit warnings: {len(warnings)} lines")


if __name__ == "__main__":
    main()
