"""`gateway usage report` sums the ledger per model, app or deployment."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlmodel import Session
from typer.testing import CliRunner

from gateway.cli import app
from gateway.store.db import make_engine, upgrade, utcnow
from gateway.store.ledger import UsageRecord

CONFIG = """
deployments:
  eu: {kind: openai_compatible, base_url: "http://127.0.0.1:1/v1", model: m, jurisdiction: EU, region: fr-par}
models:
  m: {deployments: [eu]}
storage: {database_url: "sqlite:///DB"}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    upgrade(url)
    engine = make_engine(url)
    now = utcnow()
    rows = [
        ("r1", "chat", "mistral-7b", "0.0100000000", 0),
        ("r2", "chat", "mistral-7b", "0.0200000000", 1),
        ("r3", "hr", "gpt-4o", "0.5000000000", 2),
        ("old", "chat", "mistral-7b", "9", 40),
    ]
    with Session(engine) as s:
        for rid, app_, model, cost, days in rows:
            s.add(
                UsageRecord(
                    request_id=rid,
                    at=now - timedelta(days=days),
                    tenant="acme",
                    app=app_,
                    key_id="k",
                    model=model,
                    deployment="eu",
                    jurisdiction="EU",
                    prompt_tokens=10,
                    completion_tokens=5,
                    cost_eur=Decimal(cost),
                    estimated=rid == "r2",
                )
            )
        s.add(
            UsageRecord(
                request_id="other", tenant="globex", app="x", key_id="k", model="m", cost_eur=Decimal(1)
            )
        )
        s.commit()
    engine.dispose()
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace("DB", str(db)))
    return path


def test_usage_report_groups_by_model_within_the_window(config: Path) -> None:
    result = CliRunner().invoke(
        app, ["usage", "report", "--tenant", "acme", "--since", "30d", "--csv", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "model,requests,prompt_tokens,completion_tokens,cost_eur,estimated",
        "gpt-4o,1,10,5,0.500000,0",
        "mistral-7b,2,20,10,0.030000,1",
    ]


def test_usage_report_by_app_prints_a_table_with_the_total(config: Path) -> None:
    result = CliRunner().invoke(
        app, ["usage", "report", "--tenant", "acme", "--by", "app", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "hr" in result.output
    assert "total" in result.output
    assert "0.530000" in result.output


def test_usage_report_rejects_a_bad_window(config: Path) -> None:
    result = CliRunner().invoke(
        app, ["usage", "report", "--tenant", "acme", "--since", "a month", "-c", str(config)]
    )
    assert result.exit_code == 2
