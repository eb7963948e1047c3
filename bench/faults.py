"""Fault injection under load: what each outage does to answers, ledger rows and audit records.

    .venv/bin/python bench/faults.py [--duration 20] [--scenario NAME ...] [--runs 1] [--json FILE]

For every scenario run: a fresh PostgreSQL database of its own, reached through a loopback TCP
proxy that can be cut (tests/tcpproxy.py); a redis-server of its own on a free port (no
persistence); the development upstream; and one gateway worker (`gateway serve`) whose policy
bundle has a `token_accounting` policy with budgets (every request reserves in Redis and writes
a ledger row; every request also gets a hash-chained audit record). 32 closed-loop aiohttp
clients send chat completions (--stream-share of them streamed) for --duration seconds: the
first quarter healthy, the middle half with the fault, the last quarter recovered. The restart
scenarios (sigterm, sigkill) restart the gateway as soon as the old process is gone and keep the
load on for at least a quarter of --duration after the new one listens; requests that cannot
connect meanwhile are counted as connect failures.

Then it waits for the writer to drain (row counts unchanged for 3 s and no spool file left,
at most 90 s), stops the gateway cleanly, counts the answered (2xx) requests that have no
ledger row (`usage_ledger`) or no audit row (`audit_records`), and runs `gateway audit verify`.

Scenarios:
  upstream_down      the development upstream is killed (SIGKILL) for the fault window, then restarted
  redis_fail_closed  redis-server killed for the fault window; token_accounting on_backend_error: fail_closed
  redis_fail_open    the same with on_backend_error: fail_open
  db_down            the proxy to PostgreSQL is cut for the fault window (open connections reset)
  sigterm            SIGTERM to the gateway mid-load (graceful shutdown), then a new gateway
  sigkill            SIGKILL to the gateway mid-load, then a new gateway (start-up replays the spool)

Needs PostgreSQL on 127.0.0.1:5432 that user `postgres` may create databases on without a
password (--pg-admin-url), and `redis-server` on PATH. Every process it starts is killed at the
end, also on Ctrl-C (and, through PR_SET_PDEATHSIG, if this script is killed); its databases
are dropped and its temporary directories removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.tcpproxy
sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, free_port

from tests.tcpproxy import TcpProxy

SCENARIOS = ("upstream_down", "redis_fail_closed", "redis_fail_open", "db_down", "sigterm", "sigkill")
CLIENTS = 32
PG_HOST, PG_PORT = "127.0.0.1", 5432


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes ---------------------------------------------------------------------------------


class Procs:
    """Every child process this script starts; all of them are killed by ``kill_all``."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []
        # setpriv --pdeathsig: a child gets SIGKILL when this script dies, however it dies.
        self._prefix = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []

    def spawn(
        self, args: list[str], log_file: Path, env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        # PR_SET_PDEATHSIG follows the thread that forked: spawn from the main thread only.
        assert threading.current_thread() is threading.main_thread()
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                [*self._prefix, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )  # Ctrl-C reaches this script only
        self.live.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.live:
            if proc.poll() is None:
                proc.kill()
        for proc in self.live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.live = [p for p in self.live if p.poll() is None]


async def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode} before port {port} opened")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1)
            writer.close()
            return
        except (OSError, TimeoutError):
            await asyncio.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout:.0f} s")


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait for ``proc`` to exit; SIGKILL it after ``timeout``. True if it exited on its own."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
            return False
        await asyncio.sleep(0.02)
    return True


def stop_sync(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGINT, timeout: float = 40) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# --- one scenario's environment ----------------------------------------------------------------


@dataclass
class Env:
    name: str
    index: int
    procs: Procs
    pg_admin: str
    work: Path = field(init=False)
    db: str = field(init=False)
    proxy: TcpProxy = field(init=False)
    up_port: int = field(init=False)
    gw_port: int = field(init=False)
    redis_port: int = field(init=False)
    env: dict[str, str] = field(init=False)
    key: str = ""
    upstream: subprocess.Popen[bytes] | None = None
    redis: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_starts: int = 0
    _db_created: bool = False

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"gw-faults-{self.name}-"))
        self.db = f"faults_{os.getpid()}_{self.index}"
        self.up_port, self.gw_port, self.redis_port = free_port(), free_port(), free_port()
        self.proxy = TcpProxy(PG_HOST, PG_PORT)

    @property
    def config(self) -> Path:
        return self.work / "config.yaml"

    def setup(self) -> None:
        with psycopg.connect(self.pg_admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.db}"')
        self._db_created = True
        self.proxy.start()
        mode = "fail_open" if self.name == "redis_fail_open" else "fail_closed"
        (self.work / "policies").mkdir()
        # Limits far above what a run can use: every request reserves (Redis) and settles, none is refused.
        (self.work / "policies" / "bundle.yaml").write_text(f"""\
version: 1
defaults:
  token_accounting:
    key_prefix: faults:{os.getpid()}:{self.index}
    on_backend_error: {mode}
    budgets:
      - {{scope: tenant, period: day, eur: 1000000, tokens: 100000000000}}
      - {{scope: app, period: month, eur: 1000000}}
    rate_limits:
      - {{scope: key, rpm: 100000000, tpm: 100000000000}}
""")
        self.config.write_text(f"""\
deployments:
  eu:
    kind: openai_compatible
    base_url: http://127.0.0.1:{self.up_port}/v1
    model: mistral-7b-instruct
    jurisdiction: EU
    region: fr-par
    timeouts: {{connect_s: 2, read_s: 10, total_s: 20}}
    price: {{input_per_1m: "0.2", output_per_1m: "0.6", currency: EUR}}
models:
  mistral-7b:
    deployments: [eu]
storage:
  database_url: postgresql+psycopg://postgres@127.0.0.1:{self.proxy.port}/{self.db}
  redis_url: redis://127.0.0.1:{self.redis_port}/0
  spool_dir: {self.work / "spool"}
server:
  host: 127.0.0.1
  port: {self.gw_port}
  workers: 1
  policies_dir: {self.work / "policies"}
  secret_key: ${{GATEWAY_SECRET}}
""")
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "GATEWAY_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
        }
        self.env = {
            **env,
            "GATEWAY_SECRET": secrets.token_urlsafe(36),  # 48 characters
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        self.key = subprocess.run(
            [
                str(BIN / "gateway"),
                "keys",
                "create",
                "--tenant",
                "faults",
                "--app",
                "load",
                "--models",
                "mistral-7b",
                "--scopes",
                "chat",
                "--config",
                str(self.config),
            ],
            env=self.env,
            cwd=self.work,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.strip()

    def _out(self, what: str) -> Path:
        return self.work / f"{what}.log"

    def start_upstream(self) -> None:
        self.upstream = self.procs.spawn(
            [str(BIN / "gateway"), "dev-upstream", "--port", str(self.up_port), "--chunk-delay-ms", "0"],
            self._out("upstream"),
            self.env,
            self.work,
        )

    def start_redis(self) -> None:
        self.redis = self.procs.spawn(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            self._out("redis"),
            self.env,
            self.work,
        )

    def start_gateway(self) -> None:
        self.gateway_starts += 1
        self.gateway = self.procs.spawn(
            [str(BIN / "gateway"), "serve", "--config", str(self.config)],
            self._out("gateway"),
            self.env,
            self.work,
        )

    def pg(self) -> psycopg.Connection[Any]:
        # Counted directly, not through the proxy.
        dsn = self.pg_admin.rsplit("/", 1)[0] + f"/{self.db}"
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10)

    def counts(self) -> tuple[int, int]:
        with self.pg() as conn:
            ledger = conn.execute("SELECT count(*) FROM usage_ledger").fetchone()
            audit = conn.execute("SELECT count(*) FROM audit_records").fetchone()
        return int(ledger[0]) if ledger else 0, int(audit[0]) if audit else 0

    def ids(self, table: str) -> set[str]:
        with self.pg() as conn:
            return {r[0] for r in conn.execute(f"SELECT request_id FROM {table}")}

    def spooled_lines(self, wal: bool = False) -> int:
        """Rows waiting in spool files (``*.jsonl``, ``*.replaying``, ``rejected-*.bad``); with ``wal``, rows
        in write-ahead files (``*.wal``: while the gateway runs they also hold rows already written)."""
        spool = self.work / "spool"
        if not spool.is_dir():
            return 0
        return sum(
            sum(1 for line in p.read_bytes().splitlines() if line.strip())
            for p in spool.iterdir()
            if p.is_file() and (p.suffix == ".wal") == wal
        )

    def error_log_lines(self) -> int:
        path = self.work / "gateway.log"
        if not path.exists():
            return 0
        return sum(
            1
            for line in path.read_text(errors="replace").splitlines()
            if '"level":"error"' in line or '"level":"critical"' in line or line.startswith("Traceback")
        )

    def teardown(self, keep: bool) -> None:
        for proc in (self.gateway, self.upstream, self.redis):
            with contextlib.suppress(Exception):
                stop_sync(proc, timeout=10)
        self.proxy.cut()
        if self._db_created:
            try:
                with psycopg.connect(self.pg_admin, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            except Exception as exc:
                log(f"could not drop database {self.db}: {exc}")
        if keep:
            log(f"kept {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


# --- load --------------------------------------------------------------------------------------


@dataclass
class Req:
    start: float
    end: float
    stream: bool
    outcome: str  # ok | http | stream_error | connect | disconnect | timeout | client_error
    status: int
    rid: str | None


@dataclass
class Timeline:
    t0: float
    stop_at: float
    fault_start: float = 0.0
    fault_end: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


async def client(
    i: int,
    session: aiohttp.ClientSession,
    url: str,
    key: str,
    tl: Timeline,
    out: list[Req],
    stream_share: float,
    pause: float,
) -> None:
    rng = random.Random(i)
    headers = {"Authorization": f"Bearer {key}"}
    n = 0
    while time.monotonic() < tl.stop_at:
        n += 1
        stream = rng.random() < stream_share
        body: dict[str, Any] = {
            "model": "mistral-7b",
            "max_tokens": 32,
            "messages": [{"role": "user", "content": f"Fault drill {i}-{n}: say hello."}],
        }
        if stream:
            body["stream"] = True
        start = time.monotonic()
        outcome, status, rid = "ok", 0, None
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                status = resp.status
                rid = resp.headers.get("x-gateway-request-id")
                raw = await resp.read()
                if not 200 <= status < 300:
                    outcome = "http"
                elif stream and (b"data: [DONE]" not in raw or b'"error"' in raw):
                    outcome = "stream_error"  # 200 sent, then the stream ended with an error event
        except aiohttp.ClientConnectorError:
            outcome = "connect"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            outcome = "disconnect"
        except TimeoutError:
            outcome = "timeout"
        except aiohttp.ClientError:
            outcome = "client_error"
        end = time.monotonic()
        out.append(Req(start - tl.t0, end - tl.t0, stream, outcome, status, rid))
        if outcome != "ok":
            await asyncio.sleep(pause)  # a failing client backs off a little instead of spinning


async def inject(env: Env, name: str, tl: Timeline, healthy: float, fault: float, recovered: float) -> None:
    await asyncio.sleep(max(0.0, tl.t0 + healthy - time.monotonic()))
    tl.fault_start = time.monotonic() - tl.t0
    log(f"{name}: fault at t={tl.fault_start:.1f}s")
    if name == "upstream_down":
        assert env.upstream is not None
        env.upstream.kill()
        await wait_exit(env.upstream, 10)
        await asyncio.sleep(max(0.0, tl.t0 + healthy + fault - time.monotonic()))
        env.start_upstream()
        await wait_port(env.up_port, 30, env.upstream)
    elif name in ("redis_fail_closed", "redis_fail_open"):
        assert env.redis is not None
        env.redis.kill()
        await wait_exit(env.redis, 10)
        await asyncio.sleep(max(0.0, tl.t0 + healthy + fault - time.monotonic()))
        env.start_redis()
        await wait_port(env.redis_port, 30, env.redis)
    elif name == "db_down":
        env.proxy.cut()
        await asyncio.sleep(max(0.0, tl.t0 + healthy + fault - time.monotonic()))
        env.proxy.restore()
    elif name in ("sigterm", "sigkill"):
        assert env.gateway is not None
        env.gateway.send_signal(signal.SIGTERM if name == "sigterm" else signal.SIGKILL)
        began = time.monotonic()
        clean = await wait_exit(env.gateway, 45)  # the gateway's own graceful timeout is 30 s
        tl.extra["exit_s"] = time.monotonic() - began
        tl.extra["exit_rc"] = float(env.gateway.returncode if clean else -999)
        began = time.monotonic()
        env.start_gateway()
        await wait_port(env.gw_port, 120, env.gateway)
        tl.extra["restart_s"] = time.monotonic() - began
    else:
        raise ValueError(name)
    tl.fault_end = time.monotonic() - tl.t0
    tl.stop_at = max(tl.stop_at, tl.t0 + tl.fault_end + recovered)
    log(f"{name}: fault over at t={tl.fault_end:.1f}s")


async def drive(
    env: Env, name: str, duration: float, stream_share: float, pause: float, client_timeout: float
) -> tuple[list[Req], Timeline]:
    healthy, fault, recovered = duration / 4, duration / 2, duration / 4
    url = f"http://127.0.0.1:{env.gw_port}/v1/chat/completions"
    now = time.monotonic()
    tl = Timeline(t0=now, stop_at=now + duration)
    out: list[Req] = []
    timeout = aiohttp.ClientTimeout(total=client_timeout, sock_connect=2)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CLIENTS * 2), timeout=timeout
    ) as session:
        clients = [
            asyncio.create_task(client(i, session, url, env.key, tl, out, stream_share, pause))
            for i in range(CLIENTS)
        ]
        injector = asyncio.create_task(inject(env, name, tl, healthy, fault, recovered))
        # The fault is bounded by its own timeouts; the clients by --client-timeout per request.
        await asyncio.wait_for(injector, duration + 240)
        await asyncio.wait_for(
            asyncio.gather(*clients), max(1.0, tl.stop_at - time.monotonic()) + client_timeout + 30
        )
    return out, tl


async def drain(env: Env, bound: float = 90) -> tuple[int, int, float]:
    """Poll the row counts until they stop changing (3 s) with nothing spooled; at most ``bound`` s."""
    began = time.monotonic()
    last, since = (-1, -1), time.monotonic()
    while time.monotonic() - began < bound:
        try:
            now = await asyncio.to_thread(env.counts)
        except psycopg.Error:
            now = (-1, -1)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 3 and (env.spooled_lines() == 0 or time.monotonic() - since >= 15):
            break
        await asyncio.sleep(0.5)
    return last[0], last[1], time.monotonic() - began


# --- one run -----------------------------------------------------------------------------------


def rate(reqs: list[Req], lo: float, hi: float) -> float:
    return sum(1 for r in reqs if r.outcome == "ok" and lo <= r.end < hi) / (hi - lo) if hi > lo else 0.0


async def run_scenario(name: str, index: int, procs: Procs, args: argparse.Namespace) -> dict[str, Any]:
    env = Env(name, index, procs, args.pg_admin_url)
    try:
        env.setup()
        env.start_redis()
        env.start_upstream()
        await wait_port(env.redis_port, 30, env.redis)
        await wait_port(env.up_port, 30, env.upstream)
        env.start_gateway()
        await wait_port(env.gw_port, 120, env.gateway)
        log(f"{name}: gateway up on {env.gw_port}; load for {args.duration:.0f}s")
        reqs, tl = await drive(env, name, args.duration, args.stream_share, args.pause, args.client_timeout)
        end = max((r.end for r in reqs), default=0.0)
        log(f"{name}: {len(reqs)} requests; waiting for the writer to drain")
        ledger_n, audit_n, drain_s = await drain(env)
        pending_before_stop = env.spooled_lines()
        stop_sync(env.gateway)  # clean stop: drains what is still queued
        gateway_rc = env.gateway.returncode if env.gateway else None
        ledger_ids, audit_ids = env.ids("usage_ledger"), env.ids("audit_records")
        verify = subprocess.run(
            [str(BIN / "gateway"), "audit", "verify", "--config", str(env.config)],
            env=env.env,
            cwd=env.work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = [ln.strip() for ln in (verify.stdout + verify.stderr).splitlines() if ln.strip()]
        summary = next((ln for ln in reversed(lines) if "records checked" in ln), lines[-1] if lines else "")
        problems = [ln for ln in lines if ln != summary]  # e.g. "problem chain ...: records 5..9 are missing"

        answered = [r for r in reqs if r.outcome == "ok"]
        answered_ids = {r.rid for r in answered if r.rid}
        with_id = {r.rid for r in reqs if r.rid}
        by_outcome = Counter(r.outcome for r in reqs)
        statuses = Counter(r.status for r in reqs if r.outcome == "http")
        fs, fe = tl.fault_start, tl.fault_end
        first_ok = min((r.end for r in answered if r.start >= fe), default=float("nan"))
        result: dict[str, Any] = {
            "scenario": name,
            "sent": len(reqs),
            "answered_2xx": len(answered),
            "answered_streams": sum(1 for r in answered if r.stream),
            "status_5xx": {str(s): n for s, n in sorted(statuses.items()) if s >= 500},
            "status_other": {str(s): n for s, n in sorted(statuses.items()) if s < 500},
            "stream_error_after_200": by_outcome["stream_error"],
            "connect_failures": by_outcome["connect"],
            "disconnects": by_outcome["disconnect"],
            "timeouts": by_outcome["timeout"],
            "client_errors": by_outcome["client_error"],
            "fault_window_s": fe - fs,
            "rps_2xx_healthy": rate(reqs, 0.0, fs),
            "rps_2xx_fault": rate(reqs, fs, fe),
            "rps_2xx_recovered": rate(reqs, fe, end),
            "first_2xx_after_fault_s": first_ok - fe,
            "answered_without_request_id": sum(1 for r in answered if not r.rid),
            "ledger_rows": len(ledger_ids),
            "audit_rows": len(audit_ids),
            "ledger_lost": len(answered_ids - ledger_ids),
            "audit_lost": len(answered_ids - audit_ids),
            "ledger_lost_any_status": len(with_id - ledger_ids),
            "audit_lost_any_status": len(with_id - audit_ids),
            "counts_after_drain": [ledger_n, audit_n],
            "drain_s": drain_s,
            "spooled_lines_before_stop": pending_before_stop,
            "spooled_lines_after_stop": env.spooled_lines(),
            "wal_lines_after_stop": env.spooled_lines(wal=True),
            "gateway_exit_rc": gateway_rc,
            "gateway_error_log_lines": env.error_log_lines(),
            "audit_verify": f"{summary} (exit {verify.returncode})",
            "audit_verify_problems": problems[:5],
            **tl.extra,
        }
        log(f"{name}: {json.dumps(result)}")
        return result
    finally:
        env.teardown(args.keep)


# --- report ------------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the numeric figures (integers stay integers: the lower median)."""
    out: dict[str, Any] = {}
    for k, v in runs[0].items():
        values = [r.get(k) for r in runs]
        if isinstance(v, bool) or v is None or isinstance(v, str | list):
            out[k] = values
        elif isinstance(v, int):
            out[k] = statistics.median_low(int(x) for x in values if isinstance(x, int | float))
        elif isinstance(v, float):
            out[k] = statistics.median(float(x) for x in values if isinstance(x, int | float))
        elif isinstance(v, dict):
            keys = sorted({key for r in runs for key in r.get(k, {})})
            out[k] = {key: statistics.median_low(r.get(k, {}).get(key, 0) for r in runs) for key in keys}
    return out


def fmt(n: Any) -> str:
    if isinstance(n, float):
        return f"{n:,.0f}" if n == int(n) else f"{n:,.1f}"
    return f"{n:,}" if isinstance(n, int) else str(n)


def per_run(runs: list[dict[str, Any]], key: str) -> str:
    """A loss must not vanish in a median: one value if every run agrees, else every run's."""
    values = [r[key] for r in runs]
    return (
        fmt(values[0])
        if len(set(values)) == 1
        else f"max {fmt(max(values))} (runs: {' / '.join(map(fmt, values))})"
    )


def verify_cell(runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if r["audit_verify"].endswith("(exit 0)")]
    cell = f"{len(ok)}/{len(runs)} runs: 0 problems"
    for i, r in enumerate(runs, 1):
        if r not in ok:
            first = (r.get("audit_verify_problems") or [""])[0]
            cell += f"; run {i}: {r['audit_verify'].split(' (exit')[0].split(', ')[-1]}" + (
                f" ({first})" if first else ""
            )
    return cell


def table(raw: dict[str, list[dict[str, Any]]], meta: dict[str, Any]) -> str:
    rows = [
        "| scenario | sent | answered 2xx | 5xx by status | other failures | connect failures | fault window | "
        "2xx/s healthy / fault / after | ledger rows lost | audit rows lost | `gateway audit verify` |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for runs in raw.values():
        r = median_of(runs)
        five = ", ".join(f"{s}: {fmt(n)}" for s, n in r["status_5xx"].items() if n) or "0"
        other = [f"{s}: {fmt(n)}" for s, n in r["status_other"].items() if n]
        other += [
            f"{label}: {fmt(r[key])}"
            for key, label in (
                ("stream_error_after_200", "stream error after 200"),
                ("disconnects", "disconnected"),
                ("timeouts", "timed out"),
                ("client_errors", "client error"),
            )
            if r[key]
        ]
        rows.append(
            f"| {runs[0]['scenario']} | {fmt(r['sent'])} | {fmt(r['answered_2xx'])} | {five} | "
            f"{'; '.join(other) or '0'} | {fmt(r['connect_failures'])} | {r['fault_window_s']:.1f} s | "
            f"{r['rps_2xx_healthy']:,.0f} / {r['rps_2xx_fault']:,.0f} / {r['rps_2xx_recovered']:,.0f} | "
            f"{per_run(runs, 'ledger_lost')} | {per_run(runs, 'audit_lost')} | {verify_cell(runs)} |"
        )
    runs_n = max(len(v) for v in raw.values())
    head = (
        f"{meta['date']}; {meta['machine']}; {CLIENTS} closed-loop clients, --duration {meta['duration']:g} "
        f"(fault from 1/4 to 3/4); median of {runs_n} run(s) per scenario (rows lost: every run).\n"
    )
    return head + "\n" + "\n".join(rows)


def machine() -> str:
    return (
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, PostgreSQL via a loopback proxy, redis-server {redis_version()}"
    )


def redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--duration",
        type=float,
        default=20,
        help="seconds of load per run (quarter healthy, half fault, quarter recovered); default 20",
    )
    ap.add_argument("--scenario", action="append", choices=SCENARIOS, help="repeatable; default: all")
    ap.add_argument("--runs", type=int, default=1, help="runs per scenario; the table shows medians")
    ap.add_argument(
        "--stream-share", type=float, default=0.2, help="share of streamed requests (default 0.2)"
    )
    ap.add_argument("--pause", type=float, default=0.1, help="a client's pause after a failed request, s")
    ap.add_argument("--client-timeout", type=float, default=15, help="per-request timeout, s")
    ap.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="where to create and drop this script's own databases",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    ap.add_argument("--report", type=Path, default=None, help="print the table of a --json file and exit")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, spool)")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(args.report.read_text())
        print(table(saved["runs"], saved["meta"]))
        return
    if not shutil.which("redis-server"):
        sys.exit("redis-server is required (apt-get install redis-server)")
    if args.duration < 4 or args.runs < 1:
        sys.exit("--duration must be at least 4 and --runs at least 1")

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    procs = Procs()
    scenarios = args.scenario or list(SCENARIOS)
    raw: dict[str, list[dict[str, Any]]] = {}
    failed: list[str] = []
    try:
        index = 0
        for name in scenarios:
            for _ in range(args.runs):
                index += 1
                try:
                    result = asyncio.run(run_scenario(name, index, procs, args))
                    raw.setdefault(name, []).append(result)
                except Exception as exc:  # one broken run must not lose the others' figures
                    log(f"{name}: run failed: {type(exc).__name__}: {exc}")
                    failed.append(f"{name}: {type(exc).__name__}: {exc}")
                procs.kill_all()
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
    finally:
        procs.kill_all()
    for line in failed:
        print(f"FAILED RUN: {line}")
    if not raw:
        sys.exit(1)
    meta = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "duration": args.duration,
        "argv": sys.argv[1:],
        "machine": machine(),
    }
    print("\n" + table(raw, meta) + "\n")
    print(
        "details (medians): " + json.dumps([median_of(runs) for runs in raw.values()], indent=1, default=str)
    )
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "runs": raw}, indent=1, default=str))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
