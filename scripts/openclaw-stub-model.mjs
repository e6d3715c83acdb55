// A stand-in for an OpenAI-compatible model server, for the OpenClaw
// end-to-end run (scripts/openclaw-e2e.sh). No dependencies.
//
//   node scripts/openclaw-stub-model.mjs PORT
//
// POST /v1/chat/completions answers '<agent> (stub model) heard: "<message>"'
// (streamed as server-sent events when "stream": true); GET /v1/models
// lists the one model "echo". Every request is logged as one JSON line on
// stdout (time, path, stream, last user message).
import http from "node:http";

const port = Number(process.argv[2] || 18090);

function textOf(m) {
  if (typeof m.content === "string") return m.content;
  if (Array.isArray(m.content)) return m.content.filter((p) => p && p.type === "text").map((p) => p.text).join(" ");
  return "";
}

// roomMessage finds the last message a person (or agent) wrote: OpenClaw
// sends it as a user turn after a "Conversation info" block, and may add a
// user turn of internal context after it.
function roomMessage(messages) {
  for (let i = (messages || []).length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m.role !== "user") continue;
    let t = textOf(m);
    if (t.includes("<<<END_OPENCLAW_INTERNAL_CONTEXT>>>")) continue;
    const fence = t.lastIndexOf("```\n\n");
    if (fence >= 0) t = t.slice(fence + 5);
    const rt = t.indexOf("\n\nRuntime:");
    if (rt >= 0) t = t.slice(0, rt);
    return t.replace(/\s+/g, " ").trim();
  }
  return "";
}

// agentName reads OpenClaw's "Runtime: agent=<id>" line, when present.
function agentName(messages) {
  for (const m of messages || []) {
    const hit = /Runtime: agent=([A-Za-z0-9_-]+)/.exec(textOf(m));
    if (hit) return hit[1];
  }
  return "agent";
}

function answerFor(body) {
  const text = roomMessage(body.messages);
  const tail = text.length > 160 ? text.slice(-160) : text;
  return `${agentName(body.messages)} (stub model) heard: "${tail}"`;
}

const server = http.createServer((req, res) => {
  let raw = "";
  req.on("data", (c) => (raw += c));
  req.on("end", () => {
    const path = req.url.split("?")[0];
    if (req.method === "GET" && path.endsWith("/models")) {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ object: "list", data: [{ id: "echo", object: "model", owned_by: "stub" }] }));
      return;
    }
    if (req.method !== "POST" || !path.endsWith("/chat/completions")) {
      res.writeHead(404, { "content-type": "application/json" });
      res.end(JSON.stringify({ error: { message: `no route ${req.method} ${path}` } }));
      return;
    }
    let body = {};
    try {
      body = JSON.parse(raw || "{}");
    } catch {
      res.writeHead(400);
      res.end();
      return;
    }
    const content = answerFor(body);
    console.log(JSON.stringify({ t: new Date().toISOString(), path, stream: !!body.stream, agent: agentName(body.messages), heard: roomMessage(body.messages).slice(-200) }));
    const id = "chatcmpl-stub-" + Date.now();
    const created = Math.floor(Date.now() / 1000);
    const model = body.model || "echo";
    const usage = { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 };
    if (body.stream) {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive" });
      const send = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
      send({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] });
      send({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: { content }, finish_reason: null }] });
      send({ id, object: "chat.completion.chunk", created, model, choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage });
      res.write("data: [DONE]\n\n");
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({
      id, object: "chat.completion", created, model,
      choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
      usage,
    }));
  });
});
server.listen(port, "127.0.0.1", () => console.log(JSON.stringify({ listening: port })));
