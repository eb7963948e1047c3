"""A skip cannot hide in CI: under CI=1 every skipped test must be listed, with a reason, in
tests/allowed_skips.txt, or the run fails (issue #18). Loaded from conftest.py as a plugin."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

import pytest

ALLOW_LIST = Path(__file__).with_name("allowed_skips.txt")


def allowed_skips(path: Path | None = None) -> dict[str, str]:
    """Node-id patterns (fnmatch) to their reasons. A line is `<pattern>  # <reason>`; a pattern
    without a reason is an error, so that nothing is allowed to skip without saying why."""
    path = path or ALLOW_LIST
    allowed: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pattern, _, reason = line.partition("#")
        if not pattern.strip() or not reason.strip():
            raise pytest.UsageError(f"{path.name}:{number}: write `<node id pattern>  # <reason>`")
        allowed[pattern.strip()] = reason.strip()
    return allowed


def hidden(skipped: list[str], allowed: dict[str, str]) -> list[str]:
    return [nodeid for nodeid in skipped if not any(fnmatch.fnmatchcase(nodeid, p) for p in allowed)]


class SkipGuard:
    def __init__(self) -> None:
        self.skipped: list[str] = []

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if not os.environ.get("CI"):
            return
        unlisted = hidden(self.skipped, allowed_skips())
        if unlisted:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            reporter = session.config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_sep("=", "skipped under CI=1 and not in tests/allowed_skips.txt", red=True)
                for nodeid in unlisted:
                    reporter.write_line(nodeid)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipGuard(), "gateway-skip-guard")
