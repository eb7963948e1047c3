"""Gateway overhead against a fast loopback upstream, with direct-to-upstream as the baseline.

    .venv/bin/python bench/overhead.py [--runs 3] [--policies DIR] [--stream]

Starts the development upstream and one gateway worker (uvicorn, uvloop, httptools) as
separate processes, then drives both with wrk (Debian package `wrk`):
  * concurrency 1 for latency (p50, p99): added latency = gateway - direct;
  * concurrency 32 for throughput.
Prints a Markdown table with the median of --runs runs and the ratios to direct.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BODY = '{"model": "mistral-7b", "messages": [{"role": "user", "content": "Say hello in five words."}]}'
STREAM_BODY = BODY[:-1] + ', "stream": true}'
# With --pii: two identifiers to redact, so the answer is parsed for placeholder restore too.
PII_BODY = (
    '{"model": "mistral-7b", "messages": [{"role": "user", "content": '
    '"Refund jan.kowalski@example.pl to DE89 3704 0044 0532 0130 00 and confirm by mail."}]}'
)
PII_BUNDLE = "version: 1\ndefaults:\n  pii_redaction: {}\n"
# Limits far above what a run can use, so every request reserves and settles all five counters.
ACCOUNTING_BUNDLE = f"""\
version: 1
defaults:
  token_accounting:
    key_prefix: bench:{os.getpid()}
    budgets:
      - {{scope: tenant, period: day, eur: 1000000, tokens: 100000000000}}
      - {{scope: app, period: month, eur: 1000000}}
    rate_limits:
      - {{scope: key, rpm: 100000000, tpm: 100000000000}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def wrk(
    url: str, body: str, key: str | None, connections: int, seconds: int, unique: bool = False
) -> dict[str, float]:
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"\n' if key else ""
    # --unique: every request's last message ends with its own number, so nothing per-text is cached.
    vary = (
        "n = 0\nrequest = function()\n  n = n + 1\n"
        f"  return wrk.format(nil, nil, nil, (string.gsub([[{body}]], '\"}}]', ' #' .. n .. '\"}}]', 1)))\nend\n"
        if unique
        else ""
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            f'wrk.method = "POST"\nwrk.body = [[{body}]]\n'
            f'wrk.headers["Content-Type"] = "application/json"\n{auth}{vary}'
        )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx responses:\n{out}")

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"p50": ms("50%"), "p99": ms("99%"), "rps": rps}


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGINT (a clean shutdown) to each, then wait; kill what has not stopped after 10 s."""
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_mb(pid: int) -> float:
    # uvicorn with one worker serves in the launched process itself.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def launch(
    env: dict[str, str], work: Path, up_port: int, *serve: str
) -> tuple[str, subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """A bench API key, then the development upstream on ``up_port`` and ``gateway serve [serve...]``, both
    run in ``work`` (the gateway logs to work/gateway.log)."""
    key = subprocess.run(
        [BIN / "gateway", "keys", "create", "--tenant", "bench", "--app", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=work,
    ).stdout.strip()
    upstream = subprocess.Popen(
        [BIN / "gateway", "dev-upstream", "--port", str(up_port), "--chunk-delay-ms", "0"],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    log = open(work / "gateway.log", "w")  # noqa: SIM115 - kept open for the process lifetime
    gateway = subprocess.Popen([BIN / "gateway", "serve", *serve], env=env, stdout=log, stderr=log, cwd=work)
    return key, upstream, gateway


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--policies", default=None, help="policy bundle directory (default: empty chain)")
    ap.add_argument("--stream", action="store_true", help="benchmark streamed completions")
    ap.add_argument("--redis-url", default=None, help="storage.redis_url for the gateway")
    ap.add_argument("--label", default="empty chain")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (server.workers)")
    ap.add_argument(
        "--unique",
        action="store_true",
        help="a different prompt in every request (defeats per-text caches such as token counts)",
    )
    ap.add_argument(
        "--pii",
        action="store_true",
        help="pii_redaction active (fast path, default entities) and a prompt with an email and IBAN",
    )
    ap.add_argument(
        "--accounting",
        action="store_true",
        help="token_accounting active: Redis reserve/settle, ledger rows, cost metrics",
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    up_port, gw_port = free_port(), free_port()
    policies = args.policies or str(work / "policies")
    (work / "policies").mkdir()
    bundle = (
        ACCOUNTING_BUNDLE if args.accounting else PII_BUNDLE if args.pii else "version: 1\ndefaults: {}\n"
    )
    (work / "policies" / "bundle.yaml").write_text(bundle)
    if args.accounting and not args.redis_url:
        args.redis_url = "redis://127.0.0.1:6379/0"
    redis_line = f"  redis_url: {args.redis_url}\n" if args.redis_url else ""
    (work / "config.yaml").write_text(f"""\
deployments:
  eu:
    kind: openai_compatible
    base_url: http://127.0.0.1:{up_port}/v1
    model: mistral-7b-instruct
    jurisdiction: EU
    region: fr-par
    price: {{input_per_1m: "0.2", output_per_1m: "0.6", currency: EUR}}
models:
  mistral-7b:
    deployments: [eu]
storage:
  database_url: sqlite:///{work}/gateway.db
{redis_line}server:
  port: {gw_port}
  workers: {args.workers}
  policies_dir: {Path(policies).resolve()}
  secret_key: ${{GATEWAY_SECRET}}
""")
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(work / "config.yaml"),
        "GATEWAY_LOG_LEVEL": "INFO",
        "GATEWAY_SECRET": os.environ.get("GATEWAY_SECRET") or "bench-" + "x" * 40,
    }
    key, upstream, gateway = launch(env, work, up_port)
    try:
        wait_port(up_port)
        wait_port(gw_port)
        body = PII_BODY if args.pii else STREAM_BODY if args.stream else BODY
        direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        wrk(gw_url, body, key, 4, 2, args.unique)  # warm-up
        rows: dict[str, list[float]] = {k: [] for k in ("d_p50", "d_p99", "d_rps", "g_p50", "g_p99", "g_rps")}
        for _ in range(args.runs):
            d1, g1 = (
                wrk(direct_url, body, None, 1, args.seconds),
                wrk(gw_url, body, key, 1, args.seconds, args.unique),
            )
            d32 = wrk(direct_url, body, None, 32, args.seconds)
            g32 = wrk(gw_url, body, key, 32, args.seconds, args.unique)
            for prefix, one, many in (("d", d1, d32), ("g", g1, g32)):
                rows[f"{prefix}_p50"].append(one["p50"])
                rows[f"{prefix}_p99"].append(one["p99"])
                rows[f"{prefix}_rps"].append(many["rps"])
        med = {k: statistics.median(v) for k, v in rows.items()}
        rss = rss_mb(gateway.pid)
        print(f"\n### {args.label}{' (streamed)' if args.stream else ''}\n")
        print(
            f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}; median of {args.runs} runs; wrk -t1, {args.seconds}s each.\n"
        )
        print("| metric | direct to upstream | through gateway | ratio / added |")
        print("|---|---|---|---|")
        print(
            f"| c=1 p50 latency | {med['d_p50']:.3f} ms | {med['g_p50']:.3f} ms | "
            f"+{med['g_p50'] - med['d_p50']:.3f} ms |"
        )
        print(
            f"| c=1 p99 latency | {med['d_p99']:.3f} ms | {med['g_p99']:.3f} ms | "
            f"+{med['g_p99'] - med['d_p99']:.3f} ms |"
        )
        print(
            f"| c=32 throughput | {med['d_rps']:.0f} req/s | {med['g_rps']:.0f} req/s | "
            f"{med['g_rps'] / med['d_rps']:.2f}x |"
        )
        print(f"| gateway worker RSS after load | | {rss:.0f} MB | |")
        print(f"\nraw runs: {rows}")
    finally:
        stop(gateway, upstream)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
