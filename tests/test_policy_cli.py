"""`gateway policy check | test | explain`, `audit verify | show`, the list commands and `serve --dev`, through the CLI."""

from __future__ import annotations

import os
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


def test_errors_are_printed_as_written_even_when_they_look_like_markup(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle.yaml").write_text(BUNDLE.replace("allow: [EU]", "allow: [EU]\n    '[bold]x': 1"))
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 2, out
    assert "defaults.residency.[bold]x: unknown key" in out, out


def test_policy_check_flags_unknown_deployments_and_contradictions(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle.yaml").write_text(BUNDLE.replace("target: us-gpt4", "target: gpt-5"))
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 1
    assert "unknown deployment 'gpt-5'" in out
    (policies / "bundle.yaml").write_text(
        BUNDLE.replace("target: us-gpt4", "target: us-gpt4\n          require_consent: false")
    )
    code, out = invoke("policy", "check", "--config", str(config))
    assert code == 1
    assert "contradiction" in out
    assert "bundle.yaml:8: tenants.hr.apps.bot" in out


def test_policy_test_prints_pass_and_fail_with_file_and_line(setup: tuple[Path, Path]) -> None:
    config, policies = setup
    (policies / "bundle_test.yaml").write_text(CASES)
    code, out = invoke("policy", "test", "--config", str(config))
    assert code == 1
    assert f"PASS {policies / 'bundle_test.yaml'}:2: hr bot stays in the EU" in out
    assert f"PASS {policies / 'bundle_test.yaml'}:5: consented subject" in out
    assert f"FAIL {policies / 'bundle_test.yaml'}:10: this case is wrong on purpose" in out
    assert "expected deployment 'us-gpt4'" in out
    assert "2 passed, 1 failed" in out


def test_policy_explain_prints_decisions_and_route_without_sending(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    code, out = invoke(
        "policy",
        "explain",
        "--config",
        str(config),
        "--tenant",
        "hr",
        "--app",
        "bot",
        "--model",
        "chat",
        "--subject",
        "alice",
        "--consent",
        "llm_fallback_gpt4",
        "--fail",
        "eu",
    )
    assert code == 0, out
    assert "consent_fallback" in out
    assert "eligible" in out
    assert "tried eu: upstream_5xx" in out
    assert "routed to us-gpt4 (US)" in out


def test_shipped_policy_bundle_passes_check_and_its_tests() -> None:
    for command in (["policy", "check"], ["policy", "test"]):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli_main", *command], cwd=ROOT, capture_output=True, text=True
        )
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
        ctx = Context(
            principal=Principal("k", "hr", "bot", frozenset(), frozenset()),
            endpoint="chat",
            model="chat",
            candidates=[],
        )
        ctx.status = 200
        ctx.record("residency", "allow", n=i)
        rows.append(auditor.build(ctx))
    from gateway.store.writer import Writer

    Writer(engine, config.parent / "spool")._write(rows)  # the path the gateway's rows take
    assert invoke("audit", "verify", "--config", str(config))[0] == 0
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET status = 403 WHERE seq = 2"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1
    assert "seq 2" in out
    assert "modified" in out
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET status = 200 WHERE seq = 2"))
        conn.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1
    assert "records 3..3 are missing" in out


def test_audit_verify_sees_a_lost_tail_once_the_chain_is_closed_and_lists_open_chains(
    setup: tuple[Path, Path],
) -> None:
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
        ctx = Context(
            principal=Principal("k", "hr", "bot", frozenset(), frozenset()),
            endpoint="chat",
            model="chat",
            candidates=[],
        )
        ctx.status = 200
        auditor.record(ctx)
    Writer(engine, config.parent / "spool")._write(sink.rows)
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 0
    assert f"open chain {auditor.chain_id}" in out
    assert "after seq 3" in out
    auditor.close()
    Writer(engine, config.parent / "spool")._write(sink.rows[-1:])
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 0, out
    assert "open chain" not in out, out
    with engine.begin() as conn:  # the newest record is gone: nothing after it links to it, the end mark does
        conn.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    code, out = invoke("audit", "verify", "--config", str(config))
    assert code == 1
    assert "records 3..3 are missing (end of chain)" in out


def _audit_rows(config: Path, n: int = 1) -> list[str]:
    from gateway import audit
    from gateway.auth import Principal
    from gateway.policy import Context
    from gateway.store.db import make_engine, upgrade
    from gateway.store.writer import Writer

    url = f"sqlite:///{config.parent / 'gw.db'}"
    upgrade(url)
    auditor = audit.Auditor(writer=None)
    rows = []
    for i in range(n):
        ctx = Context(
            principal=Principal("k", "hr", "bot", frozenset(), frozenset()),
            endpoint="chat",
            model="chat",
            candidates=[],
        )
        ctx.status = 200
        ctx.record("residency", "allow", allowed=["EU"], n=i)
        ctx.attempts.append(("eu", "ok"))
        rows.append(auditor.build(ctx))
    Writer(make_engine(url), config.parent / "spool")._write(rows)
    return [row.request_id for row in rows]


def test_audit_show_prints_decisions_and_attempts_as_nested_json(setup: tuple[Path, Path]) -> None:
    import json

    config, _ = setup
    [request_id] = _audit_rows(config)
    code, out = invoke("audit", "show", request_id, "--config", str(config))
    assert code == 0, out
    record = json.loads(out)
    assert list(record)[:3] == ["request_id", "chain_id", "seq"]
    assert record["request_id"] == request_id
    assert record["decisions"] == [
        {"policy": "residency", "action": "allow", "facts": {"allowed": ["EU"], "n": 0}}
    ]
    assert record["attempts"] == [["eu", "ok"]]


def test_keys_consents_and_usage_list_whole_ids_as_columns_or_json(setup: tuple[Path, Path]) -> None:
    import json

    config, _ = setup
    c = ("--config", str(config))
    key = runner.invoke(
        app,
        [
            "keys",
            "create",
            "--tenant",
            "hr",
            "--app",
            "a-rather-long-app-name-for-a-table",
            "--models",
            "mistral-7b,mistral-embed",
            "--scopes",
            "chat,embeddings",
            *c,
        ],
    )
    assert key.exit_code == 0, key.output
    key_id = key.stdout.strip()[len("sk-gw-") :].partition("-")[0]
    code, out = invoke("keys", "list", *c)
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["key", "id", "tenant"]
    assert out.splitlines()[1].split()[:3] == [
        key_id,
        "hr",
        "a-rather-long-app-name-for-a-table",
    ]  # never cut
    [row] = json.loads(invoke("keys", "list", "--json", *c)[1])
    assert row["key_id"] == key_id
    assert row["models"] == ["mistral-7b", "mistral-embed"]
    assert row["revoked_at"] is None
    assert "secret_hash" not in row

    code, out = invoke("keys", "revoke", key.stdout.strip(), *c)  # the key itself works as well as its id
    assert code == 0
    assert out.strip() == f"revoked {key_id}"
    assert json.loads(invoke("keys", "list", "--json", *c)[1])[0]["revoked_at"]

    code, out = invoke(
        "consent",
        "grant",
        "--tenant",
        "hr",
        "--subject",
        "emp-1",
        "--purpose",
        "llm_fallback_gpt4",
        "--evidence",
        "hr-ticket-4711",
        *c,
    )
    consent_id = out.split()[-1]
    code, out = invoke("consent", "list", *c)
    assert code == 0
    assert out.splitlines()[1].split()[0] == consent_id
    assert "hr-ticket-4711" in out
    [row] = json.loads(invoke("consent", "list", "--json", "--tenant", "hr", *c)[1])
    assert row["id"] == consent_id
    assert len(row["subject"]) == 32
    assert row["withdrawn_at"] is None
    assert json.loads(invoke("usage", "report", "--tenant", "hr", "--json", *c)[1]) == []


def test_config_check_warns_about_deployments_without_a_key_or_an_endpoint(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup
    monkeypatch.delenv("EU_KEY", raising=False)
    text = config.read_text().replace("    model: m\n", "    model: m\n    api_key: ${EU_KEY:-}\n", 1)
    config.write_text(
        text.replace(
            "    base_url: http://127.0.0.1:1/v1\n    model: gpt-4o",
            "    base_url: ''\n    api_key: k\n    model: gpt-4o",
        )
    )
    code, out = invoke("config", "check", "--config", str(config))
    assert code == 0, out
    assert (
        f"warning {config}:6: deployments.eu.api_key is empty (EU_KEY is not set); serve --dev sends it"
        in out
    )
    assert "deployments.us-gpt4.base_url is empty; serve --dev sends it to the development upstream" in out
    assert "us-gpt4.api_key" not in out
    assert out.splitlines()[-1].startswith("ok: 2 deployments")


def test_serve_dev_points_deployments_without_credentials_at_the_development_upstream(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli import serve as cli
    from gateway.config import load_config
    from gateway.store.db import upgrade

    config, _ = setup
    config.write_text(
        config.read_text().replace(
            "deployments:\n",
            """deployments:
  keyed:
    kind: openai_compatible
    base_url: https://api.example.invalid/v1
    api_key: ${KEYED_KEY:-}
    model: m
    jurisdiction: EU
    region: fr
  mine:
    kind: openai_compatible
    base_url: ${MINE_URL:-http://127.0.0.1:1/v1}
    model: m
    jurisdiction: EU
    region: fr
  azure:
    kind: azure_openai
    base_url: https://name.openai.azure.com
    model: gpt-4o
    jurisdiction: EU
    region: swedencentral
""",
            1,
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEYED_KEY", "sk-real")
    monkeypatch.setenv("MINE_URL", "http://vllm.internal:8000/v1")  # the operator's own keyless server
    monkeypatch.setenv("GATEWAY_CONFIG", str(config))
    upgrade(f"sqlite:///{config.parent / 'gw.db'}")  # what serve does first
    upstream = cli._start_dev(config, load_config(config), 0, "http://127.0.0.1:8080/v1")
    try:
        effective = load_config(tmp_path / ".gateway" / "dev-config.yaml")
        assert Path(os.environ["GATEWAY_CONFIG"]) == (tmp_path / ".gateway" / "dev-config.yaml").resolve()
        d = effective.deployments
        assert d["eu"].base_url == d["us-gpt4"].base_url == upstream.url
        assert d["eu"].api_key == ""
        assert (
            d["azure"].base_url == upstream.base
        )  # Azure paths /openai/deployments/<name>/... answered there
        assert d["keyed"].base_url == "https://api.example.invalid/v1"
        assert d["keyed"].api_key == "sk-real"
        assert d["mine"].base_url == "http://vllm.internal:8000/v1"
        assert (
            "sk-real" not in (tmp_path / ".gateway" / "dev-config.yaml").read_text()
        )  # references stay references
    finally:
        upstream.stop()


def test_serve_dev_reuses_its_key_while_it_is_valid(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import auth
    from gateway.cli import serve as cli
    from gateway.store.db import make_engine, upgrade

    config, _ = setup
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{config.parent / 'gw.db'}"
    upgrade(url)
    engine = make_engine(url)
    key, reused = cli._dev_key(engine)
    assert not reused
    assert (tmp_path / ".gateway" / "dev-key").read_text().strip() == key
    assert (tmp_path / ".gateway" / "dev-key").stat().st_mode & 0o077 == 0
    assert cli._dev_key(engine) == (key, True)
    key_id = key[len(auth.PREFIX) :].partition("-")[0]
    row = auth.get_key(engine, key_id)
    assert row is not None
    assert (row.tenant, row.app) == ("dev", "dev")
    assert "global_admin" in row.scopes
    auth.revoke_key(engine, key_id)
    fresh, reused = cli._dev_key(engine)
    assert not reused
    assert fresh != key
    assert (tmp_path / ".gateway" / "dev-key").read_text().strip() == fresh
    # A key in the file that this database knows with other rights is revoked and replaced.
    other, _ = auth.create_key(engine, tenant="hr", app="bot", models=["*"], scopes=["chat"])
    (tmp_path / ".gateway" / "dev-key").write_text(other)
    replaced, reused = cli._dev_key(engine)
    assert not reused
    assert replaced not in (other, fresh)
    assert auth.get_key(engine, other[len(auth.PREFIX) :].partition("-")[0]).revoked_at is not None  # type: ignore[union-attr]
