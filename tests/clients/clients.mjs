// JavaScript clients against the gateway: the `openai` SDK and the Vercel AI SDK (`ai` with
// `@ai-sdk/openai`), as applications use them. tests/test_clients_js.py runs one scenario per process:
//
//   GATEWAY_BASE_URL=http://127.0.0.1:PORT/v1 GATEWAY_API_KEY=... CHAT_MODEL=... EMBED_MODEL=... \
//   PROMPT='...' node tests/clients/clients.mjs <scenario>
//
// It prints ONE JSON line with what the client got (text, tool calls, usage, embeddings) and exits 0,
// or prints the error to stderr and exits 1. Retries are off everywhere, so one call is one request.
import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { embedMany, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const BASE_URL = env("GATEWAY_BASE_URL");
const API_KEY = env("GATEWAY_API_KEY");
const PROMPT = env("PROMPT");
const chatModel = () => env("CHAT_MODEL");
const embedModel = () => env("EMBED_MODEL");

// What the `lookup` tool returns; the tests look for it in the second step's request.
const TOOL_RESULT = "lookup result: the contract is filed under reference ALPHA";

const openaiClient = () => new OpenAI({ baseURL: BASE_URL, apiKey: API_KEY, maxRetries: 0, timeout: 30_000 });
const provider = () => createOpenAI({ baseURL: BASE_URL, apiKey: API_KEY });

// --- the openai SDK ---------------------------------------------------------------------------------

async function openaiChat() {
  const completion = await openaiClient().chat.completions.create({
    model: chatModel(),
    messages: [{ role: "user", content: PROMPT }],
  });
  const choice = completion.choices[0];
  return {
    text: choice.message.content,
    finish_reason: choice.finish_reason,
    model: completion.model,
    usage: completion.usage,
  };
}

async function openaiChatStream() {
  const stream = await openaiClient().chat.completions.create({
    model: chatModel(),
    messages: [{ role: "user", content: PROMPT }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  let finishReason = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    for (const choice of chunk.choices ?? []) {
      text += choice.delta?.content ?? "";
      finishReason = choice.finish_reason ?? finishReason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finish_reason: finishReason, chunks, usage };
}

async function openaiEmbeddings() {
  const result = await openaiClient().embeddings.create({ model: embedModel(), input: [PROMPT, "A second text."] });
  return {
    embeddings: { count: result.data.length, dimension: result.data[0]?.embedding.length ?? 0 },
    first: result.data[0]?.embedding ?? null,
    usage: result.usage,
  };
}

async function openaiResponses() {
  const response = await openaiClient().responses.create({ model: chatModel(), input: PROMPT });
  return {
    text: response.output_text,
    id: response.id,
    object: response.object,
    status: response.status,
    output_types: (response.output ?? []).map((item) => item.type),
    usage: response.usage,
  };
}

async function openaiResponsesStream() {
  const stream = await openaiClient().responses.create({ model: chatModel(), input: PROMPT, stream: true });
  const events = [];
  const sequence = [];
  let text = "";
  let usage = null;
  let completed = null;
  for await (const event of stream) {
    events.push(event.type);
    sequence.push(event.sequence_number ?? null);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed") {
      completed = event.response;
      usage = event.response.usage ?? null;
    }
  }
  return { text, events, sequence, usage, status: completed?.status ?? null, id: completed?.id ?? null };
}

// responses.stream(): the SDK's helper, which rebuilds the response from the events (stricter than
// iterating responses.create({stream: true}): every event must apply to the snapshot it keeps).
async function openaiResponsesHelper() {
  const stream = openaiClient().responses.stream({ model: chatModel(), input: PROMPT });
  const events = [];
  let text = "";
  stream.on("response.output_text.delta", (event) => {
    text += event.delta;
  });
  for await (const event of stream) events.push(event.type);
  const final = await stream.finalResponse();
  return { text, final_text: final.output_text, events, usage: final.usage, status: final.status };
}

// --- the Vercel AI SDK ------------------------------------------------------------------------------

const aiUsage = (usage) => ({
  inputTokens: usage?.inputTokens ?? null,
  outputTokens: usage?.outputTokens ?? null,
  totalTokens: usage?.totalTokens ?? null,
});

async function aiGenerate(model) {
  const result = await generateText({ model, prompt: PROMPT, maxRetries: 0 });
  return {
    text: result.text,
    finish_reason: result.finishReason,
    usage: aiUsage(result.usage),
    response_id: result.response?.id ?? null,
  };
}

// Iterates the full stream: an error part fails the scenario (streamText would only log it).
async function aiStream(model) {
  const result = streamText({ model, prompt: PROMPT, maxRetries: 0, onError: () => {} });
  let text = "";
  const parts = [];
  let finishReason = null;
  let usage = null;
  for await (const part of result.fullStream) {
    if (parts[parts.length - 1] !== part.type) parts.push(part.type);
    if (part.type === "error") throw part.error instanceof Error ? part.error : new Error(JSON.stringify(part.error));
    if (part.type === "text-delta") text += part.text;
    if (part.type === "finish") {
      finishReason = part.finishReason;
      usage = part.totalUsage;
    }
  }
  return { text, finish_reason: finishReason, usage: aiUsage(usage), parts };
}

// One tool, `lookup({query})`; stopWhen lets the tool result go back to the model for a second step.
// The development upstream answers a tool call with arguments {"echo": <last user message>} (and
// {"call": i, "echo": ...} when streamed); the repair hook maps them to {query}, as an application
// would repair a model that used the wrong field. `raw_inputs` are the arguments as they arrived.
function lookupTools(seen) {
  return {
    lookup: tool({
      description: "Look up a fact about a contract.",
      inputSchema: z.object({ query: z.string() }),
      execute: async (input) => {
        seen.executed.push(input);
        return TOOL_RESULT;
      },
    }),
  };
}

function repairer(seen) {
  return async ({ toolCall }) => {
    seen.raw_inputs.push(toolCall.input);
    let parsed;
    try {
      parsed = JSON.parse(toolCall.input);
    } catch {
      return null;
    }
    if (typeof parsed?.echo !== "string") return null;
    seen.repaired += 1;
    return { ...toolCall, input: JSON.stringify({ query: parsed.echo }) };
  };
}

function toolReport(seen, steps, text, finishReason, usage) {
  return {
    text,
    finish_reason: finishReason,
    steps: steps.length,
    step_finish_reasons: steps.map((s) => s.finishReason),
    tool_calls: steps.flatMap((s) =>
      s.toolCalls.map((c) => ({ toolName: c.toolName, toolCallId: c.toolCallId, input: c.input })),
    ),
    tool_results: steps.flatMap((s) =>
      s.toolResults.map((r) => ({ toolName: r.toolName, toolCallId: r.toolCallId, output: r.output })),
    ),
    tool_input: seen.executed[0] ?? null,
    executed: seen.executed.length,
    raw_inputs: seen.raw_inputs,
    repaired: seen.repaired,
    usage: aiUsage(usage),
    step_usage: steps.map((s) => aiUsage(s.usage)),
  };
}

// The options both tool scenarios share: the prompt, the lookup tool, and room for a second step.
function toolCall(model, seen) {
  return {
    model,
    prompt: PROMPT,
    tools: lookupTools(seen),
    stopWhen: stepCountIs(3),
    experimental_repairToolCall: repairer(seen),
    maxRetries: 0,
  };
}

async function aiTool(model) {
  const seen = { executed: [], raw_inputs: [], repaired: 0 };
  const result = await generateText(toolCall(model, seen));
  return toolReport(seen, result.steps, result.text, result.finishReason, result.totalUsage);
}

async function aiStreamTool(model) {
  const seen = { executed: [], raw_inputs: [], repaired: 0 };
  const result = streamText({ ...toolCall(model, seen), onError: () => {} });
  for await (const part of result.fullStream) {
    if (part.type === "error") throw part.error instanceof Error ? part.error : new Error(JSON.stringify(part.error));
    if (part.type === "tool-error") throw part.error instanceof Error ? part.error : new Error(String(part.error));
  }
  return toolReport(seen, await result.steps, await result.text, await result.finishReason, await result.totalUsage);
}

// Two turns on the Responses provider: the second sends the first answer back as history. `store`
// undefined is the SDK's default (it assumes state at the provider and sends earlier output as
// `item_reference`); `store: false` sends it inline. A refusal is reported, not thrown.
async function aiMultiTurn(store) {
  const model = provider()(chatModel());
  const providerOptions = store === undefined ? undefined : { openai: { store } };
  const first = await generateText({ model, prompt: PROMPT, providerOptions, maxRetries: 0 });
  const messages = [
    { role: "user", content: PROMPT },
    ...first.response.messages,
    { role: "user", content: "Once more, please." },
  ];
  try {
    const second = await generateText({ model, messages, providerOptions, maxRetries: 0 });
    return { first: first.text, second: second.text, refused: null };
  } catch (error) {
    const body = error?.responseBody ? JSON.parse(error.responseBody) : null;
    return { first: first.text, second: null, refused: { status: error?.statusCode ?? null, error: body?.error ?? null } };
  }
}

async function aiEmbedMany() {
  const { embeddings, usage } = await embedMany({
    model: provider().embedding(embedModel()),
    values: [PROMPT, "A second text."],
    maxRetries: 0,
  });
  return {
    embeddings: { count: embeddings.length, dimension: embeddings[0]?.length ?? 0 },
    first: embeddings[0] ?? null,
    usage,
  };
}

// --- running ----------------------------------------------------------------------------------------

const SCENARIOS = {
  "openai.chat": openaiChat,
  "openai.chat_stream": openaiChatStream,
  "openai.embeddings": openaiEmbeddings,
  "openai.responses": openaiResponses,
  "openai.responses_stream": openaiResponsesStream,
  "openai.responses_helper": openaiResponsesHelper,
  "ai.generate": () => aiGenerate(provider()(chatModel())),
  "ai.stream": () => aiStream(provider()(chatModel())),
  "ai.chat_generate": () => aiGenerate(provider().chat(chatModel())),
  "ai.chat_stream": () => aiStream(provider().chat(chatModel())),
  "ai.tool": () => aiTool(provider()(chatModel())),
  "ai.chat_tool": () => aiTool(provider().chat(chatModel())),
  "ai.stream_tool": () => aiStreamTool(provider()(chatModel())),
  "ai.chat_stream_tool": () => aiStreamTool(provider().chat(chatModel())),
  "ai.multi_turn": () => aiMultiTurn(false),
  "ai.multi_turn_default": () => aiMultiTurn(undefined),
  "ai.embed_many": aiEmbedMany,
};

async function main() {
  const scenario = process.argv[2];
  const run = SCENARIOS[scenario];
  if (!run) {
    process.stderr.write(`unknown scenario ${JSON.stringify(scenario)}; one of: ${Object.keys(SCENARIOS).join(", ")}\n`);
    process.exit(2);
  }
  const result = await run();
  process.stdout.write(`${JSON.stringify({ scenario, ...result })}\n`);
}

main().catch((error) => {
  const detail = {
    name: error?.name,
    message: error?.message,
    status: error?.status ?? error?.statusCode,
    url: error?.url,
    responseBody: error?.responseBody,
    cause: error?.cause?.message ?? (error?.cause ? String(error.cause) : undefined),
  };
  process.stderr.write(`${JSON.stringify(detail)}\n${error?.stack ?? error}\n`);
  process.exit(1);
});
