"""The README's commands work, verbatim, and print what the README says they print.

Format (README.md): every shell command in the README is in a ```` ```console ```` block, after a ``$ ``
prompt; the lines after it, up to the next prompt, are its expected output (stdout and stderr as a
terminal shows them). In expected output, ``...`` inside a line matches any text, a line that is only
``...`` matches any number of lines, and two or more spaces match any run of spaces (column alignment
moves with the values ``...`` stands for). A command continues on the next lines while bash says it
is incomplete (a trailing backslash, an open quote, ``$(``, a here-document). Two visible markers, as a
trailing shell comment on a command's first line:

- ``# not run by the README test: <reason>``: skipped (``make run``, benchmarks, ``docker build``...);
- ``# keeps running: ...``: started in the background (``gateway serve --dev``); the test waits for
  the gateway's ``/healthz``, checks the output printed so far, and stops it (SIGINT) at the end.

Every console block runs, in README order, in one fresh temporary directory holding copies of
``config.yaml``, ``policies/`` and ``examples/`` and a symlink to the repository's ``.venv``; each
command gets its own ``bash``, and the variables a command exports reach the later ones
(``export KEY=...``). A command must exit 0, and a command ``export NAME=...`` must leave NAME
non-empty.

Ports: the README says 8080 (gateway) and 9100 (development upstream). When either is taken on this
machine, the test moves both to free ports: it rewrites ``127.0.0.1:8080`` and ``127.0.0.1:9100`` in
the commands, the expected output and its copy of ``config.yaml`` (``server.port`` too), and sets
``GATEWAY_DEV_UPSTREAM_PORT`` (the documented override of ``serve --dev``). Everything stays on loopback.

``README_SHOW_OUTPUT=1 pytest tests/test_readme.py -s`` prints what every command printed: paste from
it when the README changes.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"#\s*not run by the README test:")
BACKGROUND = re.compile(r"#\s*keeps running:")
PORTS = {8080: "gateway", 9100: "development upstream"}
# The process environment must not leak into the README's commands: the README documents defaults.
# Nor may a proxy: the commands talk to loopback only.
CLEARED = re.compile(
    r"^(GATEWAY_|DATABASE_URL$|REDIS_URL$|MISTRAL_|AZURE_|OPENAI_|PROMETHEUS_|FORCE_COLOR$|"
    r"COLUMNS$|LINES$|VIRTUAL_ENV$|(?i:[a-z]*_proxy$))"
)
COMMAND_TIMEOUT_S = 60


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    line: int = 0  # README line of the prompt

    @property
    def first_line(self) -> str:
        return self.command.splitlines()[0]

    @property
    def skipped(self) -> bool:
        return bool(SKIP.search(self.first_line))

    @property
    def background(self) -> bool:
        return bool(BACKGROUND.search(self.first_line))


def _complete(command: str) -> bool:
    """Whether bash would run ``command`` as it is (no open quote, ``$(``, here-document or backslash)."""
    if command.endswith("\\"):
        return False
    check = subprocess.run(["bash", "-n"], input=command + "\n", capture_output=True, text=True)
    return check.returncode == 0 and not check.stderr


def parse(text: str) -> list[Step]:
    """The console blocks' commands and expected outputs, in order."""
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(`{3,})\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        ticks, lang = fence.group(1), fence.group(2)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith(ticks))
        if lang == "console":
            block, k = lines[i + 1 : end], 0
            assert block, f"README.md:{i + 2}: an empty console block"
            assert block[0].startswith("$ "), f"README.md:{i + 2}: a console block starts with a `$ ` prompt"
            while k < len(block):
                if block[k].startswith("$ "):
                    step = Step(block[k][2:], line=i + 2 + k)
                    while not _complete(step.command):
                        k += 1
                        assert k < len(block), f"README.md:{step.line}: the command never ends"
                        step.command += "\n" + block[k]
                    steps.append(step)
                else:
                    steps[-1].expected.append(block[k])
                k += 1
        i = end + 1
    return steps


def matches(expected: list[str], actual: list[str]) -> bool:
    """``...`` inside a line matches any text, a line that is only ``...`` any number of lines, two or more
    spaces any run of spaces."""

    def pattern(line: str) -> re.Pattern[str]:
        parts = [" +".join(map(re.escape, re.split(" {2,}", part))) for part in line.rstrip().split("...")]
        return re.compile(".*".join(parts))

    patterns = [None if e.strip() == "..." else pattern(e) for e in expected]
    memo: dict[tuple[int, int], bool] = {}

    def match(e: int, a: int) -> bool:
        if (e, a) not in memo:
            if e == len(patterns):
                ok = a == len(actual)
            elif patterns[e] is None:
                ok = match(e + 1, a) or (a < len(actual) and match(e, a + 1))
            else:
                pattern = patterns[e]
                ok = (
                    a < len(actual)
                    and pattern is not None
                    and bool(pattern.fullmatch(actual[a].rstrip()))
                    and match(e + 1, a + 1)
                )
            memo[(e, a)] = ok
        return memo[(e, a)]

    return match(0, 0)


def _free(port: int) -> bool:
    try:
        with socket.create_server(("127.0.0.1", port)):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return int(s.getsockname()[1])


def test_readme_parses_and_marks_every_command_it_does_not_run() -> None:
    text = README.read_text(encoding="utf-8")
    # A shell block outside the console format would be a command nobody checks.
    assert not re.search(r"^```\s*(sh|bash|shell|zsh)\s*$", text, re.MULTILINE), (
        "put shell commands in ```console blocks (mark the ones the test cannot run)"
    )
    steps = parse(text)
    assert sum(1 for s in steps if s.background) == 1, "exactly one command keeps running (the gateway)"
    run = [s for s in steps if not s.skipped and not s.background]
    assert len(run) >= 10
    assert all(not s.expected for s in steps if s.skipped), "a command the test does not run shows no output"


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    for name in ("config.yaml",):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("policies", "examples"):
        shutil.copytree(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not CLEARED.match(k)}
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="80", NO_PROXY="127.0.0.1,localhost")
    subs: dict[str, str] = {}
    if not all(_free(p) for p in PORTS):
        gateway, upstream = _free_port(), _free_port()
        subs = {"127.0.0.1:8080": f"127.0.0.1:{gateway}", "127.0.0.1:9100": f"127.0.0.1:{upstream}"}
        config = tmp_path / "config.yaml"
        text = config.read_text().replace("127.0.0.1:9100", f"127.0.0.1:{upstream}")
        text, n = re.subn(r"(?m)^(\s+port:\s*)8080\b", rf"\g<1>{gateway}", text)
        assert n == 1, "config.yaml: server.port 8080 not found"
        config.write_text(text)
        env["GATEWAY_DEV_UPSTREAM_PORT"] = str(upstream)
    return tmp_path, env, subs


def _substitute(text: str, subs: dict[str, str]) -> str:
    for old, new in subs.items():
        text = text.replace(old, new)
    return text


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: a clean stop closes the audit chain
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.mark.timeout(240)
def test_readme_commands_run_and_print_what_the_readme_shows(
    sandbox: tuple[Path, dict[str, str], dict[str, str]],
) -> None:
    if not shutil.which("bash") or not shutil.which("curl"):
        pytest.skip("the README's commands need bash and curl")
    cwd, env, subs = sandbox
    show = bool(os.environ.get("README_SHOW_OUTPUT"))
    steps = parse(README.read_text(encoding="utf-8"))
    envfile = cwd / ".readme-test-env"
    servers: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    timings: list[tuple[float, str]] = []
    try:
        for step in steps:
            if step.skipped:
                continue
            command = _substitute(step.command, subs)
            expected = [_substitute(line, subs) for line in step.expected]
            t0 = time.monotonic()
            if step.background:
                log = cwd / f".readme-test-server-{len(servers)}.log"
                with log.open("wb") as sink:
                    proc = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"],
                        cwd=cwd,
                        env=env,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                servers.append(proc)
                url = f"http://{subs.get('127.0.0.1:8080', '127.0.0.1:8080')}/healthz"
                deadline = time.monotonic() + 60
                while True:
                    assert proc.poll() is None, (
                        f"README.md:{step.line}: `{command}` exited:\n{log.read_text()}"
                    )
                    try:
                        with urllib.request.urlopen(url, timeout=1) as response:
                            if response.status == 200:
                                break
                    except OSError:
                        pass
                    assert time.monotonic() < deadline, (
                        f"README.md:{step.line}: no /healthz:\n{log.read_text()}"
                    )
                    time.sleep(0.2)
                output = log.read_text(encoding="utf-8", errors="replace")
            else:
                script = f'{command}\n__rc=$?\nenv -0 > "{envfile}"\nexit $__rc\n'
                result = subprocess.run(
                    ["bash", "-o", "pipefail", "-c", script],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=COMMAND_TIMEOUT_S,
                )
                output = result.stdout.decode("utf-8", errors="replace")
                assert result.returncode == 0, (
                    f"README.md:{step.line}: `{command}` exited {result.returncode}:\n{output}"
                )
                env = dict(item.split("=", 1) for item in envfile.read_text().split("\0") if "=" in item)
                for name in ("PWD", "OLDPWD", "SHLVL", "_"):
                    env.pop(name, None)
                exported = re.match(r"export ([A-Za-z_][A-Za-z0-9_]*)=", command)
                if exported:
                    assert env.get(exported.group(1)), f"README.md:{step.line}: {exported.group(1)} is empty"
            timings.append((time.monotonic() - t0, step.first_line))
            actual = [line.rstrip("\r") for line in output.splitlines()]
            if show:
                print(f"\n$ {command}\n{output}", end="")
            assert matches(expected, actual), (
                f"README.md:{step.line}: `{command}` printed\n"
                + "\n".join(actual)
                + "\n\nbut the README shows\n"
                + "\n".join(expected)
            )
    finally:
        for proc in servers:
            _stop(proc)
    if show:
        print(f"\n{time.monotonic() - started:.1f} s in all; slowest:")
        for seconds, line in sorted(timings, reverse=True)[:5]:
            print(f"  {seconds:5.1f} s  {line}")
