"""/v1/responses (bridged to chat, and native) against /v1/chat/completions, side by side, shipped defaults.

    .venv/bin/python bench/responses.py [--runs 3] [--seconds 5] [--native]

Starts the development upstream and one gateway worker running the repository's config.yaml and
policies/ as shipped (residency, accounting, PII redaction; the deployments pointed at the loopback
upstream through their environment variables; only the key's rate limit and budgets raised, so a run
is not refused), then, in each run and interleaved, drives with wrk:
direct-to-upstream chat, gateway chat and gateway responses, non-streamed and streamed, at
concurrency 32 (throughput) and 1 (p50 latency). The same prompt, with an e-mail address to redact
and restore, goes in both shapes. Prints a Markdown table of medians and the responses/chat ratio.

``--native`` adds the shipped ``gpt-4o`` model, whose Azure deployment lists ``supports: [chat,
responses]`` (pointed at the development upstream's Azure paths): direct-to-upstream ``/responses``,
gateway chat on that model (the upstream's chat path) and gateway responses on it (native: the
upstream's ``/openai/v1/responses``), with the native/chat ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, free_port, launch, rss_mb, stop, wait_port, wrk

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a two-line reply to jan.kowalski@example.pl about the contract renewal."
CHAT = {"model": "mistral-7b", "messages": [{"role": "user", "content": PROMPT}]}
RESPONSES = {"model": "mistral-7b", "input": PROMPT}
CASES = ("direct chat", "gateway chat", "gateway responses")
NATIVE = ("direct responses", "gateway chat gpt-4o", "gateway responses native")
# The shipped key limit (600 requests a minute) would refuse most of a run: only the limits are raised,
# so every request still reserves and settles its budgets and rate limits.
LIMITS = {
    "budgets": [
        {"scope": "tenant", "period": "month", "eur": 1_000_000},
        {"scope": "key", "period": "day", "tokens": 100_000_000_000},
    ],
    "rate_limits": [{"scope": "key", "rpm": 100_000_000, "tpm": 100_000_000_000}],
}


def bodies(stream: bool, native: bool) -> dict[str, str]:
    extra = {"stream": True} if stream else {}
    chat = {**CHAT, **extra, **({"stream_options": {"include_usage": True}} if stream else {})}
    out = {
        "direct chat": json.dumps(chat),
        "gateway chat": json.dumps(chat),
        "gateway responses": json.dumps({**RESPONSES, **extra}),
    }
    if native:
        out["direct responses"] = json.dumps({**RESPONSES, **extra, "model": "gpt-4o"})
        out["gateway chat gpt-4o"] = json.dumps({**chat, "model": "gpt-4o"})
        out["gateway responses native"] = json.dumps({**RESPONSES, **extra, "model": "gpt-4o"})
    return out


def table(med: dict[tuple[bool, str, str], float], cases: tuple[str, str, str], title: str) -> None:
    print(f"{title}:\n")
    print(f"| mode | metric | {' | '.join(cases)} | {cases[2]} / {cases[1]} |")
    print("|---|---|---|---|---|---|")
    for stream in (False, True):
        mode = "streamed" if stream else "JSON"
        d, c, r = (med[(stream, case, "rps")] for case in cases)
        print(f"| {mode} | c=32 throughput | {d:.0f} req/s | {c:.0f} req/s | {r:.0f} req/s | {r / c:.2f}x |")
        d, c, r = (med[(stream, case, "p50")] for case in cases)
        print(f"| {mode} | c=1 p50 latency | {d:.3f} ms | {c:.3f} ms | {r:.3f} ms | +{r - c:.3f} ms |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument(
        "--native", action="store_true", help="add gpt-4o: native Responses on its Azure deployment"
    )
    args = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="gw-bench-responses-"))
    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
        "GATEWAY_CONFIG": str(ROOT / "config.yaml"),
        "GATEWAY_DATA_DIR": str(work),
        "GATEWAY_LOG_LEVEL": "INFO",
        "GATEWAY_SECRET": os.environ.get("GATEWAY_SECRET") or "bench-" + "x" * 40,
        "MISTRAL_7B_URL": upstream_url,
        "MISTRAL_API_URL": upstream_url,
        "MISTRAL_EMBED_URL": upstream_url,
        "MISTRAL_7B_API_KEY": "sk-bench",
        "MISTRAL_API_KEY": "sk-bench",
        "AZURE_OPENAI_ENDPOINT": f"http://127.0.0.1:{up_port}",
        "AZURE_OPENAI_API_KEY": "sk-bench",
    }
    # config.yaml's policies_dir (policies/) is relative to the working directory: the run's copy.
    shutil.copytree(ROOT / "policies", work / "policies")
    bundle = work / "policies" / "bundle.yaml"
    raised = yaml.safe_load(bundle.read_text())
    raised["defaults"]["token_accounting"].update(LIMITS)
    bundle.write_text(yaml.safe_dump(raised, sort_keys=False))
    subprocess.run([BIN / "gateway", "db", "upgrade"], env=env, cwd=work, check=True, capture_output=True)
    key, upstream, gateway = launch(env, work, up_port, "--port", str(gw_port), "--workers", "1")
    urls = {
        "direct chat": f"{upstream_url}/chat/completions",
        "gateway chat": f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        "gateway responses": f"http://127.0.0.1:{gw_port}/v1/responses",
        "direct responses": f"{upstream_url}/responses",
        "gateway chat gpt-4o": f"http://127.0.0.1:{gw_port}/v1/chat/completions",
        "gateway responses native": f"http://127.0.0.1:{gw_port}/v1/responses",
    }
    try:
        wait_port(up_port)
        wait_port(gw_port, timeout=120)
        results: dict[tuple[bool, str, str], list[float]] = {}
        for stream in (False, True):
            for case, body in bodies(stream, args.native).items():  # warm-up
                wrk(urls[case], body, None if case.startswith("direct") else key, 4, 2)
        for _ in range(args.runs):
            for stream in (False, True):
                for case, body in bodies(stream, args.native).items():
                    auth = None if case.startswith("direct") else key
                    many = wrk(urls[case], body, auth, 32, args.seconds)
                    one = wrk(urls[case], body, auth, 1, args.seconds)
                    results.setdefault((stream, case, "rps"), []).append(many["rps"])
                    results.setdefault((stream, case, "p50"), []).append(one["p50"])
        med = {k: statistics.median(v) for k, v in results.items()}
        print("\n### /v1/responses against /v1/chat/completions, shipped config.yaml and policies/\n")
        print(
            f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}; median of {args.runs} runs; wrk -t1, {args.seconds}s each; "
            "one gateway worker.\n"
        )
        table(med, CASES, "bridged: mistral-7b, whose deployments serve chat completions only")
        if args.native:
            table(med, NATIVE, "native: gpt-4o, its Azure deployment listing supports: [chat, responses]")
        print(f"\ngateway worker RSS after load: {rss_mb(gateway.pid):.0f} MB")
        raw = {f"{'stream' if k[0] else 'json'} {k[1]} {k[2]}": v for k, v in results.items()}
        print(f"\nraw runs: {raw}")
    finally:
        stop(gateway, upstream)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
