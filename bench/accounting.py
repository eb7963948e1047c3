"""Throughput and latency with token_accounting active, against the empty chain, in one run.

    .venv/bin/python bench/accounting.py [--rounds 5] [--seconds 5] [--stream] [--unique]

Alternates ``bench/overhead.py --runs 1`` with the empty chain and with ``--accounting``
(Redis reserve and settle on five counters, one ledger row per request through the batched
writer, token and cost metrics), so both see the same machine noise. Prints the median of
each figure and the median of the per-round ratios accounting / empty. Needs wrk and Redis
on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def one(seconds: int, stream: bool, accounting: bool, unique: bool) -> dict[str, float]:
    cmd = [sys.executable, str(HERE / "overhead.py"), "--runs", "1", "--seconds", str(seconds)]
    cmd += ["--stream"] if stream else []
    cmd += ["--unique"] if unique else []
    cmd += ["--accounting", "--label", "accounting"] if accounting else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    raw = ast.literal_eval(out.split("raw runs:", 1)[1].strip())
    return {k: float(v[0]) for k, v in raw.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--stream", action="store_true")
    ap.add_argument(
        "--unique", action="store_true", help="a different prompt in every request (no cached counts)"
    )
    args = ap.parse_args()
    empty: list[dict[str, float]] = []
    acct: list[dict[str, float]] = []
    for i in range(args.rounds):
        # Swap the order every round so neither setup always runs on a warmer or busier machine.
        order = (False, True) if i % 2 == 0 else (True, False)
        for accounting in order:
            (acct if accounting else empty).append(one(args.seconds, args.stream, accounting, args.unique))
        print(
            f"round {i + 1}: empty {empty[-1]['g_rps']:.0f} req/s, accounting {acct[-1]['g_rps']:.0f} req/s",
            file=sys.stderr,
        )

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratios = [a["g_rps"] / e["g_rps"] for a, e in zip(acct, empty, strict=True)]
    added = [a["g_p50"] - e["g_p50"] for a, e in zip(acct, empty, strict=True)]
    kind = ("streamed" if args.stream else "non-streamed") + (
        ", a different prompt per request" if args.unique else ""
    )
    print(f"\n{kind}, {args.rounds} alternating rounds, wrk -t1 {args.seconds}s each\n")
    print("| metric | empty chain | token_accounting | accounting / empty |")
    print("|---|---|---|---|")
    print(
        f"| c=32 throughput (median) | {med(empty, 'g_rps'):.0f} req/s | {med(acct, 'g_rps'):.0f} req/s | "
        f"{statistics.median(ratios):.2f}x (per-round {min(ratios):.2f} to {max(ratios):.2f}) |"
    )
    print(
        f"| c=1 p50 latency (median) | {med(empty, 'g_p50'):.3f} ms | {med(acct, 'g_p50'):.3f} ms | "
        f"+{statistics.median(added):.3f} ms |"
    )
    print(f"| c=1 p99 latency (median) | {med(empty, 'g_p99'):.3f} ms | {med(acct, 'g_p99'):.3f} ms | |")
    print(f"\nper-round throughput ratios: {[round(r, 3) for r in ratios]}")


if __name__ == "__main__":
    main()
