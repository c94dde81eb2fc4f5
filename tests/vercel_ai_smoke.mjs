// The Vercel AI SDK (`ai`) with its Ollama provider (`ollama-ai-provider-v2`), unchanged,
// against the gateway's Ollama front: run by tests/test_clients_ollama_front.py. Reads AI and
// PROVIDER (the packages' entries), GATEWAY, KEY, PROJECT and MODEL from the environment and
// prints what the SDK gave back as one JSON object. A call the SDK rejects (it validates
// every answer against its schema) is reported with its error's name and message.
const { embed, embedMany, generateText, streamText } = await import(process.env.AI);
const { createOllama } = await import(process.env.PROVIDER);
const { GATEWAY: gateway, KEY: key, PROJECT: project, MODEL: model } = process.env;

const ollama = createOllama({
  baseURL: `${gateway}/api`,
  headers: { Authorization: `Bearer ${key}`, "X-Project": project },
});
const out = {};

async function attempt(name, work) {
  try {
    out[name] = await work();
  } catch (error) {
    out[name] = { error: error.name, message: String(error.message).slice(0, 500) };
  }
}

await attempt("embed", async () => {
  const { embedding, usage } = await embed({
    model: ollama.embedding(model),
    value: `${project} one`,
  });
  return { length: embedding.length, usage };
});
await attempt("embedMany", async () => {
  const { embeddings } = await embedMany({
    model: ollama.embedding(model),
    values: [`${project} two`, `${project} three`],
  });
  return { count: embeddings.length, length: embeddings[0].length };
});
await attempt("chat", async () => {
  const { text, usage, finishReason } = await generateText({
    model: ollama(model),
    prompt: `${project} Say hi.`,
    maxOutputTokens: 8,
  });
  return { text, usage, finishReason };
});
await attempt("chat streamed", async () => {
  const result = streamText({
    model: ollama(model),
    prompt: `${project} Count to three.`,
    maxOutputTokens: 8,
    onError: () => {},
  });
  let text = "";
  for await (const part of result.textStream) text += part;
  return { text, usage: await result.usage, finishReason: await result.finishReason };
});
await attempt("completion", async () => {
  const { text, usage, finishReason } = await generateText({
    model: ollama.completion(model),
    prompt: `${project} Once upon a time`,
    maxOutputTokens: 8,
  });
  return { text, usage, finishReason };
});
// Not a streamed completion: the provider requires `context` on every streamed line of
// /api/generate, which Ollama itself sends on the last one only (its Go field is omitempty), so
// that fails against Ollama as it does here.

console.log(JSON.stringify(out));
