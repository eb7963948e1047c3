"""The development upstream's Responses API (``POST /v1/responses``), as OpenAI and Azure serve it.

A gateway deployment with ``supports: [responses]`` sends here. The request is checked against
the gateway's own Responses allow-list (so a body the gateway writes that OpenAI's API would not
take fails here too) and answered by the chat answers, shaped the way the bridge shapes them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError

from gateway.dev.answers import Answers
from gateway.responses import Events, Shape, to_chat
from gateway.responses_schema import RESPONSES
from gateway.sse import Event, Parser


def invalid(body: dict[str, Any]) -> bytes | None:
    """The 400 body for a request the Responses API would refuse, else None."""
    try:
        RESPONSES.validate_python(body)
    except ValidationError as exc:
        where = ".".join(map(str, exc.errors()[0]["loc"]))
        return orjson.dumps(
            {"error": {"message": f"invalid request at {where}", "type": "invalid_request_error"}}
        )
    return None


def response(answers: Answers, body: dict[str, Any]) -> bytes:
    completion = answers.completion(to_chat(body))
    return Shape(body, "dev").answer(orjson.dumps(completion))


async def events(answers: Answers, body: dict[str, Any]) -> list[bytes]:
    """The Responses event stream, one write per chat chunk it comes from."""
    parser = Parser()

    async def chunks() -> AsyncIterator[Event]:
        for data in answers.stream_events(to_chat(body)):
            for event in parser.feed(data):
                yield event

    return [
        b"".join(e.encode() for e in batch) async for batch in Events(Shape(body, "dev")).translate(chunks())
    ]
