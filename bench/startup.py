"""Start-up cost of the CLI and of a serving worker (issue #13).

    .venv/bin/python bench/startup.py [--runs 5] [--only cli|serve] [--bytecode] [--json FILE]

CLI: wall time, CPU time (user + system) and peak RSS of `gateway --help`, `gateway config check`,
`gateway policy check` and `gateway policy test`, run from the repository root on the shipped
config.yaml and policies/ (as an operator would). The peak RSS is the child's ru_maxrss.

Worker: `gateway serve` (one worker, uvicorn in the launched process) with a temporary config,
SQLite database and a 48-character GATEWAY_SECRET, in front of the development upstream. VmRSS is
read from /proc/PID/status once /healthz answers and again after 200 chat completions through
the worker (sequential, one keep-alive connection, each prompt holding an e-mail address). Chains:

  * no policies dir        server.policies_dir names a directory that does not exist;
  * empty policies dir     an empty directory (the bundle loader runs, with no sections);
  * shipped bundle         policies/ with the shipped config.yaml; requests as finance/reports
                           (defaults: residency, token_accounting, pii_redaction without NER);
  * shipped bundle, NER    the same, requests as hr/chatbot (adds PERSON, so spaCy NER loads, and
                           rag_context on an empty embedded index).

Every figure is the median of --runs runs. --bytecode runs everything with compiled bytecode
(a throw-away PYTHONPYCACHEPREFIX, filled by a first unmeasured run), as in the Docker image,
where pip compiles it; without it the environment is used as it is (this project's development
machines set PYTHONDONTWRITEBYTECODE=1, so every start compiles from source).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GATEWAY = str(BIN / "gateway")
SECRET = "startup-bench-" + "s" * 34  # 48 characters
CLI = {
    "gateway --help": ["--help"],
    "gateway config check": ["config", "check"],
    "gateway policy check": ["policy", "check"],
    "gateway policy test": ["policy", "test"],
}
REQUESTS = 200


def base_env(bytecode: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "DATABASE_URL", "REDIS_URL")}
    if bytecode is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(bytecode)
    return env


def run_measured(argv: list[str], env: dict[str, str], cwd: Path) -> dict[str, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one child process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-2000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(proc: subprocess.Popen[bytes], port: int, path: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                conn.close()
                return
            conn.close()
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 (exit code {proc.poll()})")


def wait_port(port: int, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"port {port} did not open")


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def worker_config(work: Path, variant: str, up_port: int, gw_port: int) -> dict[str, Any]:
    storage = {
        "database_url": f"sqlite:///{work}/gateway.db",
        "redis_url": None,
        "spool_dir": str(work / "spool"),
    }
    if variant.startswith("shipped"):
        config = yaml.safe_load((ROOT / "config.yaml").read_text())
        for name in ("mistral-7b-selfhosted", "mistral-embed"):  # chat, and RAG's query embeddings
            config["deployments"][name]["base_url"] = f"http://127.0.0.1:{up_port}/v1"
        if isinstance(config.get("rag"), dict) and isinstance(config["rag"].get("embedded"), dict):
            config["rag"]["embedded"]["path"] = str(work / "rag-index")  # empty: retrieval finds nothing
        config["storage"] = {**config.get("storage", {}), **storage}
        config["server"] = {
            **config.get("server", {}),
            "port": gw_port,
            "policies_dir": str(ROOT / "policies"),
            "secret_key": "${GATEWAY_SECRET}",
        }
        return config
    policies = work / ("no-such-dir" if variant == "no policies dir" else "policies")
    if variant == "empty policies dir":
        policies.mkdir()
    return {
        "deployments": {
            "eu": {
                "kind": "openai_compatible",
                "base_url": f"http://127.0.0.1:{up_port}/v1",
                "model": "mistral-7b-instruct",
                "jurisdiction": "EU",
                "region": "fr-par",
            }
        },
        "models": {"mistral-7b": {"deployments": ["eu"]}},
        "storage": storage,
        "server": {"port": gw_port, "policies_dir": str(policies), "secret_key": "${GATEWAY_SECRET}"},
    }


def serve_once(variant: str, env: dict[str, str], up_port: int) -> dict[str, float]:
    """One worker start: seconds to /healthz, VmRSS then and after REQUESTS chat completions."""
    work = Path(tempfile.mkdtemp(prefix="gw-startup-"))
    gw_port = free_port()
    (work / "config.yaml").write_text(yaml.safe_dump(worker_config(work, variant, up_port, gw_port)))
    env = {
        **env,
        "GATEWAY_CONFIG": str(work / "config.yaml"),
        "GATEWAY_SECRET": SECRET,
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    tenant, app = ("hr", "chatbot") if variant.endswith("NER") else ("finance", "reports")
    key = subprocess.run(
        [GATEWAY, "keys", "create", "--tenant", tenant, "--app", app],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log = open(work / "gateway.log", "wb")  # noqa: SIM115 - closed below, after the process
    started = time.perf_counter()
    proc = subprocess.Popen([GATEWAY, "serve"], env=env, cwd=work, stdout=log, stderr=log)
    try:
        wait_http(proc, gw_port, "/healthz")
        ready_s = time.perf_counter() - started
        rss_ready = vm_rss_mb(proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", gw_port, timeout=30)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        for i in range(REQUESTS):
            prompt = f"Please write to Maria Schneider at maria.schneider{i}@example.de about the meeting."
            body = json.dumps({"model": "mistral-7b", "messages": [{"role": "user", "content": prompt}]})
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{variant}: HTTP {response.status}: {data[:500]!r}")
        conn.close()
        rss_after = vm_rss_mb(proc.pid)
    except Exception:
        stop(proc)
        log.close()
        sys.stderr.write((work / "gateway.log").read_text(errors="replace")[-3000:])
        raise
    stop(proc)
    log.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"ready_s": ready_s, "rss_ready_mb": rss_ready, "rss_after_mb": rss_after}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", choices=("cli", "serve"), default=None)
    ap.add_argument(
        "--bytecode", action="store_true", help="run with compiled bytecode (a temporary pycache)"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write every run's figures here")
    args = ap.parse_args()

    pycache = Path(tempfile.mkdtemp(prefix="gw-pycache-")) if args.bytecode else None
    env = base_env(pycache)
    out: dict[str, Any] = {"runs": args.runs, "bytecode": args.bytecode, "cli": {}, "serve": {}}
    print(
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}; "
        f"median of {args.runs} runs; bytecode {'compiled' if args.bytecode else 'as the environment has it'} "
        f"(PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}).\n"
    )
    try:
        if args.only in (None, "cli"):
            print("| command | wall | CPU (user+sys) | max RSS |")
            print("|---|---|---|---|")
            for label, argv in CLI.items():
                if args.bytecode:
                    run_measured([GATEWAY, *argv], env, ROOT)  # fills the bytecode cache
                runs = [run_measured([GATEWAY, *argv], env, ROOT) for _ in range(args.runs)]
                out["cli"][label] = runs
                m = median_of(runs)
                print(
                    f"| `{label}` | {m['wall_s']:.2f} s | {m['cpu_s']:.2f} s | {m['rss_mb']:.0f} MB |",
                    flush=True,
                )
            print()
        if args.only in (None, "serve"):
            up_port = free_port()
            upstream = subprocess.Popen(
                [GATEWAY, "dev-upstream", "--port", str(up_port), "--chunk-delay-ms", "0"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_port(up_port)
                print(
                    f"| `gateway serve` worker | to /healthz | VmRSS at /healthz | VmRSS after {REQUESTS} requests |"
                )
                print("|---|---|---|---|")
                for variant in (
                    "no policies dir",
                    "empty policies dir",
                    "shipped bundle",
                    "shipped bundle, NER",
                ):
                    if args.bytecode:
                        serve_once(variant, env, up_port)
                    runs = [serve_once(variant, env, up_port) for _ in range(args.runs)]
                    out["serve"][variant] = runs
                    m = median_of(runs)
                    print(
                        f"| {variant} | {m['ready_s']:.2f} s | {m['rss_ready_mb']:.0f} MB | "
                        f"{m['rss_after_mb']:.0f} MB |",
                        flush=True,
                    )
            finally:
                stop(upstream)
    finally:
        if pycache is not None:
            shutil.rmtree(pycache, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
