"""The development upstream shows a newcomer what the gateway did: what the model saw, and the client's text back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import openai

from gateway.dev import DevUpstream, embed
from tests.conftest import RunningGateway, make_config

EMAIL, IBAN = "jane.doe@example.com", "DE89370400440532013000"


def test_the_echo_shows_placeholders_upstream_and_the_client_gets_its_own_text_back(
    gateway_factory: Callable[..., RunningGateway], tmp_path: Path
) -> None:
    echo = DevUpstream(echo=True).start()
    try:
        policies = tmp_path / "p"
        policies.mkdir()
        (policies / "bundle.yaml").write_text(
            "version: 1\ndefaults:\n  pii_redaction:\n    entities: {EMAIL_ADDRESS: redact, IBAN_CODE: redact}\n"
        )
        gw = gateway_factory(make_config(echo), policies)
        client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
        prompt = f"Mail {EMAIL} about the refund to {IBAN}."
        for stream in (False, True):
            if stream:
                answer = "".join(
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(
                        model="mistral-7b", messages=[{"role": "user", "content": prompt}], stream=True
                    )
                    if c.choices
                )
            else:
                answer = (
                    client.chat.completions.create(
                        model="mistral-7b", messages=[{"role": "user", "content": prompt}]
                    )
                    .choices[0]
                    .message.content
                    or ""
                )
            assert (
                "Last user message as it arrived here: Mail «EMAIL_ADDRESS_1» about the refund to «IBAN_CODE_1»."
                in answer
            )
            assert f"The same, echoed for the gateway to restore: {prompt}" in answer
        received = echo.received[-1].body["messages"][-1]["content"]
        assert EMAIL not in received
        assert IBAN not in received
    finally:
        echo.stop()


def test_development_embeddings_put_related_text_near() -> None:
    def cos(a: str, b: str) -> float:
        return sum(x * y for x, y in zip(embed(a, 256), embed(b, 256), strict=True))

    question = "How many days of annual leave do employees get?"
    assert cos(question, "Employees get 30 days of annual leave per year.") > 2 * cos(
        question, "Travel expenses are reimbursed within two weeks."
    )
    assert embed("same text", 16) == embed("same text", 16)
    assert abs(sum(v * v for v in embed("x", 16)) - 1) < 1e-4
