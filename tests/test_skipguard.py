"""Under CI=1 a skip that tests/allowed_skips.txt does not list fails the run; outside CI it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import skipguard

SKIPPING = """
import pytest

def test_runs():
    pass

def test_needs_a_tool():
    pytest.skip("tool missing")
"""


@pytest.fixture
def allow_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "allowed.txt"
    path.write_text("# header\n")
    monkeypatch.setattr(skipguard, "ALLOW_LIST", path)
    return path


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_sample=SKIPPING)
    return pytester.runpytest_inprocess("-p", "tests.skipguard", "-rs")


def test_an_unlisted_skip_fails_the_run_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, allow_list: Path
) -> None:
    monkeypatch.setenv("CI", "1")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*skipped under CI=1 and not in tests/allowed_skips.txt*", "test_sample.py::test_needs_a_tool"]
    )
    result.assert_outcomes(passed=1, skipped=1)


def test_a_listed_skip_passes_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, allow_list: Path
) -> None:
    monkeypatch.setenv("CI", "1")
    allow_list.write_text("test_sample.py::test_needs_*  # the tool is not packaged for this distribution\n")
    assert run(pytester).ret == pytest.ExitCode.OK


def test_outside_ci_a_skip_is_only_reported(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, allow_list: Path
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = run(pytester)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED*tool missing*"])


def test_an_allow_list_line_without_a_reason_is_refused(allow_list: Path) -> None:
    allow_list.write_text("tests/test_x.py::test_y\n")
    with pytest.raises(pytest.UsageError, match=r"allowed\.txt:1"):
        skipguard.allowed_skips()


def test_the_shipped_allow_list_gives_a_reason_for_every_entry() -> None:
    for pattern, reason in skipguard.allowed_skips().items():
        assert pattern.startswith("tests/"), (pattern, reason)
        assert len(reason) > 10, (pattern, reason)
