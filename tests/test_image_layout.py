"""The image, as far as this machine can build it: the wheel, installed like the Dockerfile does, serving.

There is no Docker engine here, so this test does what the image does, step by step: it builds the
wheel, installs it (not editable) into a fresh virtual environment with the pinned constraints, lays
out a directory like the image's ``/srv`` (read-only code, config.yaml and policies; one writable
data directory, ``GATEWAY_DATA_DIR``), and runs ``gateway serve`` as an unprivileged user (nobody)
with the shipped config.yaml and policies, every outbound proxy pointed at a closed port. It then
passes ``/readyz``, a chat and a stream through the OpenAI SDK against a loopback upstream. That
proves the migrations and the other package data are in the wheel, that nothing is downloaded at
run time, and that nothing but the data directory needs to be writable.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.dev import DevUpstream
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SYSTEM_PYTHON = Path("/usr/bin/python3.11")  # readable by every user, unlike a pyenv under /root


def run(*args: str | Path, **kw: object) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
    return str(result.stdout)


@pytest.fixture(scope="module")
def image() -> Iterator[Path]:
    """The image's /srv and /opt/venv, under a directory every user can traverse."""
    assert SYSTEM_PYTHON.exists(), "the image-layout test needs a system Python 3.11"
    assert os.geteuid() == 0, "the image-layout test switches to an unprivileged user"
    work = Path(tempfile.mkdtemp(prefix="gw-image-", dir="/tmp"))
    work.chmod(0o755)
    uv = Path(sys.executable).parent / "uv"
    run(uv, "build", "--wheel", "--out-dir", work / "dist", ROOT)
    [wheel] = (work / "dist").glob("execai_gateway-*.whl")
    run(uv, "venv", "--quiet", "--python", SYSTEM_PYTHON, work / "venv")
    run(
        uv,
        "pip",
        "install",
        "--quiet",
        "--python",
        work / "venv" / "bin" / "python",
        "-c",
        ROOT / "constraints.txt",
        wheel,
    )
    srv = work / "srv"
    srv.mkdir()
    shutil.copy(ROOT / "config.yaml", srv / "config.yaml")
    shutil.copytree(ROOT / "policies", srv / "policies")
    for path in [srv, *srv.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # owned by root, read-only for the gateway
    data = work / "data"
    data.mkdir(mode=0o750)
    os.chown(data, NOBODY, NOBODY)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def as_nobody(*args: str) -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]


def environment(image: Path, upstream: DevUpstream) -> dict[str, str]:
    dead = "http://127.0.0.1:9"  # any download would go through this closed proxy, and fail
    return {
        "PATH": f"{image / 'venv' / 'bin'}:/usr/bin:/bin",
        "HOME": str(image / "data"),
        "GATEWAY_CONFIG": str(image / "srv" / "config.yaml"),
        "GATEWAY_DATA_DIR": str(image / "data"),
        "GATEWAY_SECRET": secrets.token_urlsafe(48),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
        "MISTRAL_7B_URL": upstream.url,
        "MISTRAL_API_URL": upstream.url,
        "MISTRAL_EMBED_URL": upstream.url,
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def test_the_installed_wheel_serves_as_an_unprivileged_user_from_a_read_only_tree(
    image: Path, upstream: DevUpstream
) -> None:
    env = environment(image, upstream)
    srv = image / "srv"
    created = subprocess.run(
        as_nobody(
            "gateway",
            "keys",
            "create",
            "--tenant",
            "acme",
            "--app",
            "bot",
            "--scopes",
            "chat",
        ),
        capture_output=True,
        text=True,
        env=env,
        cwd=srv,
        check=False,
    )
    assert created.returncode == 0, created.stderr[-2000:]
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("sk-gw-")
    port = free_port()
    server = subprocess.Popen(
        as_nobody("gateway", "serve", "--port", str(port)),
        env=env,
        cwd=srv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (server.stdout.read() if server.stdout else "")[-3000:]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the installed gateway did not become ready"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
        answer = client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "Hello"}]
        )
        assert answer.choices[0].message.content
        stream = client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "Hello"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        written = sorted(p.name for p in (image / "data").iterdir())
        assert "gateway.db" in written  # SQLite and the spool in the data directory, nowhere else
        assert "spool" in written
    finally:
        server.terminate()
        server.wait(30)
    assert not (srv / "gateway.db").exists()
