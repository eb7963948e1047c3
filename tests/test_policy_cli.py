"""`gateway policy check | test | explain` and `gateway audit verify`, through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

CONFIG = """\
deployments:
  eu:
    kind: openai_compatible
    base_url: http://127.0.0.1:1/v1
    model: m
    jurisdiction: EU
    region: fr
  us-gpt4:
    kind: openai_compatible
    base_url: http://127.0.0.1:1/v1
    model: gpt-4o
    jurisdiction: US
    region: us
    dpa: true
models:
  chat:
    deployments: [eu]
storage:
  database_url: sqlite:///{db}
server:
  policies_dir: {policies}
"""
BUNDLE = """\
version: 1
defaults:
  residency:
    allow: [EU]
tenants:
  hr:
    apps:
      bot:
        consent_fallback:
          target: us-gpt4
        pii_redaction:
          entities: {EMAIL_ADDRESS: redact}
"""
CASES = """\
cases:
  - name: hr bot stays in the EU
    request: {tenant: hr, app: bot, model: chat, subject: alice}
    expect: {deployment: eu, decisions: [{policy: residency, action: allow}]}
  - name: consented subject falls back to GPT-4 when the EU model fails
    request: {tenant: hr, app: bot, model: chat, subject: alice}
    consents: [llm_fallback_gpt4]
    fail: [eu]
    expect: {deployment: us-gpt4}
  - name: this case is wrong on purpose
    request: {tenant: hr, app: bot, model: chat}
    fail: [eu]
    expect: {deployment: us-gpt4}
"""


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "bundle.yaml").write_text(BUNDLE)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(db=tmp_path / "gw.db", policies=policies))
    return config, policies


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_policy_check_passes_a_consistent_bundle(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 0, out


def test_policy_check_names_file_line_and_path_of_a_bad_jurisdiction(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle.yaml").write_text(BUNDLE.replace("[EU]", "[EUR]"))
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 2
    assert f"{policies / 'bundle.yaml'}:4: defaults.residency.allow[0]: unknown jurisdiction 'EUR'" in out


def test_policy_check_flags_unknown_deployments_and_contradictions(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle.yaml").write_text(BUNDLE.replace("target: us-gpt4", "target: gpt-5"))
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 1 and "unknown deployment 'gpt-5'" in out
    (policies / "bundle.yaml").write_text(BUNDLE.replace("target: us-gpt4", "target: us-gpt4\n          require_consent: false"))
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 1 and "contradiction" in out and "bundle.yaml:8: tenants.hr.apps.bot" in out


def test_policy_test_prints_pass_and_fail_with_file_and_line(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle_test.yaml").write_text(CASES)
    code, out = invoke("policy", "test", "--config", str(config))
    assert code == 1
    assert f"PASS {policies / 'bundle_test.yaml'}:2: hr bot stays in the EU" in out
    assert f"PASS {policies / 'bundle_test.yaml'}:5: consented subject" in out
    assert f"FAIL {policies / 'bundle_test.yaml'}:10: this case is wrong on purpose" in out
    assert "expected deployment 'us-gpt4'" in out and "2 passed, 1 failed" in out


def test_policy_explain_prints_decisions_and_route_without_sending(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = invoke("policy", "explain", "--config", str(config), "--tenant", "hr", "--app", "bot",
                       "--model", "chat", "--subject", "alice", "--consent", "llm_fallback_gpt4", "--fail", "eu")
    assert code == 0, out
    assert "consent_fallback" in out and "eligible" in out
    assert "tried eu: upstream_5xx" in out and "routed to us-gpt4 (US)" in out


def test_shipped_policy_bundle_passes_check_and_its_tests() -> None:
    for command in (["policy", "check"], ["policy", "test"]):
        result = subprocess.run([sys.executable, "-m", "gateway.cli_main", *command], cwd=ROOT,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_audit_verify_detects_modified_and_deleted_records(setup: tuple[Path, Path]) -> None:
    from sqlalchemy import text

    from gateway import audit
    from gateway.auth import Principal
    from gateway.policy import Context
    from gateway.store.db import make_engine, upgrade

    config, _ = setup
    url = f"sqlite:///{config.parent / 'gw.db'}"
    upgrade(url)
    engine = make_engine(url)
    auditor = audit.Auditor(writer=None)
    rows = []
    for i in range(4):
        ctx = Context(principal=Principal("k", "hr", "bot", frozenset(), frozenset()), endpoint="chat",
                      model="chat", candidates=[])
        ctx.status = 200
        ctx.record("residency", "allow", n=i)
        rows.append(auditor.build(ctx))
    from gateway.store.writer import Writer

    Writer(engine, config.parent / "spool")._write(rows)  # the path the gateway's rows take
    assert invoke("audit", "verify", "--config", str(config))[0] == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET status = 403 WHERE seq = 2"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1 and "seq 2" in out and "modified" in out
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET status = 200 WHERE seq = 2"))
        conn.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1 and "records 3..3 are missing" in out


def test_audit_verify_sees_a_lost_tail_once_the_chain_is_closed_and_lists_open_chains(
        setup: tuple[Path, Path]) -> None:
    from sqlalchemy import text

    from gateway import audit
    from gateway.auth import Principal
    from gateway.policy import Context
    from gateway.store.db import make_engine, upgrade
    from gateway.store.writer import Writer

    config, _ = setup
    url = f"sqlite:///{config.parent / 'gw.db'}"
    upgrade(url)
    engine = make_engine(url)

    class Rows:
        def __init__(self) -> None:
            self.rows: list[Any] = []

        def put(self, row: Any) -> None:
            self.rows.append(row)

    sink = Rows()
    auditor = audit.Auditor(writer=sink)
    auditor.start()
    for _ in range(3):
        ctx = Context(principal=Principal("k", "hr", "bot", frozenset(), frozenset()), endpoint="chat",
                      model="chat", candidates=[])
        ctx.status = 200
        auditor.record(ctx)
    Writer(engine, config.parent / "spool")._write(sink.rows)
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 0 and f"open chain {auditor.chain_id}" in out and "after seq 3" in out
    auditor.close()
    Writer(engine, config.parent / "spool")._write(sink.rows[-1:])
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 0 and "open chain" not in out, out
    with engine.begin() as conn:  # the newest record is gone: nothing after it links to it, the end mark does
        conn.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1 and "records 3..3 are missing (end of chain)" in out
