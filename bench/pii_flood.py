"""One key floods the PII engine; how much slower do other keys' requests get?

    .venv/bin/python bench/pii_flood.py [--runs 3] [--seconds 5] [--flood-chars 150000] [--flood-connections 3]
                                        [--max-inflight CHARS]

Starts the development upstream and one gateway worker with `pii_redaction` on (structured
types, no NER). Key B sends a short prompt with an e-mail address at concurrency 1 (wrk), first
alone (the baseline), then while key A sends prompts of --flood-chars characters at
--flood-connections concurrency. Prints key B's p50/p99 in both phases and the ratio, plus how
key A's requests were answered (200, 429 `pii.busy`, 413 `pii.too_large`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import BIN, PII_BODY, free_port, stop, wait_port, wrk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--flood-chars", type=int, default=150_000)
    ap.add_argument("--flood-connections", type=int, default=3)
    ap.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="pii_redaction.max_inflight_chars_per_key (default: the policy's default)",
    )
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gw-flood-"))
    up_port, gw_port = free_port(), free_port()
    (work / "policies").mkdir()
    inflight = f"{{max_inflight_chars_per_key: {args.max_inflight}}}" if args.max_inflight else "{}"
    (work / "policies" / "bundle.yaml").write_text(f"version: 1\ndefaults:\n  pii_redaction: {inflight}\n")
    (work / "config.yaml").write_text(f"""\
deployments:
  eu: {{kind: openai_compatible, base_url: "http://127.0.0.1:{up_port}/v1", model: m, jurisdiction: EU, region: fr}}
models:
  mistral-7b: {{deployments: [eu]}}
storage:
  database_url: sqlite:///{work}/gateway.db
server:
  port: {gw_port}
  policies_dir: {work / "policies"}
  secret_key: ${{GATEWAY_SECRET}}
""")
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(work / "config.yaml"),
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_SECRET": os.environ.get("GATEWAY_SECRET") or "bench-" + "x" * 40,
    }

    def key(app: str) -> str:
        return subprocess.run(
            [BIN / "gateway", "keys", "create", "--tenant", "bench", "--app", app],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    key_a, key_b = key("flood"), key("victim")
    upstream = subprocess.Popen(
        [BIN / "gateway", "dev-upstream", "--port", str(up_port), "--chunk-delay-ms", "0"],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    gateway = subprocess.Popen(
        [BIN / "gateway", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work
    )
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    words = "Quarterly notes for the planning meeting, nothing personal in here. "
    big = json.dumps(
        {
            "model": "mistral-7b",
            "messages": [
                {
                    "role": "user",
                    "content": "NNNN " + (words * (args.flood_chars // len(words) + 1))[: args.flood_chars],
                }
            ],
        }
    )
    flood_script = work / "flood.lua"
    flood_script.write_text(
        f'wrk.method = "POST"\nwrk.body = [[{big}]]\nwrk.headers["Content-Type"] = '
        f'"application/json"\nwrk.headers["Authorization"] = "Bearer {key_a}"\n'
        # A different prompt every time, so the analysis cache cannot absorb the flood.
        "n = 0\nrequest = function()\n  n = n + 1\n"
        '  return wrk.format(nil, nil, nil, (string.gsub(wrk.body, "NNNN", tostring(n), 1)))\nend\n'
    )
    try:
        wait_port(up_port)
        wait_port(gw_port)
        wrk(url, PII_BODY, key_b, 2, 2)  # warm-up
        alone, flooded, answers = [], [], []
        for _ in range(args.runs):
            alone.append(wrk(url, PII_BODY, key_b, 1, args.seconds))
            flood = subprocess.Popen(
                [
                    "wrk",
                    "-t1",
                    f"-c{args.flood_connections}",
                    f"-d{args.seconds + 2}s",
                    "-s",
                    str(flood_script),
                    url,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(1)
            flooded.append(wrk(url, PII_BODY, key_b, 1, args.seconds))
            out = flood.communicate()[0]
            total = re.search(r"(\d+) requests in", out)
            refused = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            answers.append(
                f"{total.group(1) if total else '?'} sent, {refused.group(1) if refused else 0} refused"
            )
        p50a, p99a = statistics.median(r["p50"] for r in alone), statistics.median(r["p99"] for r in alone)
        p50f, p99f = (
            statistics.median(r["p50"] for r in flooded),
            statistics.median(r["p99"] for r in flooded),
        )
        print(
            f"\n### PII flood: key A sends {args.flood_chars:,}-character prompts at c={args.flood_connections}\n"
        )
        print(
            f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}; median of {args.runs} runs; key B at c=1 for {args.seconds}s.\n"
        )
        print("| key B (short prompt with an e-mail) | alone | while key A floods | ratio |")
        print("|---|---|---|---|")
        print(f"| p50 | {p50a:.2f} ms | {p50f:.2f} ms | {p50f / p50a:.1f}x |")
        print(f"| p99 | {p99a:.2f} ms | {p99f:.2f} ms | {p99f / p99a:.1f}x |")
        print(f"\nkey A's requests per run (refused: 429 pii.busy or 413 pii.too_large): {answers}")
        print(f"raw: alone={alone} flooded={flooded}")
    finally:
        stop(gateway, upstream)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
