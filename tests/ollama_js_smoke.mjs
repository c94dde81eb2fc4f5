// The `ollama` npm package, unchanged, against the gateway: run by tests/test_clients_js.py.
// Reads OLLAMA_JS (the package's entry), GATEWAY, KEY and PROJECT from the environment and
// prints what the client saw as one JSON object.
const { Ollama } = await import(process.env.OLLAMA_JS);
const { GATEWAY: host, KEY: key, PROJECT: project } = process.env;

const PNG =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const schema = {
  type: "object",
  properties: { city: { type: "string" }, sunny: { type: "boolean" } },
  required: ["city", "sunny"],
};
const headers = { Authorization: `Bearer ${key}`, "X-Project": project };
const ollama = new Ollama({ host, headers });
const out = {};

async function failure(work) {
  try {
    await work();
    return null;
  } catch (error) {
    return { name: error.name, status: error.status_code ?? null, message: String(error.message) };
  }
}

const whole = await ollama.chat({
  model: "llama3",
  messages: [{ role: "user", content: `${project} [[tool_calls=1]]`, images: [PNG] }],
  tools: [weather],
  format: schema,
  stream: false,
});
out.whole = { content: whole.message.content, tool_calls: whole.message.tool_calls, done: whole.done };

const parts = [];
for await (const part of await ollama.chat({
  model: "llama3",
  messages: [{ role: "user", content: `${project} [[tokens=3]] [[tool_calls=1]]` }],
  tools: [weather],
  stream: true,
})) {
  parts.push({ content: part.message.content, tool_calls: part.message.tool_calls ?? null, done: part.done });
}
out.streamed = parts;

const generated = await ollama.generate({ model: "llama3", prompt: `${project} [[tokens=2]]` , stream: false});
out.generate = generated.response;
const embedded = await ollama.embed({ model: "llama3", input: ["one two", "three"] });
out.embed = embedded.embeddings.map((v) => v.length);
out.list = (await ollama.list()).models.map((m) => m.name);
out.show = (await ollama.show({ model: "llama3" })).details.family;
out.ps = (await ollama.ps()).models.map((m) => m.name);
out.version = (await ollama.version()).version;

out.missing = await failure(() =>
  ollama.chat({ model: "no-such-model", messages: [{ role: "user", content: "hi" }] }),
);
const stranger = new Ollama({ host, headers: { Authorization: "Bearer ohk_00000000_nope" } });
out.unauthorized = await failure(() => stranger.list());

// Abort mid-stream, the library's own way to stop reading.
const stream = await ollama.chat({
  model: "llama3",
  messages: [{ role: "user", content: `${project} left [[tokens=1000]] [[delay=0.02]]` }],
  stream: true,
});
out.aborted = await failure(async () => {
  for await (const part of stream) {
    // Parts already read may still come after abort(): keep the first.
    out.first ??= part.message.content;
    stream.abort();
  }
});

console.log(JSON.stringify(out));
