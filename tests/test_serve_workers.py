"""`gateway serve --workers 2`: every worker process writes its access log and warnings.

uvicorn spawns each worker as a new process, which does not inherit the logging `gateway serve` set
up in the parent; before the factory set it up in the worker, requests served by a worker left no
access log line at all. The test starts the real command, sends requests until both workers (two
process ids) have answered, and reads the JSON log lines on stderr.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.dev import DevUpstream
from tests.conftest import free_port


def test_every_worker_writes_its_access_log(tmp_path: Path, upstream: DevUpstream) -> None:
    config = {
        "deployments": {
            "eu": {
                "kind": "openai_compatible",
                "base_url": upstream.url,
                "model": "m",
                "jurisdiction": "EU",
                "region": "fr-par",
            }
        },
        "models": {"mistral-7b": {"deployments": ["eu"]}},
        "storage": {"database_url": f"sqlite:///{tmp_path / 'gw.db'}", "spool_dir": str(tmp_path / "spool")},
        "server": {"secret_key": "w" * 48, "policies_dir": str(tmp_path / "none"), "workers": 2},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "GATEWAY_LOG_LEVEL": "INFO", "GATEWAY_CONFIG": str(path)}
    key = subprocess.run(
        [sys.executable, "-m", "gateway.cli_main", "keys", "create", "--tenant", "t", "--app", "a"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli_main", "serve", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.1)
        body = {"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}
        pids: set[int] = set()
        for _ in range(200):  # new connections are spread over the workers by the kernel
            resp = httpx.post(
                f"{url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key}"},
                timeout=10,
            )
            assert resp.status_code == 200
            pids = {r["pid"] for r in access_lines(log)}
            if len(pids) == 2:
                break
            time.sleep(0.02)
        assert len(pids) == 2, f"access log lines from {len(pids)} worker(s): {log.read_text()[-2000:]}"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def access_lines(log: Path) -> list[dict[str, Any]]:
    """The access log's JSON lines, each with the process id that wrote it."""
    out = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("logger") == "gateway.access":
            out.append(record)
    return out
