"""Regression tests for breaks that once left the whole suite green (issue #18, "Tests that bite").

Each test names the break it kills:

* PHONE_NUMBER not redacted: ``test_phone_numbers_never_reach_an_eu_hop_under_the_shipped_bundle``
  and ``test_every_structured_type_the_shipped_bundle_redacts_is_redacted_end_to_end``. The DPA floor
  redacts phones on the consented US hop whatever the entity map says, so only an EU hop shows it.
* legacy ``function_call`` arguments not scanned (``gateway/pii/texts.py``):
  ``test_legacy_function_call_arguments_in_the_answer_are_scanned`` (output scanning) and
  ``test_stream_shapes.py::test_legacy_function_call_arguments_in_an_answer_are_restored``; the request
  side (an assistant message's ``function_call`` in the history) is
  ``test_legacy_function_call_arguments_in_the_history_are_redacted``.
* streamed tool-call arguments not restored (``gateway/pii/stream.py``): tests/test_stream_shapes.py.
* ``Writer._recover_claimed`` doing nothing:
  ``test_a_spool_file_claimed_by_a_replayer_that_died_is_replayed_at_the_next_start``.
* ``decisions`` left out of the audit hash, and the ``prev_hash`` link check removed from
  ``audit.verify``: tests/test_audit_chain.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from sqlalchemy import Engine

from gateway.dev import DevUpstream
from gateway.store.writer import Writer
from tests.conftest import RunningGateway, make_config
from tests.pii_values import CARD, EMAIL, EU_SENTENCES, IBAN
from tests.test_writer import _count, _row

REPO = Path(__file__).resolve().parent.parent
SHIPPED_POLICIES = REPO / "policies"

# One valid, detectable value per structured type, in a sentence giving the context words the
# weakly validated types need (BSN's shipped threshold is 0.9: only "BSN" nearby reaches it).
SAMPLES: dict[str, tuple[str, str]] = {
    "EMAIL_ADDRESS": ("Write to {} today.", EMAIL),
    "PHONE_NUMBER": ("Call me on {} tomorrow.", "+49 30 12345678"),
    "IBAN_CODE": ("Refund to IBAN {} please.", IBAN),
    "CREDIT_CARD": ("My card is {} thanks.", CARD),
    "IP_ADDRESS": ("The server at {} was accessed.", "192.168.17.42"),
    "DE_TAX_ID": ("Meine Steuer-ID ist {} bitte.", "36574261809"),
    "FR_NIR": ("Mon numéro de sécurité sociale est {} merci.", "2 95 10 99 126 111 93"),
    "IT_FISCAL_CODE": ("Il codice fiscale è {} grazie.", "RCCMNL83S18D969H"),
    "ES_NIF": ("Mi DNI es {} gracias.", "54362315K"),
    "ES_NIE": ("El NIE de mi esposa es {} gracias.", "X2482300W"),
    "NL_BSN": ("Mijn BSN is {} dank.", "111222333"),
    "PL_PESEL": ("Mój PESEL to {} dzięki.", "44051401359"),
    "DATE_OF_BIRTH": ("Herr Weber ist geboren am {} in Köln.", "12.03.1985"),
}
BLOCKED_SAMPLES = {"US_SSN": ("My SSN is {} thanks.", "078-05-1120")}
# Irreversible actions: the client gets the masked form back, not the value.
IRREVERSIBLE = ("mask", "hash")


def shipped_entities() -> dict[str, str]:
    """The shipped bundle's default entity map: type -> action."""
    doc = yaml.safe_load((SHIPPED_POLICIES / "bundle.yaml").read_text())
    entities = doc["defaults"]["pii_redaction"]["entities"]
    return {
        name: rule if isinstance(rule, str) else rule.get("action", "redact")
        for name, rule in entities.items()
    }


@pytest.fixture(scope="module")
def _echo_server() -> Iterator[DevUpstream]:
    server = DevUpstream(echo=True).start()
    yield server
    server.stop()


@pytest.fixture
def echo(_echo_server: DevUpstream) -> Iterator[DevUpstream]:
    """An upstream that echoes the last user message (placeholders included) for the gateway to restore."""
    _echo_server.reset()
    yield _echo_server
    _echo_server.reset()


def client(gw: RunningGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0, timeout=30)


def spellings(value: str) -> set[str]:
    return {value, value.replace(" ", ""), value.replace(" ", "").replace("-", "").replace(".", "")}


def last_sent(upstream: DevUpstream) -> str:
    return json.dumps(upstream.received[-1].body, ensure_ascii=False)


# --- PHONE_NUMBER and every shipped type, end to end on an EU hop --------------------------------


@pytest.fixture
def shipped(gateway_factory: Callable[..., RunningGateway], echo: DevUpstream) -> RunningGateway:
    """A gateway with the repository's policies/ as shipped; acme/chat gets the defaults, on an EU deployment."""
    return gateway_factory(make_config(echo), SHIPPED_POLICIES)


def test_phone_numbers_never_reach_an_eu_hop_under_the_shipped_bundle(
    shipped: RunningGateway, echo: DevUpstream
) -> None:
    phones = [
        value
        for _, labels in EU_SENTENCES
        for kind, value in labels
        if kind == "PHONE_NUMBER" and value.startswith("+")
    ]
    assert len(phones) >= 5
    prompt = "Please call " + ", or call ".join(phones) + "."
    answer = (
        client(shipped)
        .chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": prompt}])
        .choices[0]
        .message.content
        or ""
    )
    sent = last_sent(echo)
    for phone in phones:
        for spelling in spellings(phone):
            assert spelling not in sent
    for n in range(1, len(phones) + 1):
        assert f"<PHONE_NUMBER_{n}>" in sent
    assert f"echoed for the gateway to restore: {prompt}" in answer  # the client gets its numbers back


def ask(sdk: openai.OpenAI, prompt: str, *, stream: bool) -> str:
    messages: list[Any] = [{"role": "user", "content": prompt}]
    if stream:
        chunks = sdk.chat.completions.create(model="mistral-7b", messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return sdk.chat.completions.create(model="mistral-7b", messages=messages).choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_every_structured_type_the_shipped_bundle_redacts_is_redacted_end_to_end(
    shipped: RunningGateway, echo: DevUpstream, stream: bool
) -> None:
    actions = shipped_entities()
    redacting = {e for e, a in actions.items() if a in ("redact", "mask", "hash")}
    # A type added to the shipped bundle needs a sample here; one dropped from it fails here too.
    assert set(SAMPLES) == redacting
    assert {e for e, a in actions.items() if a == "block"} == set(BLOCKED_SAMPLES)
    sdk = client(shipped)
    failures = []
    for entity, (sentence, value) in SAMPLES.items():
        prompt = sentence.format(value)
        answer = ask(sdk, prompt, stream=stream)
        sent = last_sent(echo)
        if any(s in sent for s in spellings(value)):
            failures.append(f"{entity}: the upstream saw the value")
        if actions[entity] == "redact":
            if f"<{entity}_1>" not in sent:
                failures.append(f"{entity}: no placeholder upstream")
            if f"echoed for the gateway to restore: {prompt}" not in answer:
                failures.append(f"{entity}: the value was not restored in the answer")
        elif actions[entity] == "mask" and "*" * 4 not in sent:
            failures.append(f"{entity}: not masked")
    assert failures == []
    for entity, (sentence, value) in BLOCKED_SAMPLES.items():
        calls = len(echo.received)
        with pytest.raises(openai.BadRequestError) as exc:
            sdk.chat.completions.create(
                model="mistral-7b", messages=[{"role": "user", "content": sentence.format(value)}]
            )
        assert exc.value.code == "pii.blocked"
        assert entity in exc.value.message
        assert len(echo.received) == calls


# --- legacy function_call --------------------------------------------------------------------------


def start(
    factory: Callable[..., RunningGateway], upstream: DevUpstream, tmp_path: Path, policy: str
) -> RunningGateway:
    path = tmp_path / "pii.yaml"
    path.write_text(policy)
    return factory(make_config(upstream), policies=path)


def test_legacy_function_call_arguments_in_the_history_are_redacted(
    gateway_factory: Callable[..., RunningGateway], echo: DevUpstream, tmp_path: Path
) -> None:
    gw = start(
        gateway_factory,
        echo,
        tmp_path,
        "version: 1\ndefaults:\n  pii_redaction:\n    entities: {EMAIL_ADDRESS: redact, IBAN_CODE: redact}\n",
    )
    client(gw).chat.completions.create(
        model="mistral-7b",
        functions=[{"name": "send"}],
        messages=[
            {"role": "user", "content": "Pay my landlord."},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "send", "arguments": json.dumps({"to": EMAIL, "iban": IBAN})},
            },
            {"role": "function", "name": "send", "content": f"paid from {IBAN}"},
            {"role": "user", "content": "Thanks."},
        ],
    )
    body = echo.received[-1].body
    args = json.loads(body["messages"][1]["function_call"]["arguments"])
    assert args == {"to": "<EMAIL_ADDRESS_1>", "iban": "<IBAN_CODE_1>"}
    assert body["messages"][2]["content"] == "paid from <IBAN_CODE_1>"
    assert not any(s in last_sent(echo) for s in (*spellings(EMAIL), *spellings(IBAN)))


def test_legacy_function_call_arguments_in_the_answer_are_scanned(
    gateway_factory: Callable[..., RunningGateway], echo: DevUpstream, tmp_path: Path
) -> None:
    # The EU hop may see the address, but answers are scanned: the model's function_call echoes it back.
    policy = """
version: 1
defaults:
  pii_redaction:
    entities:
      EMAIL_ADDRESS: {action: redact, jurisdictions: {EU: allow}}
    output: {enabled: true, action: mask}
"""
    gw = start(gateway_factory, echo, tmp_path, policy)
    echo.legacy_function_call = True
    completion = client(gw).chat.completions.create(
        model="mistral-7b",
        functions=[{"name": "send"}],
        messages=[{"role": "user", "content": f"Mail {EMAIL} now"}],
    )
    assert EMAIL in last_sent(echo)  # allowed to the EU hop, so the echo really carries it back
    call = completion.choices[0].message.function_call
    assert call is not None
    assert call.name == "send"
    echoed = json.loads(call.arguments)["echo"]
    assert EMAIL not in echoed
    assert echoed.startswith("Mail ***")
    assert echoed.endswith(".de now")


# --- the writer recovers files a dead replayer claimed ---------------------------------------------


def _claimed_file(engine: Engine, spool: Path, ids: list[str]) -> Path:
    """A spool file as ``Writer.replay`` leaves it when its process dies mid-replay: renamed to
    ``*.replaying`` (claimed), its lock gone with the process, its rows not yet inserted."""
    spool.mkdir(parents=True, exist_ok=True)
    dead = Writer(engine, spool)
    path = spool / f"{dead._id}.jsonl.{uuid.uuid4().hex[:8]}.replaying"
    path.write_bytes(b"".join(dead._line(_row(i)) for i in ids))
    return path


async def _wait_for(engine: Engine, ids: list[str], n: int, within_s: float = 3.0) -> int:
    for _ in range(int(within_s / 0.02)):
        if _count(engine, ids) >= n:
            break
        await asyncio.sleep(0.02)
    return _count(engine, ids)


async def test_a_spool_file_claimed_by_a_replayer_that_died_is_replayed_at_the_next_start(
    sqlite_engine: Engine, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    ids = [uuid.uuid4().hex for _ in range(3)]
    claimed = _claimed_file(sqlite_engine, spool, ids)
    writer = Writer(sqlite_engine, spool, flush_interval_s=0.02)
    await writer.start()
    try:
        assert await _wait_for(sqlite_engine, ids, 3) == 3
    finally:
        await writer.stop()
    assert not claimed.exists()
    assert not list(spool.glob("*.replaying"))
    assert not writer.spooled_files()


async def test_a_file_a_live_replayer_holds_is_left_to_it(sqlite_engine: Engine, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ids = [uuid.uuid4().hex for _ in range(2)]
    claimed = _claimed_file(sqlite_engine, spool, ids)
    with open(claimed, "rb") as held:  # noqa: ASYNC230 (a lock held on purpose, not I/O)
        fcntl.flock(held, fcntl.LOCK_EX)  # a replayer in another process is working on it
        writer = Writer(sqlite_engine, spool, flush_interval_s=0.02)
        await writer.start()
        try:
            assert await _wait_for(sqlite_engine, ids, 1, within_s=0.5) == 0
            assert claimed.exists()
        finally:
            await writer.stop()
    assert claimed.exists()  # still the live replayer's; a later start takes it once the lock is gone
    later = Writer(sqlite_engine, spool, flush_interval_s=0.02)
    await later.start()
    try:
        assert await _wait_for(sqlite_engine, ids, 2) == 2
    finally:
        await later.stop()
