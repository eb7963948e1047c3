"""The request fields the gateway forwards, with their types, ranges and what happens to their text.

Chat completions and embeddings bodies are validated against the TypedDicts below (pydantic,
unknown keys rejected at every depth). Every string field is one of:

    TEXT        free text: scanned by the PII engine (``pii_redaction``)
    JSON_TEXT   a JSON document in a string (tool arguments): every string leaf scanned
    FREE_JSON   an object of any shape (JSON schemas, provider extensions): every string leaf scanned
    URL         scanned, unless it is a ``data:`` URL (base64 media, validated as such)
    BINARY      base64 media (audio, files): validated, not text
    PSEUDONYM   an end-user id: replaced by a keyed pseudonym before it leaves
    (unmarked)  an identifier or enum: a pattern or a Literal makes it provably not free text

``gateway.openai_plan.PLAN`` is the same information as a tree the PII walker follows without looking at types.
docs/pii.md has the table, field by field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

TEXT, JSON_TEXT, FREE_JSON, URL, BINARY, PSEUDONYM = (
    "text",
    "json_text",
    "free_json",
    "url",
    "binary",
    "pseudonym",
)
MAX_DEPTH = 32
_FORBID = ConfigDict(extra="forbid")

Text = Annotated[str, TEXT]
JsonText = Annotated[str, JSON_TEXT]
FreeJson = Annotated[dict[str, Any], FREE_JSON]
Url = Annotated[str, URL]
Binary = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/=\s]*$"), BINARY]
EndUser = Annotated[str, Field(max_length=256), PSEUDONYM]
Ident = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]  # names of functions, ids, formats
FnName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")]
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/+\-]{1,256}$")]


# --- chat completions ----------------------------------------------------------------------------


@with_config(_FORBID)
class TextPart(TypedDict):
    type: Literal["text"]
    text: Text


@with_config(_FORBID)
class RefusalPart(TypedDict):
    type: Literal["refusal"]
    refusal: Text


@with_config(_FORBID)
class ImageUrl(TypedDict):
    url: Url
    detail: NotRequired[Literal["auto", "low", "high"]]


@with_config(_FORBID)
class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageUrl


@with_config(_FORBID)
class InputAudio(TypedDict):
    data: Binary
    format: Literal["wav", "mp3"]


@with_config(_FORBID)
class AudioPart(TypedDict):
    type: Literal["input_audio"]
    input_audio: InputAudio


@with_config(_FORBID)
class FileRef(TypedDict, total=False):
    file_data: Binary
    file_id: Ident
    filename: Text


@with_config(_FORBID)
class FilePart(TypedDict):
    type: Literal["file"]
    file: FileRef


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


@with_config(_FORBID)
class FunctionCall(TypedDict):
    name: FnName
    arguments: JsonText


@with_config(_FORBID)
class ToolCall(TypedDict):
    id: Ident
    type: Literal["function"]
    function: FunctionCall


@with_config(_FORBID)
class SystemMessage(TypedDict):
    role: Literal["system", "developer"]
    content: Text | list[TextPart]
    name: NotRequired[Text]


@with_config(_FORBID)
class UserMessage(TypedDict):
    role: Literal["user"]
    content: Text | Annotated[list[UserPart], Field(min_length=1)]
    name: NotRequired[Text]


@with_config(_FORBID)
class AudioRef(TypedDict):
    id: Ident


@with_config(_FORBID)
class AssistantMessage(TypedDict, total=False):
    role: Required[Literal["assistant"]]
    content: Text | list[AssistantPart] | None
    refusal: Text | None
    name: Text
    tool_calls: list[ToolCall]
    function_call: FunctionCall | None
    audio: AudioRef | None


@with_config(_FORBID)
class ToolMessage(TypedDict):
    role: Literal["tool"]
    content: Text | list[TextPart]
    tool_call_id: Ident


@with_config(_FORBID)
class FunctionMessage(TypedDict):
    role: Literal["function"]
    content: Text | None
    name: FnName


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


@with_config(_FORBID)
class FunctionDef(TypedDict, total=False):
    name: Required[FnName]
    description: Text
    parameters: FreeJson
    strict: bool | None


@with_config(_FORBID)
class Tool(TypedDict):
    type: Literal["function"]
    function: FunctionDef


@with_config(_FORBID)
class NamedFunction(TypedDict):
    name: FnName


@with_config(_FORBID)
class NamedToolChoice(TypedDict):
    type: Literal["function"]
    function: NamedFunction


@with_config(_FORBID)
class JsonSchema(TypedDict, total=False):
    name: Required[FnName]
    description: Text
    schema: FreeJson
    strict: bool | None


@with_config(_FORBID)
class ResponseFormatText(TypedDict):
    type: Literal["text", "json_object"]


@with_config(_FORBID)
class ResponseFormatSchema(TypedDict):
    type: Literal["json_schema"]
    json_schema: JsonSchema


@with_config(_FORBID)
class StreamOptions(TypedDict, total=False):
    include_usage: bool
    include_obfuscation: bool


@with_config(_FORBID)
class Prediction(TypedDict):
    type: Literal["content"]
    content: Text | list[TextPart]


@with_config(_FORBID)
class AudioOut(TypedDict):
    voice: Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")]
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


@with_config(_FORBID)
class ChatRequest(TypedDict, total=False):
    """The chat completions fields the gateway forwards (OpenAI's API reference)."""

    model: Required[ModelName]
    messages: Required[Annotated[list[Message], Field(min_length=1)]]
    stream: bool | None
    stream_options: StreamOptions | None
    n: Annotated[int, Field(ge=1)] | None  # the upper bound is server.max_n, checked after
    max_tokens: Annotated[int, Field(ge=1)] | None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None
    temperature: Annotated[float, Field(ge=0, le=2)] | None
    top_p: Annotated[float, Field(ge=0, le=1)] | None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None
    seed: int | None
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None
    tools: Annotated[list[Tool], Field(max_length=128)] | None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None
    parallel_tool_calls: bool
    functions: Annotated[list[FunctionDef], Field(max_length=128)] | None
    function_call: Literal["none", "auto"] | NamedFunction | None
    response_format: ResponseFormatText | ResponseFormatSchema | None
    logprobs: bool | None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None
    logit_bias: (
        dict[Annotated[str, Field(pattern=r"^\d{1,7}$")], Annotated[int, Field(ge=-100, le=100)]] | None
    )
    user: EndUser
    safety_identifier: EndUser | None
    prompt_cache_key: EndUser | None
    metadata: (
        Annotated[
            dict[Annotated[str, Field(max_length=64)], Annotated[Text, Field(max_length=512)]],
            Field(max_length=16),
        ]
        | None
    )
    prediction: Prediction | None
    modalities: list[Literal["text", "audio"]] | None
    audio: AudioOut | None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None
    verbosity: Literal["low", "medium", "high"] | None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None
    store: bool | None


# --- embeddings ------------------------------------------------------------------------------------


@with_config(_FORBID)
class EmbeddingsRequest(TypedDict, total=False):
    model: Required[ModelName]
    input: Required[
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=2048)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    ]
    encoding_format: Literal["float", "base64"]
    dimensions: Annotated[int, Field(ge=1)]
    user: EndUser


CHAT = TypeAdapter(ChatRequest)
EMBEDDINGS = TypeAdapter(EmbeddingsRequest)
TOP_LEVEL = {
    "chat": frozenset(ChatRequest.__annotations__),
    "embeddings": frozenset(EmbeddingsRequest.__annotations__),
}
