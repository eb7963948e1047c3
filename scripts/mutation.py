"""Mutation testing of the modules that carry the gateway's promises (issue #18, docs/testing.md).

    make mutation                                  # every module in [tool.mutmut] only_mutate
    make mutation MODULES="gateway/pii/stream.py"  # one module: minutes, not hours

mutmut 3 (pinned in the dev extra) copies the tree to mutants/, records once which tests reach
each function, and then runs, for each mutant, only the tests that reach its function. Each module
runs in its own work directory (.mutation/<module>/) against the test files that are about it
(TESTS below): a function such as ``Writer.put`` is reached by nearly every test of the suite, and
running them all for each of its mutants would take hours. The score is therefore what the
module's own tests kill. The shared mutmut settings are ``[tool.mutmut]`` in pyproject.toml.

The script prints each module's score and its surviving mutants, and fails when a module is
under the bar or a survivor is not explained in docs/testing.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
BAR = 0.90
KILLED = {"killed", "timeout", "caught by type check"}

# The test files about each module: what must kill its mutants.
TESTS: dict[str, list[str]] = {
    "gateway/pii/actions.py": [
        "test_pii_policy",
        "test_pii_presidio_parity",
        "test_pii_placeholders",
        "test_regressions",
        "test_request_fields",
        "test_pii_gateway",
    ],
    "gateway/pii/stream.py": [
        "test_pii_stream",
        "test_stream_shapes",
        "test_pii_gateway",
        "test_pii_policy",
        "test_dev_echo",
    ],
    "gateway/pii/texts.py": [
        "test_pii_texts",
        "test_request_fields",
        "test_pii_policy",
        "test_pii_gateway",
        "test_regressions",
        "test_stream_shapes",
    ],
    "gateway/pii/placeholders.py": [
        "test_pii_placeholders",
        "test_pii_stream",
        "test_stream_shapes",
        "test_pii_gateway",
        "test_regressions",
    ],
    "gateway/audit.py": [
        "test_audit_chain",
        "test_writer_wal",
        "test_regressions",
        "test_admin_surface",
        "test_retention",
    ],
    "gateway/store/writer.py": [
        "test_writer",
        "test_writer_wal",
        "test_writer_paths",
        "test_regressions",
        "test_storage",
    ],
    "gateway/store/wal.py": [
        "test_writer",
        "test_writer_wal",
        "test_writer_paths",
        "test_regressions",
        "test_storage",
    ],
    "gateway/store/spool.py": [
        "test_writer",
        "test_writer_wal",
        "test_writer_paths",
        "test_regressions",
        "test_storage",
    ],
    "gateway/store/rows.py": [
        "test_writer",
        "test_writer_wal",
        "test_writer_paths",
        "test_regressions",
        "test_storage",
        "test_retention",
    ],
    "gateway/subjects/receipt.py": ["test_subject_erasure"],
    "gateway/store/subject_keys.py": ["test_subject_erasure", "test_audit_chain", "test_accounting_policy"],
    "gateway/retention.py": ["test_retention"],
    "gateway/responses/request.py": ["test_responses_bridge", "test_responses", "test_responses_shipped"],
    "gateway/responses/answer.py": ["test_responses_bridge", "test_responses"],
    "gateway/responses/stream.py": ["test_responses_bridge", "test_responses"],
    "gateway/responses/native_request.py": [
        "test_responses_wire",
        "test_responses_native",
        "test_responses_shipped",
    ],
    "gateway/responses/native_answer.py": ["test_responses_wire", "test_responses_native"],
    "gateway/upstreams/native.py": ["test_responses_wire", "test_responses_native"],
    "gateway/policies/consent_fallback.py": [
        "test_routing_policies",
        "test_consent_cases",
        "test_policy_residency",
        "test_shipped_bundle",
        "test_property_residency",
        "test_rag_pii_ordering",
    ],
    "gateway/policies/residency.py": [
        "test_routing_policies",
        "test_policy_residency",
        "test_consent_cases",
        "test_property_residency",
        "test_shipped_bundle",
    ],
    "gateway/accounting/limits.py": [
        "test_accounting_limits",
        "test_accounting_policy",
        "test_two_gateways",
        "test_accounting_lease",
    ],
    "gateway/accounting/lease.py": [
        "test_accounting_lease",
        "test_accounting_policy",
        "test_two_gateways",
        "test_counters",
    ],
    "gateway/bundle/files.py": [
        "test_bundle_errors",
        "test_layering",
        "test_property_layering",
        "test_policy_cli",
        "test_chain",
        "test_config",
    ],
    "gateway/bundle/parse.py": [
        "test_bundle_errors",
        "test_layering",
        "test_property_layering",
        "test_policy_cli",
        "test_chain",
        "test_config",
    ],
    "gateway/bundle/model.py": [
        "test_bundle_errors",
        "test_layering",
        "test_property_layering",
        "test_policy_cli",
        "test_chain",
        "test_config",
    ],
    "gateway/chain.py": [
        "test_chain",
        "test_routing_policies",
        "test_pii_policy",
        "test_rag_context",
        "test_policy_residency",
    ],
}


def listed_modules() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return list(config["only_mutate"])


def dotted(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def workdir(module: str) -> Path:
    return WORK / dotted(module)


def prepare(module: str, fresh: bool) -> Path:
    """A copy of the tree (tracked and untracked files, not ignored ones) whose [tool.mutmut]
    mutates only ``module`` and selects only its tests. Unchanged files keep their mtime, so
    mutmut reuses its results for functions that did not change unless ``fresh``."""
    work = workdir(module)
    if fresh and work.exists():
        shutil.rmtree(work)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        source, target = ROOT / name, work / name
        if source.is_file() and (not target.exists() or target.stat().st_mtime != source.stat().st_mtime):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pyproject = (ROOT / "pyproject.toml").read_text()
    head, _, rest = pyproject.partition("[tool.mutmut]")
    tail = rest[m.start() :] if (m := re.search(r"^\[", rest, flags=re.M)) else ""
    shared = rest[: len(rest) - len(tail)]
    shared = re.sub(r"^only_mutate = \[.*?\]\n", "", shared, flags=re.M | re.S)
    shared = re.sub(r"^pytest_add_cli_args_test_selection = .*\n", "", shared, flags=re.M)
    selection = json.dumps([f"tests/{name}.py" for name in TESTS[module]])
    (work / "pyproject.toml").write_text(
        f"{head}{tail}\n[tool.mutmut]{shared}only_mutate = {json.dumps([module])}\n"
        f"pytest_add_cli_args_test_selection = {selection}\n"
    )
    retry_survivors(work / "mutants" / f"{module}.meta")
    return work


def retry_survivors(meta: Path) -> None:
    """mutmut keeps a mutant's result while its function is unchanged, even when a test changed:
    forget every result but a kill, so that survivors meet the tests as they are now."""
    if not meta.exists():
        return
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    for name, code in codes.items():
        if status_by_exit_code[code] not in KILLED:
            codes[name] = None
    meta.write_text(json.dumps(data))


def statuses(module: str) -> dict[str, str]:
    meta = workdir(module) / "mutants" / f"{module}.meta"
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in exit_codes.items()}


def explained_survivors(module: str) -> str:
    """The text of docs/testing.md's sections about ``module`` (headings ``#### <module path>``): a
    survivor counts as explained only in its own module's section, not because a name alike is
    explained for another module."""
    path = ROOT / "docs" / "testing.md"
    text = path.read_text() if path.exists() else ""
    sections = re.split(r"(?m)^(?=#### )", text)
    return "".join(s for s in sections if re.match(rf"#### `?{re.escape(module)}`?(?![\w/.])", s))


def report(module: str, explained: str) -> tuple[bool, list[str]]:
    if not (workdir(module) / "mutants" / f"{module}.meta").exists():
        print(f"{module}: not run yet in this checkout (make mutation MODULES={module})")
        return False, []
    by_name = statuses(module)
    counts = Counter(by_name.values())
    total = len(by_name)
    killed = sum(n for status, n in counts.items() if status in KILLED)
    score = killed / total if total else 1.0
    survivors = sorted(name for name, status in by_name.items() if status not in KILLED)
    unexplained = [
        name for name in survivors if not re.search(re.escape(name.rpartition(".")[2]) + r"(?!\d)", explained)
    ]
    others = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()) if status not in KILLED)
    print(f"{module}: {killed}/{total} killed = {score:.1%}" + (f" ({others})" if others else ""))
    for name in survivors:
        note = "" if name in unexplained else f"   (explained under #### {module} in docs/testing.md)"
        print(f"    {by_name[name]:>10}  {name}{note}")
    return score >= BAR, unexplained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "modules", nargs="*", help="module paths, e.g. gateway/pii/stream.py (default: all listed)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="print the last run's results without running"
    )
    parser.add_argument("--fresh", action="store_true", help="forget earlier results (after a test change)")
    args = parser.parse_args(argv)
    listed = listed_modules()
    modules = args.modules or listed
    unknown = [m for m in modules if m not in listed]
    if unknown:
        parser.error(f"not in [tool.mutmut] only_mutate: {', '.join(unknown)}")
    if not args.report_only:
        for module in modules:
            print(f"== {module}: mutmut run against {', '.join(TESTS[module])}", flush=True)
            subprocess.run(
                [sys.executable, "-m", "mutmut", "run"], cwd=prepare(module, args.fresh), check=True
            )
    failed = []
    for module in modules:
        meets_bar, unexplained = report(module, explained_survivors(module))
        if not meets_bar or unexplained:
            failed.append(module)
    if failed:
        print(
            f"under the {BAR:.0%} bar or with survivors not explained in docs/testing.md: {', '.join(failed)}"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
