// Drives one scripted MCP session with the official TypeScript SDK client and prints what it
// saw as JSON (volatile values such as session ids removed), so that a run straight against a
// server and a run through Sluice can be compared.
//
// usage: node ts_client.mjs URL [--legacy|--stdio]
//   --legacy: the legacy HTTP+SSE transport (URL is the server's /sse stream)
//   --stdio:  the stdio transport (URL is the server's command line as a JSON array)
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { SSEClientTransport } from "@modelcontextprotocol/sdk/client/sse.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import {
  CreateMessageRequestSchema,
  ElicitRequestSchema,
  LoggingMessageNotificationSchema,
  ResourceUpdatedNotificationSchema,
} from "@modelcontextprotocol/sdk/types.js";

const legacy = process.argv.includes("--legacy");
const stdio = process.argv.includes("--stdio");
const out = {};
const client = new Client(
  { name: "sluice-e2e-ts", version: "1.0.0" },
  { capabilities: { sampling: {}, elicitation: {}, roots: { listChanged: true } } },
);
client.setRequestHandler(CreateMessageRequestSchema, async (req) => ({
  model: "e2e-model",
  role: "assistant",
  content: { type: "text", text: `sampled: ${req.params.messages[0].content.text}` },
}));
client.setRequestHandler(ElicitRequestSchema, async () => ({
  action: "accept",
  content: { name: "Ada", check: true, email: "ada@example.com", integer: 7, number: 3.5, untitledSingleSelectEnum: "option1" },
}));
const logs = [];
client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => logs.push(n.params.level));
client.setNotificationHandler(ResourceUpdatedNotificationSchema, () => {});

function connectTo(target) {
  if (stdio) {
    const [command, ...args] = JSON.parse(target);
    return new StdioClientTransport({ command, args, stderr: "inherit" });
  }
  return legacy ? new SSEClientTransport(new URL(target)) : new StreamableHTTPClientTransport(new URL(target));
}
const transport = connectTo(process.argv[2]);
await client.connect(transport);
out.server = client.getServerVersion();
out.sessionIdPresent = legacy || stdio || typeof transport.sessionId === "string";
out.protocolVersion = transport.protocolVersion ?? null;

const tools = await client.listTools();
out.tools = tools.tools.map((t) => t.name).sort();
out.echo = await client.callTool({ name: "echo", arguments: { message: "hello through the gateway \u00e9\u{1F600}" } });
out.sum = await client.callTool({ name: "get-sum", arguments: { a: 17, b: 25 } });
out.structured = await client.callTool({ name: "get-structured-content", arguments: { location: "New York" } });
out.image = (await client.callTool({ name: "get-tiny-image", arguments: {} })).content.map((c) => c.type);

const progress = [];
out.longRunning = await client.callTool(
  { name: "trigger-long-running-operation", arguments: { duration: 1, steps: 4 } },
  undefined,
  { onprogress: (p) => progress.push([p.progress, p.total]) },
);
out.progress = progress;

out.sampling = await client.callTool({ name: "trigger-sampling-request", arguments: { prompt: "say hi", maxTokens: 20 } });
out.elicitation = await client.callTool({ name: "trigger-elicitation-request", arguments: {} });

const resources = await client.listResources();
out.resourceCount = resources.resources.length;
const first = resources.resources[0];
out.resourceRead = await client.readResource({ uri: first.uri });
out.templates = (await client.listResourceTemplates()).resourceTemplates.map((t) => t.uriTemplate).sort();
out.subscribe = await client.subscribeResource({ uri: first.uri });
out.unsubscribe = await client.unsubscribeResource({ uri: first.uri });

const prompts = await client.listPrompts();
out.prompts = prompts.prompts.map((p) => p.name).sort();
out.simplePrompt = await client.getPrompt({ name: "simple-prompt" });
out.argsPrompt = await client.getPrompt({ name: "args-prompt", arguments: { city: "Paris", state: "TX" } });
out.completion = await client.complete({
  ref: { type: "ref/prompt", name: "completable-prompt" },
  argument: { name: "department", value: "E" },
});
out.setLevel = await client.setLoggingLevel("debug");
out.ping = await client.ping();

if (!legacy && !stdio) {
  await transport.terminateSession();
}
out.terminated = transport.sessionId === undefined;
await client.close();
console.log(JSON.stringify(out));
