// One turn with the TypeScript SDK (@anthropic-ai/sdk), as an agent would stream it: messages.stream() with
// maxRetries 0 (every attempt is the proxy's), reading every event. Prints one JSON line: the text deltas
// received, and the final message or the error the SDK raised.
// Usage: node client.mjs BASE_URL FIXTURE
import Anthropic from "@anthropic-ai/sdk";

const [baseURL, fixture] = process.argv.slice(2);
const client = new Anthropic({ baseURL, apiKey: "sk-test", maxRetries: 0, timeout: 30_000 });
const texts = [];
const out = { texts };
try {
  const stream = client.messages.stream(
    { model: "claude-test", max_tokens: 64, messages: [{ role: "user", content: "hi" }] },
    { headers: { "x-mendstream-fixture": fixture } },
  );
  stream.on("text", (text) => texts.push(text));
  out.message = await stream.finalMessage();
} catch (error) {
  out.error = { name: error?.constructor?.name ?? "Error", message: String(error?.message ?? error) };
}
process.stdout.write(JSON.stringify(out) + "\n");
