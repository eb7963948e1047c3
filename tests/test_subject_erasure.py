"""Erasure (GDPR Art. 17) and export (Art. 15) of a data subject, proven on the shipped configuration.

The proof: with config.yaml and policies/ as shipped, a subject consents, chats (on the EU path and
on the consent-gated US fallback: ledger, audit, write-ahead file), has documents ingested about
them and fills the caches. After ``POST /admin/subjects/{id}/erase`` every store is scanned for the
raw id and its pseudonym: every SQL table (SQLite and PostgreSQL), the SQLite files themselves, the
Redis keyspace, the vector store's files, the spool and write-ahead files, and every log record.
Nothing may be found; the ledger's rows (the cost) stay, and the audit chain still verifies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import Engine, inspect, text
from typer.testing import CliRunner

from gateway import audit, forgetting
from gateway.cli import app as cli
from gateway.config import Config, Storage
from gateway.dev import DevUpstream
from gateway.pii.analyzer import Analyzer
from gateway.rag.cli import run_ingest
from gateway.store.ledger import UsageRecord
from gateway.subjects.receipt import ReceiptError, verify
from tests.conftest import REDIS_URL, RunningGateway
from tests.test_shipped_bundle import (  # noqa: F401  (fixtures)
    PURPOSE,
    SHIPPED_POLICIES,
    _us_server,
    client,
    eu_down,
    grant,
    shipped_config_fixture,
    upstream_us_fixture,
)

SUBJECT = "emp-erase-7781"  # unique to this file: the PostgreSQL database is shared by the session


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("httpx", "httpcore")):
            return  # the test's own HTTP client, which logs the URLs it calls (the id is in the admin path)
        self.lines.append(f"{record.getMessage()} {record.__dict__!r} {record.exc_text or ''}")


@pytest.fixture
def logs() -> Iterator[_Captured]:
    handler, root = _Captured(), logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def _config(
    shipped: Config, tmp_path: Path, upstream: DevUpstream, database_url: str, redis_url: str | None
) -> Config:
    """The shipped config on this test's stores, its embeddings deployment on the loopback upstream."""
    deployments = dict(shipped.deployments)
    deployments["mistral-embed"] = deployments["mistral-embed"].model_copy(update={"base_url": upstream.url})
    storage = Storage(database_url=database_url, redis_url=redis_url, spool_dir=str(tmp_path / "spool"))
    rag = shipped.rag.model_copy(
        update={"embedded": shipped.rag.embedded.model_copy(update={"path": str(tmp_path / "rag-index")})}
    )
    return shipped.model_copy(update={"storage": storage, "rag": rag, "deployments": deployments})


def _admin(gw: RunningGateway, tenant: str = "ops", scope: str = "global_admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.key(tenant=tenant, app='admin', scopes=(scope,))}"}


def _chat(gw: RunningGateway, content: str) -> None:
    answer = client(gw).chat.completions.create(
        model="mistral-7b", user=SUBJECT, messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content


def _sql_rows(engine: Engine) -> str:
    """Every row of every table, as text."""
    out: list[str] = []
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            out.extend(repr(tuple(row)) for row in conn.execute(text(f'SELECT * FROM "{table}"')))
    return "\n".join(out)


def _redis_dump() -> str:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    out: list[str] = []
    for key in r.scan_iter(count=1000):
        kind: Any = r.type(key)
        read: Any = {b"string": r.get, b"hash": r.hgetall, b"set": r.smembers}.get(kind)
        value: Any = read(key) if read else r.lrange(key, 0, -1) if kind == b"list" else r.zrange(key, 0, -1)
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


def _files(*directories: Path) -> bytes:
    return b"".join(
        p.read_bytes() for d in directories if d.is_dir() for p in sorted(d.rglob("*")) if p.is_file()
    )


def _eventually(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while (value := fn()) is None:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def _held(gw: RunningGateway, **params: str) -> httpx.Response:
    return httpx.get(
        f"{gw.url}/admin/subjects/{SUBJECT}/export", headers=_admin(gw), params=params, timeout=30
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_erasure_leaves_no_trace_of_the_subject_in_any_store(
    backend: str,
    request: pytest.FixtureRequest,
    gateway_factory: Callable[..., RunningGateway],
    shipped_config: Config,
    tmp_path: Path,
    upstream: DevUpstream,
    upstream_b: DevUpstream,
    logs: _Captured,
) -> None:
    if backend == "sqlite":
        config = _config(shipped_config, tmp_path, upstream, f"sqlite:///{tmp_path / 'gw.db'}", None)
    else:
        config = _config(
            shipped_config, tmp_path, upstream, request.getfixturevalue("postgres_url"), REDIS_URL
        )
    gw = gateway_factory(config, SHIPPED_POLICIES)
    pseudonym = gw.gateway.pseudonym(SUBJECT)
    secrets = (SUBJECT.encode(), pseudonym.encode())

    # The subject's data in every layer: consent, documents about them, requests on both paths.
    grant(gw, subject=SUBJECT)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "leave.md").write_text("Parental leave request, filed in March, approved by the manager.")
    (docs / "review.md").write_text("Annual review: exceeds expectations in every objective.")
    run_ingest(config, docs, "hr", "hr_handbook", SUBJECT, [], 200, 20, 16)
    _chat(gw, f"I am {SUBJECT}: how much parental leave do I have left?")  # the raw id in a prompt too
    eu_down(upstream, upstream_b)
    _chat(gw, f"Employee {SUBJECT} asks about the review.")  # the US fallback, under the consent
    upstream.reset()
    upstream_b.reset()

    def export_all() -> dict[str, Any] | None:  # rows reach SQL within the writer's flush interval
        resp = _held(gw, tenant="hr")
        assert resp.status_code == 200, resp.text
        out: dict[str, Any] = resp.json()
        return out if len(out["usage"]) == 2 and len(out["decisions"]) == 2 else None

    exported = _eventually(export_all)
    assert [c["purpose"] for c in exported["consents"]] == [PURPOSE]
    assert [u["deployment"] for u in exported["usage"]] == ["mistral-7b-selfhosted", "openai-gpt4"]
    assert [d["jurisdiction"] for d in exported["decisions"]] == ["EU", "US"]
    assert sorted(d["source"] for d in exported["documents"]) == ["leave.md", "review.md"]
    analyzers = [h for h in list(forgetting._HOLDERS) if isinstance(h, Analyzer) and h._cache]
    assert analyzers, "the PII analyzer cached the prompts"

    resp = httpx.post(
        f"{gw.url}/admin/subjects/{SUBJECT}/erase", headers=_admin(gw), params={"tenant": "hr"}, timeout=60
    )
    assert resp.status_code == 200, resp.text
    receipt = resp.json()
    assert verify(resp.content, config.server.secret_key) == receipt
    layers = receipt["layers"]
    assert layers["consents"] == 1
    assert layers["ledger_rows_unlinked"] == 2
    assert layers["audit_records_unlinked"] == 2
    assert layers["subject_keys_deleted"] >= 1
    assert layers["rag_chunks"] == 2
    assert receipt["tenant"] == "hr"
    assert receipt["bundle_hash"] == gw.gateway.bundle.current.hash
    tampered = orjson.dumps({**receipt, "layers": {**layers, "consents": 0}})
    with pytest.raises(ReceiptError, match="does not match"):
        verify(tampered, config.server.secret_key)

    # Nothing of the subject anywhere.
    engine = gw.gateway.engine
    stores = {
        "SQL tables": _sql_rows(engine).encode(),
        "vector store files": _files(tmp_path / "rag-index"),
        "spool and write-ahead files": _files(tmp_path / "spool"),
        "logs": "\n".join(logs.lines).encode(),
    }
    if backend == "sqlite":
        stores["SQLite files"] = _files(tmp_path).replace(_files(tmp_path / "docs"), b"")  # not the sources
    else:
        stores["Redis keyspace"] = _redis_dump().encode()
    found = {name: [i for i, s in enumerate(secrets) if s in data] for name, data in stores.items()}
    assert found == {name: [] for name in stores}, "0: the raw id, 1: the pseudonym"
    assert all(not h._cache for h in analyzers), "the analyzer caches were emptied"

    # What must stay: the cost in the ledger, an audit chain that verifies, and the erasure's own record.
    requests = [u["request_id"] for u in exported["usage"]]
    with engine.connect() as conn:
        kept = conn.execute(
            text(f"SELECT request_id, subject, cost_eur FROM {UsageRecord.__tablename__} WHERE tenant = 'hr'")
        ).all()
    assert sorted((r, subject) for r, subject, _ in kept if r in requests) == sorted(
        (r, None) for r in requests
    )
    checked, problems = audit.verify(engine, config.server.secret_key)
    chain = gw.gateway.auditor.chain_id  # the PostgreSQL database holds other tests' (tampered) chains too
    assert [p for p in problems if chain in p] == []
    assert checked >= 2

    def erasure_record() -> Any:
        with engine.connect() as conn:
            return conn.execute(
                text("SELECT endpoint, decisions, subject FROM audit_records WHERE request_id = :id"),
                {"id": receipt["job_id"]},
            ).one_or_none()

    endpoint, decisions, subject = _eventually(erasure_record)
    assert (endpoint, subject) == ("erasure", None)
    assert orjson.loads(decisions) == [{"policy": "erasure", "action": "done", "facts": layers}]
    # Erased is erased: nothing left to export or erase.
    assert _held(gw, tenant="hr").status_code == 404
    again = httpx.post(
        f"{gw.url}/admin/subjects/{SUBJECT}/erase", headers=_admin(gw), params={"tenant": "hr"}, timeout=30
    )
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "subject_not_found"


# --- the command line, tenants, bad input ----------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path: Path, upstream: DevUpstream) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""
deployments:
  eu-primary: {{kind: openai_compatible, base_url: "{upstream.url}", model: m, jurisdiction: EU, region: fr-par}}
models:
  mistral-7b: {{deployments: [eu-primary]}}
storage: {{database_url: "sqlite:///{tmp_path / "gw.db"}", spool_dir: "{tmp_path / "spool"}"}}
server: {{policies_dir: "{tmp_path / "policies"}", secret_key: erasure-cli-secret}}
rag: {{embedded: {{path: "{tmp_path / "rag-index"}"}}}}
"""
    )
    return path


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def _consent(config: Path, tenant: str, subject: str = SUBJECT) -> None:
    granted = _run(
        "consent", "grant", "--tenant", tenant, "--subject", subject, "--purpose", PURPOSE, "-c", str(config)
    )
    assert granted.exit_code == 0, granted.output


def test_cli_erases_one_tenant_only_and_its_receipt_verifies_until_changed(
    cli_config: Path, tmp_path: Path
) -> None:
    _consent(cli_config, "hr")
    _consent(cli_config, "sales")  # the same person (same id) in another tenant: not theirs to erase
    exported = _run("subject", "export", "--tenant", "hr", "--subject", SUBJECT, "-c", str(cli_config))
    assert exported.exit_code == 0, exported.output
    assert [c["purpose"] for c in orjson.loads(exported.stdout)["consents"]] == [PURPOSE]

    receipt_file = tmp_path / "receipt.json"
    erased = _run(
        "subject",
        "erase",
        "--tenant",
        "hr",
        "--subject",
        SUBJECT,
        "--receipt",
        str(receipt_file),
        "-c",
        str(cli_config),
    )
    assert erased.exit_code == 0, erased.output
    assert orjson.loads(erased.stdout)["layers"]["consents"] == 1
    ok = _run("subject", "verify-receipt", str(receipt_file), "-c", str(cli_config))
    assert ok.exit_code == 0, ok.output
    assert "valid" in ok.output

    # The other tenant keeps its consent; the first has nothing left.
    assert (
        _run("subject", "export", "--tenant", "sales", "--subject", SUBJECT, "-c", str(cli_config)).exit_code
        == 0
    )
    gone = _run("subject", "export", "--tenant", "hr", "--subject", SUBJECT, "-c", str(cli_config))
    assert gone.exit_code == 1
    assert "nothing is held" in gone.output
    verified = _run("audit", "verify", "-c", str(cli_config))
    assert verified.exit_code == 0, verified.output  # the erasure's own record, in a closed chain
    assert "1 records checked, 0 problems" in verified.output
    again = _run("subject", "erase", "--tenant", "hr", "--subject", SUBJECT, "-c", str(cli_config))
    assert again.exit_code == 1  # idempotent: nothing to do, nothing written
    assert "1 records checked" in _run("audit", "verify", "-c", str(cli_config)).output

    # A changed, malformed or foreign-signed receipt fails with the reason.
    receipt = orjson.loads(receipt_file.read_bytes())
    cases = {
        "changed": orjson.dumps({**receipt, "tenant": "sales"}),
        "not JSON": b"{not json",
        "no signature": orjson.dumps({k: v for k, v in receipt.items() if k != "signature"}),
        "not a receipt": b"[1, 2]",
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(raw)
        bad = _run("subject", "verify-receipt", str(path), "-c", str(cli_config))
        assert bad.exit_code == 1, name
        assert "invalid" in bad.output, name
    other = tmp_path / "other.yaml"
    other.write_text(cli_config.read_text().replace("erasure-cli-secret", "another-secret"))
    assert _run("subject", "verify-receipt", str(receipt_file), "-c", str(other)).exit_code == 1
    assert (
        _run("subject", "verify-receipt", str(tmp_path / "missing.json"), "-c", str(cli_config)).exit_code
        == 2
    )


def test_cli_refuses_an_empty_or_oversized_subject(cli_config: Path) -> None:
    for subject in ("", "x" * 257):
        result = _run("subject", "erase", "--tenant", "hr", "--subject", subject, "-c", str(cli_config))
        assert result.exit_code == 2


def test_admin_erasure_is_bounded_by_the_key_tenant(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    from tests.conftest import make_config

    gw = gateway_factory(make_config(upstream))
    for tenant in ("hr", "sales"):
        resp = httpx.post(
            f"{gw.url}/admin/consents",
            headers=_admin(gw),
            json={"tenant": tenant, "subject_id": SUBJECT, "purpose": PURPOSE},
        )
        assert resp.status_code == 201
    sales_admin = _admin(gw, tenant="sales", scope="admin")
    url = f"{gw.url}/admin/subjects/{SUBJECT}/erase"
    foreign = httpx.post(url, headers=sales_admin, params={"tenant": "hr"}, timeout=30)
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "admin.tenant_forbidden"
    no_tenant = httpx.post(url, headers=_admin(gw), timeout=30)  # a global admin must name one
    assert no_tenant.status_code == 400
    assert no_tenant.json()["error"]["param"] == "tenant"
    unknown = httpx.post(f"{gw.url}/admin/subjects/nobody-here/erase", headers=sales_admin, timeout=30)
    assert unknown.status_code == 404
    too_long = httpx.post(f"{gw.url}/admin/subjects/{'x' * 300}/erase", headers=sales_admin, timeout=30)
    assert too_long.status_code == 400
    chat_key = {"Authorization": f"Bearer {gw.key(tenant='sales')}"}
    assert httpx.post(url, headers=chat_key, timeout=30).status_code == 403
    assert httpx.get(f"{gw.url}/admin/subjects/{SUBJECT}/export", headers=chat_key).status_code == 403
    # Nothing changed by the refusals: both consents are there; the tenant admin erases its own.
    listed = httpx.get(f"{gw.url}/admin/consents", headers=_admin(gw), params={"subject_id": SUBJECT}).json()
    assert sorted(c["tenant"] for c in listed) == ["hr", "sales"]
    # The body forms keep the raw id out of the URL, under the same rules.
    named = f"{gw.url}/admin/subjects"
    body = {"subject_id": SUBJECT}
    refused = httpx.post(f"{named}/erase", headers=sales_admin, json={**body, "tenant": "hr"}, timeout=30)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "admin.tenant_forbidden")
    unnamed = httpx.post(f"{named}/export", headers=_admin(gw), json=body, timeout=30)
    assert (unnamed.status_code, unnamed.json()["error"]["param"]) == (400, "tenant")
    for bad in ({"subject_id": "x" * 300}, {"subject_id": ""}, {**body, "extra": 1}, {}):
        assert httpx.post(f"{named}/erase", headers=sales_admin, json=bad, timeout=30).status_code == 400
    assert httpx.post(f"{named}/erase", headers=chat_key, json=body, timeout=30).status_code == 403
    nobody = httpx.post(
        f"{named}/export", headers=sales_admin, json={"subject_id": "nobody-here"}, timeout=30
    )
    assert nobody.status_code == 404
    exported = httpx.post(f"{named}/export", headers=sales_admin, json=body, timeout=30)
    assert exported.status_code == 200
    by_path = httpx.get(f"{gw.url}/admin/subjects/{SUBJECT}/export", headers=sales_admin).json()
    assert {**exported.json(), "generated_at": None} == {**by_path, "generated_at": None}
    assert exported.json()["consents"]
    own = httpx.post(
        f"{named}/erase", headers=sales_admin, json=body, timeout=30
    )  # its own tenant by default
    assert own.status_code == 200, own.text
    assert own.json()["tenant"] == "sales"
    assert SUBJECT not in own.request.url.path
    listed = httpx.get(f"{gw.url}/admin/consents", headers=_admin(gw), params={"subject_id": SUBJECT}).json()
    assert [c["tenant"] for c in listed] == ["hr"]


def test_running_workers_forget_within_two_seconds_of_an_erasure_starting(
    gateway_factory: Callable[..., RunningGateway], upstream: DevUpstream
) -> None:
    from sqlmodel import Session

    from gateway.store.db import SubjectErasure
    from tests.conftest import make_config

    gw = gateway_factory(make_config(upstream))
    chat = openai_client(gw)
    chat.chat.completions.create(
        model="mistral-7b", user=SUBJECT, messages=[{"role": "user", "content": "hi"}]
    )
    subjects = gw.gateway.subjects
    assert subjects._keys, "the worker made a key for the subject"
    _eventually(lambda: subjects._erasures is not None or None)  # its watcher has polled once
    with Session(gw.gateway.engine) as s:  # what another process's erasure job writes first
        s.add(SubjectErasure(id="job-from-elsewhere", tenant="acme"))
        s.commit()
    started = time.monotonic()
    _eventually(lambda: (not subjects._keys) or None, timeout_s=2.0)
    assert time.monotonic() - started <= 2.0


def openai_client(gw: RunningGateway) -> Any:
    import openai

    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)


def test_an_interrupted_erasure_is_resumed_and_its_counts_kept(
    cli_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.subjects import held

    _consent(cli_config, "hr")
    real = held.writer_rows
    calls = []

    def crash_once(*args: Any) -> int:
        calls.append(args)
        if len(calls) == 1:
            raise OSError("disk went away")
        return real(*args)

    monkeypatch.setattr(held, "writer_rows", crash_once)
    first = _run("subject", "erase", "--tenant", "hr", "--subject", SUBJECT, "-c", str(cli_config))
    assert first.exit_code != 0
    assert isinstance(first.exception, OSError)
    # The consent is already gone; the job is open. Running it again finishes it with the counts so far.
    second = _run("subject", "erase", "--tenant", "hr", "--subject", SUBJECT, "-c", str(cli_config))
    assert second.exit_code == 0, second.output
    assert orjson.loads(second.stdout)["layers"]["consents"] == 1
    from sqlalchemy import create_engine

    url = f"sqlite:///{cli_config.parent / 'gw.db'}"
    with create_engine(url).connect() as conn:
        jobs = conn.execute(text("SELECT target, finished_at FROM subject_erasures")).all()
    assert len(jobs) == 1
    assert jobs[0][0] is None  # the resume handle is cleared when the job finishes
    assert jobs[0][1] is not None
