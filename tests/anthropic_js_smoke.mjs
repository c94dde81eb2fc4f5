// The `@anthropic-ai/sdk` npm package, unchanged, against the gateway: run by
// tests/test_clients_anthropic_js.py. Reads ANTHROPIC_JS (the package's entry), GATEWAY, KEY,
// LIMITED (a key allowed one call a minute) and PROJECT from the environment and prints what
// the client saw as one JSON object.
const { default: Anthropic } = await import(process.env.ANTHROPIC_JS);
const { GATEWAY: baseURL, KEY: apiKey, LIMITED: limitedKey, PROJECT: project } = process.env;

const PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
const weather = {
  name: "get_weather",
  description: "The weather in a city",
  input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
};
const options = { baseURL, maxRetries: 0, defaultHeaders: { "X-Project": project } };
const client = new Anthropic({ apiKey, ...options });
const user = (text) => [{ role: "user", content: text }];
const out = {};

async function failure(work) {
  try {
    await work();
    return null;
  } catch (error) {
    return { name: error.constructor.name, status: error.status ?? null, type: error.error?.error?.type ?? null };
  }
}

const whole = await client.messages.create({
  model: "llama3",
  max_tokens: 50,
  system: "be brief",
  messages: user(`${project} whole [[tokens=3]]`),
});
out.whole = { content: whole.content, stop_reason: whole.stop_reason, usage: whole.usage };

const stream = client.messages.stream({
  model: "llama3",
  max_tokens: 50,
  messages: user(`${project} streamed [[tokens=4]]`),
});
const texts = [];
stream.on("text", (text) => texts.push(text));
const final = await stream.finalMessage();
out.streamed = { texts, stop_reason: final.stop_reason, usage: final.usage };

const ask = user(`${project} weather? [[tool_calls=1]] [[tokens=0]]`);
const called = await client.messages.create({ model: "llama3", max_tokens: 50, tools: [weather], messages: ask });
const use = called.content.find((b) => b.type === "tool_use");
const answered = await client.messages.create({
  model: "llama3",
  max_tokens: 50,
  tools: [weather],
  messages: [
    ...ask,
    { role: "assistant", content: called.content },
    {
      role: "user",
      content: [
        { type: "tool_result", tool_use_id: use.id, content: "sunny" },
        { type: "text", text: `${project} so? [[tokens=2]]` },
      ],
    },
  ],
});
out.tools = { use: { name: use.name, input: use.input }, stop_reason: called.stop_reason, answer: answered.content };

const thought = await client.messages
  .stream({
    model: "llama3",
    max_tokens: 2048,
    thinking: { type: "enabled", budget_tokens: 1024 },
    messages: user(`${project} think [[thinking=2]] [[tokens=1]]`),
  })
  .finalMessage();
out.thinking = thought.content.map((b) => b.type);

const seen = await client.messages.create({
  model: "llama3",
  max_tokens: 10,
  messages: [
    {
      role: "user",
      content: [
        { type: "image", source: { type: "base64", media_type: "image/png", data: PNG } },
        { type: "text", text: `${project} image [[tokens=1]]` },
      ],
    },
  ],
});
out.image = seen.content[0].text;

out.count = (await client.messages.countTokens({ model: "llama3", messages: user(`${project} one two`) })).input_tokens;

// models.list() pages by after_id; for await walks every page.
out.models = [];
for await (const model of client.models.list({ limit: 1 })) out.models.push(model.id);
const one = await client.models.retrieve("llama3");
out.model = { id: one.id, type: one.type, display_name: one.display_name };
out.noModel = await failure(() => client.models.retrieve("no-such-model"));

out.missing = await failure(() => client.messages.create({ model: "no-such-model", max_tokens: 5, messages: user("hi") }));
const stranger = new Anthropic({ apiKey: "ohk_00000000_not-a-key", ...options });
out.unauthorized = await failure(() => stranger.messages.create({ model: "llama3", max_tokens: 5, messages: user("hi") }));
const limited = new Anthropic({ apiKey: limitedKey, ...options });
await limited.messages.create({ model: "llama3", max_tokens: 5, messages: user("hi") });
out.limited = await failure(() => limited.messages.create({ model: "llama3", max_tokens: 5, messages: user("hi") }));

console.log(JSON.stringify(out));
