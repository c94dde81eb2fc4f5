// The Vercel AI SDK (`ai`) with its OpenAI provider (`@ai-sdk/openai`), unchanged, in its
// default form `createOpenAI({ baseURL })(model)`, which asks OpenAI's Responses API: run by
// tests/test_clients_responses.py against the gateway's /v1/responses. Reads AI and PROVIDER
// (the packages' entries), GATEWAY, KEY, PROJECT and MODEL from the environment and prints
// what the SDK gave back as one JSON object. A call the SDK rejects (it validates every answer
// and every streamed event against its schema) is reported with its error's name and message.
const { generateText, jsonSchema, streamText, tool } = await import(process.env.AI);
const { createOpenAI } = await import(process.env.PROVIDER);
const { GATEWAY: gateway, KEY: key, PROJECT: project, MODEL: model } = process.env;

const openai = createOpenAI({
  baseURL: `${gateway}/v1`,
  apiKey: key,
  headers: { "X-Project": project },
});
const out = {};

async function attempt(name, work) {
  try {
    out[name] = await work();
  } catch (error) {
    out[name] = { error: error.name, message: String(error.message).slice(0, 500) };
  }
}

await attempt("text", async () => {
  const { text, usage, finishReason } = await generateText({
    model: openai(model),
    system: "Be brief.",
    prompt: `${project} Say hi. [[tokens=3]]`,
    maxOutputTokens: 16,
  });
  return { text, usage, finishReason };
});
await attempt("text streamed", async () => {
  const result = streamText({
    model: openai(model),
    prompt: `${project} Count to three. [[tokens=4]]`,
    onError: () => {},
  });
  let text = "";
  const parts = [];
  for await (const part of result.fullStream) {
    parts.push(part.type);
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") throw part.error;
  }
  return { text, usage: await result.usage, finishReason: await result.finishReason, parts };
});
await attempt("tool call", async () => {
  const { toolCalls, finishReason } = await generateText({
    model: openai(model),
    prompt: `${project} Weather in Paris? [[tool_calls=1]]`,
    tools: {
      get_weather: tool({
        description: "The weather in a city",
        inputSchema: jsonSchema({
          type: "object",
          properties: { city: { type: "string" } },
          required: ["city"],
        }),
      }),
    },
  });
  return { toolCalls: toolCalls.map((c) => ({ name: c.toolName, input: c.input })), finishReason };
});

console.log(JSON.stringify(out));
