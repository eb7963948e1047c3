"""The litellm adapter, imported lazily and pinned offline, against the loopback upstream."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from gateway.dev import DevUpstream
from tests.conftest import make_config

pytestmark = pytest.mark.slow  # `import litellm` takes ~9 s here


def test_litellm_is_not_imported_unless_a_litellm_deployment_exists() -> None:
    code = (
        "import sys; from gateway.app import Gateway; from tests.conftest import make_config; "
        "from gateway.dev import DevUpstream; Gateway(make_config(DevUpstream())); "
        "print('litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_chat_and_streaming_through_a_litellm_deployment(gateway_factory, upstream: DevUpstream) -> None:
    config = make_config(upstream)
    deployments = dict(config.model_dump()["deployments"])
    deployments["via-litellm"] = {
        "kind": "litellm",
        "base_url": upstream.url,
        "model": "mistral-7b-instruct",
        "litellm_model": "openai/mistral-7b-instruct",
        "api_key": "sk-upstream-litellm",
        "jurisdiction": "EU",
        "region": "fr-par",
    }
    gw = gateway_factory(
        make_config(
            upstream, deployments=deployments, models={"mistral-7b": {"deployments": ["via-litellm"]}}
        )
    )
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.key(), max_retries=0)
    reply = client.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == upstream.reply
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        if c.choices
    )
    assert text == upstream.reply
    assert upstream.received[-1].headers["authorization"] == "Bearer sk-upstream-litellm"
    import os

    assert os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP") == "True"
