"""rag_context policy: query, hints, access control, injection, citations and failure modes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.chain import Chain
from gateway.config import Config
from gateway.config.rag import RagSettings
from gateway.errors import PolicyDenied
from gateway.policies.rag_context import HEADER, RagContext
from gateway.policy import Context
from gateway.rag.base import Hit, Query, StoreError
from gateway.rag.embedded import EmbeddedIndex
from gateway.rag.runtime import Rag
from gateway.services import Services
from tests.rag_support import EMBED, make_chunks

DOCS = [
    "Employees get thirty days of paid holiday per year.",
    "Expense reports are due on the fifth of each month.",
    "The office car park opens at seven in the morning.",
]
SETTINGS = RagSettings.model_validate({"collections": {"handbook": {"tenants": ["acme", "globex"]}}})


def ctx(tenant: str = "acme", **kw: Any) -> Context:
    principal = Principal(
        key_id="k", tenant=tenant, app="chat", models=frozenset({"*"}), scopes=frozenset({"chat"})
    )
    return Context(principal=principal, endpoint="chat", model="m", candidates=[], **kw)


def chat(text: str = "How many days of paid holiday do I get?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": text},
        ],
        **extra,
    }


@pytest.fixture
async def rag(tmp_path: Path) -> Rag:
    index = EmbeddedIndex(tmp_path)
    await index.upsert("handbook", make_chunks("acme", DOCS))
    await index.upsert("handbook", make_chunks("acme", DOCS[:1], source="copy.md"))  # a duplicate
    await index.upsert("handbook", make_chunks("globex", ["Globex: holiday is forty-five days."]))
    return Rag(SETTINGS, index, embedders={"mistral-embed": EMBED})


def policy(rag: Rag, **cfg: Any) -> RagContext:
    services = Services(config=Config.model_validate({"deployments": {}, "models": {}}))
    services.extras["rag"] = rag
    return RagContext(
        RagContext.Config.model_validate({"collection": "handbook", **cfg}),
        services=services,
    )


async def test_context_is_appended_to_the_system_message_with_citations(rag: Rag) -> None:
    c = ctx()
    out = await policy(rag, top_k=2).on_request(c, chat())
    system = out["messages"][0]
    assert system["role"] == "system"
    assert system["content"].startswith("Be brief.\n\n")
    assert "[1] (doc.md)\n" + DOCS[0] in system["content"]
    assert len(out["messages"]) == 4
    assert c.response_headers[HEADER].startswith(make_chunks("acme", DOCS[:1])[0].id + ";source=doc.md")
    decision = c.decisions[-1]
    assert decision.action == "injected"
    assert decision.facts["sources"][0] == "doc.md"
    assert decision.facts["duplicates"] == 1  # copy.md holds the same text and is injected once
    assert all(DOCS[0] not in str(v) for v in decision.facts.values())  # ids and counts, not text


async def test_placement_before_last_user_inserts_a_message_there(rag: Rag) -> None:
    out = await policy(rag, placement="before_last_user", role="user").on_request(ctx(), chat())
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "user", "user"]
    assert DOCS[0] in out["messages"][3]["content"]
    assert out["messages"][0]["content"] == "Be brief."


async def test_another_tenants_chunks_are_never_injected(rag: Rag) -> None:
    c = ctx("globex")
    out = await policy(rag, top_k=10).on_request(c, chat())
    injected = out["messages"][0]["content"]
    assert "forty-five" in injected
    assert all(doc not in injected for doc in DOCS)
    assert c.decisions[-1].facts["injected"] == 1


async def test_a_tenant_outside_the_collection_acl_gets_no_retrieval(rag: Rag) -> None:
    c = ctx("initech")
    request = chat()
    assert await policy(rag).on_request(c, request) == request
    assert c.decisions[-1].action == "denied"
    with pytest.raises(PolicyDenied) as exc:
        await policy(rag, failure="fail_closed").on_request(ctx("initech"), request)
    assert (exc.value.status, exc.value.code) == (403, "rag.collection_not_allowed")


async def test_residency_that_excludes_the_store_skips_retrieval(rag: Rag) -> None:
    c = ctx(allowed_jurisdictions=frozenset({"CH"}))
    request = chat()
    assert await policy(rag).on_request(c, request) == request
    assert c.decisions[-1].action == "residency"
    assert c.decisions[-1].facts["store_jurisdiction"] == "EU"
    with pytest.raises(PolicyDenied) as exc:
        await policy(rag, failure="fail_closed").on_request(
            ctx(allowed_jurisdictions=frozenset({"CH"})), request
        )
    assert exc.value.code == "rag.store_not_allowed"


async def test_max_context_tokens_caps_the_injected_text(rag: Rag) -> None:
    c = ctx()
    out = await policy(rag, top_k=3, max_context_tokens=40, template="{context}").on_request(c, chat())
    assert c.decisions[-1].facts["tokens"] <= 40
    assert c.decisions[-1].facts["injected"] < 3
    assert out["messages"][0]["content"].count("[") == c.decisions[-1].facts["injected"]


async def test_hints_override_the_query_and_are_never_forwarded(rag: Rag) -> None:
    c = ctx(rag_hints={"query": "car park opening time", "top_k": 1})
    out = await policy(rag, top_k=3).on_request(c, chat())
    assert "gateway_rag" not in out
    assert c.decisions[-1].facts["injected"] == 1
    assert DOCS[2] in out["messages"][0]["content"]
    off = await policy(rag).on_request(ctx(rag_hints={"enabled": False}), chat())
    assert "gateway_rag" not in off
    assert off["messages"][0]["content"] == "Be brief."


async def test_invalid_hints_and_unlisted_filters_are_rejected(rag: Rag) -> None:
    with pytest.raises(PolicyDenied) as exc:
        await policy(rag).on_request(ctx(rag_hints={"top_k": "many"}), chat())
    assert (exc.value.status, exc.value.code) == (400, "rag.invalid_hints")
    with pytest.raises(PolicyDenied) as exc:
        await policy(rag).on_request(ctx(rag_hints={"filters": {"tenant": "globex"}}), chat())
    assert exc.value.code == "rag.filter_not_allowed"
    allowed = policy(rag, request_filters=["source"], top_k=5)
    c = ctx(rag_hints={"filters": {"source": "copy.md"}})
    await allowed.on_request(c, chat())
    assert c.decisions[-1].facts["sources"] == ["copy.md"]


class _Broken:
    jurisdiction = "EU"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def search(self, collection: str, query: Query) -> list[Hit]:
        if self.delay:
            await asyncio.sleep(self.delay)
        raise StoreError("down")


async def test_fail_open_continues_without_context_and_records_the_error(rag: Rag) -> None:
    broken = Rag(SETTINGS, _Broken(), embedders=rag.embedders)  # type: ignore[arg-type]
    c = ctx()
    request = chat()
    assert await policy(broken).on_request(c, request) == request
    assert c.decisions[-1].action == "error"
    assert c.decisions[-1].facts["error"] == "StoreError"


async def test_fail_closed_answers_503_rag_unavailable_and_retrieval_has_its_own_timeout(rag: Rag) -> None:
    with pytest.raises(PolicyDenied) as exc:
        await policy(
            Rag(SETTINGS, _Broken(), embedders=rag.embedders),  # type: ignore[arg-type]
            failure="fail_closed",
        ).on_request(ctx(), chat())
    assert (exc.value.status, exc.value.code) == (503, "rag.unavailable")
    slow = Rag(SETTINGS, _Broken(delay=5), embedders=rag.embedders)  # type: ignore[arg-type]
    c = ctx()
    started = asyncio.get_running_loop().time()
    await policy(slow, timeout_ms=50).on_request(c, chat())
    assert asyncio.get_running_loop().time() - started < 1
    assert c.decisions[-1].action == "timeout"


async def test_shadow_mode_records_what_it_would_inject_without_changing_the_request(rag: Rag) -> None:
    c = ctx()
    request = chat()
    p = policy(rag)
    assert await Chain([p], shadow=[p]).start(c).request(request) == request
    assert c.decisions[-1].action == "would_injected"
    enforced = ctx()
    await p.on_request(enforced, chat())
    assert enforced.decisions[-1].action == "injected"
    timeless = [
        {k: v for k, v in d.facts.items() if k != "ms"} for d in (c.decisions[-1], enforced.decisions[-1])
    ]
    assert timeless[0] == timeless[1]  # the same retrieval, recorded, not injected
    assert HEADER not in c.response_headers


def test_config_rejects_unknown_keys_and_a_template_without_context() -> None:
    with pytest.raises(ValueError, match="topk"):
        RagContext.Config.model_validate({"collection": "handbook", "topk": 3})
    with pytest.raises(ValueError, match="context"):
        RagContext.Config.model_validate({"collection": "handbook", "template": "no placeholder"})
    assert all(f.description for f in RagContext.Config.model_fields.values())
