"""The Responses API fields the gateway accepts (``POST /v1/responses``), with their types and ranges.

The gateway bridges a Responses request to a chat completion (``gateway.responses``): only what
this allow-list names is read, and only what the bridge translates leaves, as chat fields that
the PII walker then scans like any chat request. Fields of the API that need state at the provider
(``previous_response_id``, ``conversation``, ``background``, stored prompts) or a provider's own
tools are refused before validation, each with an error naming it (``gateway.responses.refused``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from gateway.openai_schema import EndUser, FnName, FreeJson, Ident, JsonText, ModelName, Text, Url

_FORBID = ConfigDict(extra="forbid")
Status = Literal["in_progress", "completed", "incomplete"]


@with_config(_FORBID)
class InputText(TypedDict):
    type: Literal["input_text"]
    text: Text


@with_config(_FORBID)
class InputImage(TypedDict, total=False):
    type: Required[Literal["input_image"]]
    image_url: Required[Url]  # a URL or a data: URL; uploaded files (file_id) need state at the provider
    detail: Literal["auto", "low", "high"]


@with_config(_FORBID)
class OutputText(TypedDict, total=False):
    """Earlier assistant output sent back as history; its annotations and logprobs are not forwarded."""

    type: Required[Literal["output_text"]]
    text: Required[Text]
    annotations: list[dict[str, Any]]
    logprobs: list[dict[str, Any]]


@with_config(_FORBID)
class Refusal(TypedDict):
    type: Literal["refusal"]
    refusal: Text


InputPart = Annotated[InputText | InputImage, Field(discriminator="type")]
OutputPart = Annotated[OutputText | Refusal | InputText, Field(discriminator="type")]


@with_config(_FORBID)
class InputMessage(TypedDict):
    type: NotRequired[Literal["message"]]
    role: Literal["user", "system", "developer"]
    content: Text | Annotated[list[InputPart], Field(min_length=1)]
    id: NotRequired[Ident]
    status: NotRequired[Status]


@with_config(_FORBID)
class OutputMessage(TypedDict):
    type: NotRequired[Literal["message"]]
    role: Literal["assistant"]
    content: Text | list[OutputPart]
    id: NotRequired[Ident]
    status: NotRequired[Status]


@with_config(_FORBID)
class FunctionCallItem(TypedDict):
    type: Literal["function_call"]
    call_id: Ident
    name: FnName
    arguments: JsonText
    id: NotRequired[Ident]
    status: NotRequired[Status]


@with_config(_FORBID)
class FunctionCallOutput(TypedDict):
    type: Literal["function_call_output"]
    call_id: Ident
    output: Text | Annotated[list[InputText], Field(min_length=1)]
    id: NotRequired[Ident | None]
    status: NotRequired[Status | None]


Message = Annotated[InputMessage | OutputMessage, Field(discriminator="role")]
Item = Annotated[Message | FunctionCallItem | FunctionCallOutput, Field(union_mode="left_to_right")]


@with_config(_FORBID)
class FunctionTool(TypedDict, total=False):
    type: Required[Literal["function"]]
    name: Required[FnName]
    description: Text | None
    parameters: FreeJson | None
    strict: bool | None


@with_config(_FORBID)
class FunctionChoice(TypedDict):
    type: Literal["function"]
    name: FnName


@with_config(_FORBID)
class FormatText(TypedDict):
    type: Literal["text", "json_object"]


@with_config(_FORBID)
class FormatSchema(TypedDict, total=False):
    type: Required[Literal["json_schema"]]
    name: Required[FnName]
    schema: Required[FreeJson]
    description: Text
    strict: bool | None


@with_config(_FORBID)
class TextOptions(TypedDict, total=False):
    format: Annotated[FormatText | FormatSchema, Field(discriminator="type")]
    verbosity: Literal["low", "medium", "high"] | None


@with_config(_FORBID)
class Reasoning(TypedDict, total=False):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None
    summary: Literal["auto", "concise", "detailed"] | None  # accepted; chat upstreams give no summary
    generate_summary: Literal["auto", "concise", "detailed"] | None


@with_config(_FORBID)
class StreamOptions(TypedDict, total=False):
    include_obfuscation: bool


@with_config(_FORBID)
class ResponsesRequest(TypedDict, total=False):
    """The Responses fields the gateway accepts (OpenAI's API reference); docs/api.md says what each becomes."""

    model: Required[ModelName]
    input: Required[Text | Annotated[list[Item], Field(min_length=1)]]
    instructions: Text | None
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None
    parallel_tool_calls: bool | None
    text: TextOptions | None
    reasoning: Reasoning | None
    max_output_tokens: Annotated[int, Field(ge=1)] | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    )
    stream: bool | None
    stream_options: StreamOptions | None
    store: bool | None  # treated as false: the gateway keeps no responses
    include: list[Literal["reasoning.encrypted_content", "message.output_text.logprobs"]] | None
    truncation: Literal["auto", "disabled"] | None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None
    user: EndUser
    safety_identifier: EndUser | None
    prompt_cache_key: EndUser | None
    background: Literal[False] | None  # true is refused: a background response needs state
    previous_response_id: None  # a value is refused (responses.stateless)


RESPONSES = TypeAdapter(ResponsesRequest)
TOP_LEVEL_RESPONSES = frozenset(ResponsesRequest.__annotations__)
