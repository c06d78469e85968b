// The chat page: plain ES module, no dependencies. Model text only ever reaches the page as
// text (markdown.js builds DOM nodes; everything else uses textContent), and the server's
// Content-Security-Policy allows no inline script, so neither a reply nor a model name can
// run code here.
import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "pagedllm-api-key";
const $ = (id) => document.getElementById(id);
const api = (path) => new URL(path, document.baseURI).href;  // relative: works under --root-path

const history = [];  // {role, content} of this conversation (kept in the page only)
let controller = null;  // the running request's AbortController

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function askForKey() {
  return new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key").value = "";
    dialog.addEventListener("close", () => {
      const key = $("key").value.trim();
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      resolve();
    }, { once: true });
    dialog.showModal();
  });
}

async function loadModels() {
  for (;;) {
    const response = await fetch(api("v1/models"), { headers: headers() });
    if (response.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      await askForKey();
      continue;
    }
    if (!response.ok) throw new Error(`GET /v1/models: HTTP ${response.status}`);
    const models = (await response.json()).data || [];
    const select = $("model");
    select.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = String(m.id);
      option.textContent = String(m.id);
      return option;
    }));
    return;
  }
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {  // no clipboard API off localhost without TLS: the older way
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
}

function addMessage(role, text) {
  const node = document.createElement("div");
  node.className = `message ${role}`;
  const content = document.createElement("div");
  content.className = "content";
  if (role === "user") content.textContent = text;
  else renderMarkdown(text, content);
  node.append(content);
  $("messages").append(node);
  node.scrollIntoView({ block: "end" });
  return node;
}

function assistantView() {
  const node = addMessage("assistant", "");
  const reasoning = document.createElement("details");
  reasoning.className = "reasoning";
  reasoning.hidden = true;
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const reasoningText = document.createElement("div");
  reasoning.append(summary, reasoningText);
  node.prepend(reasoning);
  const meta = document.createElement("div");
  meta.className = "meta";
  const stats = document.createElement("span");
  stats.className = "stats";
  meta.append(stats);
  node.append(meta);
  node.dataset.updates = "0";
  return { node, content: node.querySelector(".content"), reasoning, reasoningText, meta, stats };
}

function requestBody() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  messages.push(...history);
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
  };
  const number = (id, parse) => {
    const v = parse($(id).value);
    return Number.isFinite(v) ? v : undefined;
  };
  body.temperature = number("temperature", parseFloat);
  body.top_p = number("top-p", parseFloat);
  body.max_tokens = number("max-tokens", (v) => parseInt(v, 10));
  return body;
}

// Server-sent events from a fetch body: yields each "data:" payload.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data) yield data;
    }
  }
}

function showStats(view, s) {
  const parts = [];
  if (s.ttft !== null) parts.push(`TTFT ${(s.ttft * 1000).toFixed(0)} ms`);
  if (s.usage) {
    const u = s.usage;
    const cached = u.prompt_tokens_details?.cached_tokens ?? 0;
    const decode = s.last !== null && s.first !== null ? (s.last - s.first) / 1000 : 0;
    if (decode > 0 && u.completion_tokens > 1) {
      parts.push(`${((u.completion_tokens - 1) / decode).toFixed(1)} tokens/s`);
    }
    parts.push(`${u.completion_tokens} tokens`, `prompt ${u.prompt_tokens} (cached ${cached})`);
    view.node.dataset.cachedTokens = String(cached);
    view.node.dataset.completionTokens = String(u.completion_tokens);
  }
  if (s.stopped) parts.push("stopped");
  view.stats.textContent = parts.join(" · ");
}

async function generate() {
  showError("");
  const view = assistantView();
  const s = { start: performance.now(), first: null, last: null, ttft: null, usage: null, stopped: false };
  let text = "";
  let reasoning = "";
  controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch(api("v1/chat/completions"), {
      method: "POST", headers: headers(), body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (!response.ok) {
      const detail = await response.json().catch(() => ({}));
      throw new Error(detail?.error?.message || `HTTP ${response.status}`);
    }
    for await (const data of events(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "The server failed the request.");
      if (chunk.usage) s.usage = chunk.usage;
      const delta = chunk.choices?.[0]?.delta;
      if (!delta) continue;
      const thought = delta.reasoning ?? delta.reasoning_content;
      if (typeof thought === "string" && thought) reasoning += thought;
      if (typeof delta.content === "string" && delta.content) text += delta.content;
      if ((thought || delta.content) && s.first === null) {
        s.first = performance.now();
        s.ttft = (s.first - s.start) / 1000;
      }
      s.last = performance.now();
      if (reasoning) {
        view.reasoning.hidden = false;
        view.reasoningText.textContent = reasoning;
      }
      renderMarkdown(text, view.content);
      view.node.dataset.updates = String(Number(view.node.dataset.updates) + 1);
      showStats(view, s);
    }
  } catch (err) {
    if (err.name === "AbortError") s.stopped = true;  // the server aborts it on disconnect
    else showError(String(err.message || err));
  } finally {
    controller = null;
    setBusy(false);
  }
  history.push({ role: "assistant", content: text });
  showStats(view, s);
  view.node.dataset.done = "true";
  view.meta.append(
    button("Copy", () => copyText(text)),
    button("Regenerate", () => regenerate(view.node)),
  );
}

function regenerate(node) {
  if (controller || node !== $("messages").lastElementChild) return;  // only the last reply
  history.pop();
  node.remove();
  generate();
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  $("prompt").disabled = busy;
}

function send(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  history.push({ role: "user", content: text });
  addMessage("user", text);
  generate();
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("stop").addEventListener("click", () => controller?.abort());
$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  history.length = 0;
  $("messages").replaceChildren();
});
loadModels().catch((err) => showError(String(err.message || err)));
