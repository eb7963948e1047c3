"""End to end: `gateway rag ingest`, then the OpenAI SDK through a real gateway with rag_context,
embeddings through the gateway's own path to the loopback upstream, for each vector store."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from typer.testing import CliRunner

import gateway.policies.rag_context  # noqa: F401  (registers the policy)
from gateway.cli import app as cli
from gateway.config import Config, load_config
from gateway.dev import DevUpstream
from tests.conftest import RunningGateway
from tests.rag_support import fake_weaviate_fixture  # noqa: F401
from tests.weaviate_fake import FakeWeaviate

LEAVE = "Holiday policy: every employee gets thirty days of paid leave per calendar year."
EXPENSES = "Expense policy: submit receipts within five working days through the finance portal."


def write_config(tmp_path: Path, upstream: DevUpstream, rag: dict[str, Any]) -> Path:
    data = {
        "deployments": {
            "eu-chat": {
                "kind": "openai_compatible",
                "base_url": upstream.url,
                "model": "mistral-7b-instruct",
                "jurisdiction": "EU",
                "region": "fr-par",
            },
            "eu-embed": {
                "kind": "openai_compatible",
                "base_url": upstream.url,
                "model": "mistral-embed",
                "jurisdiction": "EU",
                "region": "fr-par",
            },
        },
        "models": {
            "mistral-7b": {"deployments": ["eu-chat"]},
            "mistral-embed": {"type": "embeddings", "deployments": ["eu-embed"]},
        },
        "storage": {"database_url": f"sqlite:///{tmp_path / 'gateway.db'}"},
        "server": {"policies_dir": str(tmp_path / "none"), "secret_key": "test-secret", "key_refresh_s": 0.5},
        "rag": {
            "embedding_model": "mistral-embed",
            "collections": {"handbook": {"tenants": ["acme"]}},
            **rag,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def write_policy(tmp_path: Path, **cfg: Any) -> Path:
    path = tmp_path / "bundle.yaml"
    section = {"collection": "handbook", "top_k": 2, **cfg}
    path.write_text(
        yaml.safe_dump(
            {"version": 1, "tenants": {"acme": {"rag_context": section}, "globex": {"rag_context": section}}}
        )
    )
    return path


@pytest.fixture(params=["embedded", "weaviate"])
def rag_section(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    if request.param == "embedded":
        return {"backend": "embedded", "embedded": {"path": str(tmp_path / "index")}}
    fake: FakeWeaviate = request.getfixturevalue("fake_weaviate")
    fake.reset()
    return {
        "backend": "weaviate",
        "weaviate": {"url": fake.url, "grpc_port": fake.grpc_port, "jurisdiction": "EU", "region": "fr-par"},
    }


def ingest(config: Path, docs: Path, *extra: str) -> Any:
    return CliRunner().invoke(
        cli,
        [
            "rag",
            "ingest",
            "--tenant",
            "acme",
            "--collection",
            "handbook",
            "--config",
            str(config),
            *extra,
            str(docs),
        ],
    )


def test_ingested_documents_are_injected_and_cited_through_the_openai_sdk(
    tmp_path: Path,
    upstream: DevUpstream,
    rag_section: dict[str, Any],
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    docs = tmp_path / "docs"
    (docs / "hr").mkdir(parents=True)
    (docs / "hr" / "leave.md").write_text(LEAVE)
    (docs / "expenses.md").write_text(EXPENSES)
    config_path = write_config(tmp_path, upstream, rag_section)

    first = ingest(config_path, docs)
    assert first.exit_code == 0, first.output
    # one embeddings call per file, through the gateway's own path to the configured deployment
    assert [r.path for r in upstream.received] == ["/v1/embeddings"] * 2
    again = ingest(config_path, docs)
    assert again.exit_code == 0
    assert len(upstream.received) == 2
    upstream.reset()

    config: Config = load_config(config_path)
    gw = gateway_factory(config, policies=write_policy(tmp_path))
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(tenant="acme"), max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-7b",
        messages=[{"role": "user", "content": "How many days of leave do I get?"}],
        extra_body={"gateway_rag": {"top_k": 2}},
    )
    assert raw.parse().choices[0].message.content == upstream.reply
    sources = raw.headers["x-gateway-rag-sources"]
    assert "source=hr/leave.md" in sources
    assert "source=expenses.md" in sources

    embed_call, chat_call = upstream.received
    assert embed_call.path == "/v1/embeddings"
    assert embed_call.body["input"] == ["How many days of leave do I get?"]
    body = chat_call.body
    assert "gateway_rag" not in body
    assert body["messages"][0]["role"] == "system"
    assert LEAVE in body["messages"][0]["content"]
    assert EXPENSES in body["messages"][0]["content"]
    assert body["messages"][-1] == {"role": "user", "content": "How many days of leave do I get?"}
    assert "x-gateway-rag-sources" not in str(raw.parse().choices[0].message.content)

    # The Responses API (bridged to chat) gets the same context, beside its instructions.
    upstream.reset()
    answered = client.responses.with_raw_response.create(
        model="mistral-7b",
        instructions="Answer in one sentence.",
        input="How many days of leave do I get?",
        extra_body={"gateway_rag": {"top_k": 2}},
    )
    assert answered.parse().output_text == upstream.reply
    assert "source=hr/leave.md" in answered.headers["x-gateway-rag-sources"]
    _, chat_call = upstream.received
    system = " ".join(m["content"] for m in chat_call.body["messages"] if m["role"] == "system")
    assert LEAVE in system
    assert "Answer in one sentence." in system
    assert "gateway_rag" not in chat_call.body
    assert chat_call.body["messages"][-1] == {"role": "user", "content": "How many days of leave do I get?"}

    # globex is not in the collection's ACL: no retrieval, no citation, the request still works.
    other = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(tenant="globex"), max_retries=0)
    raw = other.chat.completions.with_raw_response.create(
        model="mistral-7b", messages=[{"role": "user", "content": "How many days of leave do I get?"}]
    )
    assert "x-gateway-rag-sources" not in raw.headers
    assert all(LEAVE not in str(m) for m in upstream.received[-1].body["messages"])


def test_fail_closed_policy_answers_503_when_the_store_is_down(
    tmp_path: Path,
    upstream: DevUpstream,
    fake_weaviate: FakeWeaviate,
    gateway_factory: Callable[..., RunningGateway],
) -> None:
    fake_weaviate.reset()
    config_path = write_config(
        tmp_path,
        upstream,
        {
            "backend": "weaviate",
            "weaviate": {
                "url": fake_weaviate.url,
                "grpc_port": fake_weaviate.grpc_port,
                "jurisdiction": "EU",
                "region": "x",
            },
        },
    )
    gw = gateway_factory(
        load_config(config_path), policies=write_policy(tmp_path, failure="fail_closed", timeout_ms=3000)
    )
    fake_weaviate.fail = True
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(tenant="acme"), max_retries=0)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "leave?"}])
    assert exc.value.status_code == 503
    assert exc.value.code == "rag.unavailable"
    assert all(r.path != "/v1/chat/completions" for r in upstream.received)


def test_ingestion_stores_only_the_subject_pseudonym_and_erasure_deletes_it(
    tmp_path: Path,
    upstream: DevUpstream,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "case.md").write_text("Case file: the employee asked for parental leave in March.")
    (docs / "blob.bin").write_bytes(b"\x00\x01binary")
    config_path = write_config(tmp_path, upstream, {"embedded": {"path": str(tmp_path / "index")}})
    result = ingest(config_path, docs, "--subject-id", "alice@example.com", "--meta", "lang=en")
    assert result.exit_code == 0, result.output
    db = tmp_path / "index" / "index.sqlite3"
    subject, metadata = sqlite3.connect(db).execute("SELECT subject, metadata FROM chunks").fetchone()
    from gateway.app import Gateway

    assert subject == Gateway(load_config(config_path)).pseudonym("alice@example.com")
    assert b"alice@example.com" not in db.read_bytes()
    assert b'"lang":"en"' in metadata

    def delete(tenant: str) -> str:
        erased = CliRunner().invoke(
            cli,
            [
                "rag",
                "delete-subject",
                "--tenant",
                tenant,
                "--subject-id",
                "alice@example.com",
                "--config",
                str(config_path),
            ],
        )
        assert erased.exit_code == 0
        return erased.output

    assert "deleted 0 chunks" in delete("globex")  # another tenant's subject of the same id
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 1
    assert "deleted 1 chunks" in delete("acme")
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM chunks").fetchone()[0] == 0
    assert subject.encode() not in b"".join(p.read_bytes() for p in db.parent.iterdir())  # no page left


def test_ingestion_refuses_a_tenant_outside_the_collection_acl(tmp_path: Path, upstream: DevUpstream) -> None:
    config_path = write_config(tmp_path, upstream, {"embedded": {"path": str(tmp_path / "index")}})
    result = CliRunner().invoke(
        cli,
        [
            "rag",
            "ingest",
            "--tenant",
            "globex",
            "--collection",
            "handbook",
            "--config",
            str(config_path),
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert not upstream.received
