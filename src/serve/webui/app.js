// The chat page of `tinyllama serve`. Plain JavaScript, no dependency. Everything a user or the
// model writes is untrusted: it reaches the page as text nodes only (never innerHTML), and the
// markdown below builds elements from a fixed set (p, pre, code, ul, ol, li, strong, em, h1-h6)
// with textContent, so no attribute, link, image or script can come from it.
"use strict";

const STORE = { conversations: "tinyllama.conversations", current: "tinyllama.current", settings: "tinyllama.settings", key: "tinyllama.apiKey" };
const $ = (id) => document.getElementById(id);

let props = null; // /props: model, n_ctx, default_generation_settings
let conversations = load(STORE.conversations, []);
let currentId = localStorage.getItem(STORE.current);
let running = null; // { controller, message } while a reply streams

function load(key, fallback) {
  try { const v = JSON.parse(localStorage.getItem(key)); return v === null ? fallback : v; } catch { return fallback; }
}
function save() {
  localStorage.setItem(STORE.conversations, JSON.stringify(conversations));
  if (currentId) localStorage.setItem(STORE.current, currentId);
}
function current() {
  let c = conversations.find((c) => c.id === currentId);
  if (!c) {
    c = { id: String(Date.now()) + Math.random().toString(16).slice(2, 6), title: "New chat", messages: [] };
    conversations.unshift(c);
    currentId = c.id;
  }
  return c;
}
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = localStorage.getItem(STORE.key);
  if (key) h.Authorization = "Bearer " + key; // a header, never the URL
  return h;
}
function showError(text) {
  $("error").textContent = text || "";
  $("error").hidden = !text;
}

// ---- markdown, safely: elements from a fixed list, text as text nodes ----
function inline(text, parent) {
  const re = /(`[^`\n]+`|\*\*[^*\n]+\*\*|\*[^*\n]+\*)/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) parent.appendChild(document.createTextNode(text.slice(last, m.index)));
    const t = m[0];
    const el = document.createElement(t[0] === "`" ? "code" : t[1] === "*" ? "strong" : "em");
    el.textContent = t[0] === "`" ? t.slice(1, -1) : t[1] === "*" ? t.slice(2, -2) : t.slice(1, -1);
    parent.appendChild(el);
    last = m.index + t.length;
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}
function markdown(text) {
  const out = document.createDocumentFragment();
  const lines = text.split("\n");
  let para = [];
  let list = null;
  const flush = () => {
    if (para.length) { const p = document.createElement("p"); inline(para.join("\n"), p); out.appendChild(p); para = []; }
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      flush();
      const code = [];
      for (i++; i < lines.length && !lines[i].startsWith("```"); i++) code.push(lines[i]);
      const pre = document.createElement("pre");
      const c = document.createElement("code");
      c.textContent = code.join("\n");
      pre.appendChild(c);
      out.appendChild(pre);
      continue;
    }
    const heading = /^(#{1,6}) (.*)$/.exec(line);
    const item = /^\s*([-*+]|\d+[.)]) (.*)$/.exec(line);
    if (heading) {
      flush();
      const h = document.createElement("h" + heading[1].length);
      inline(heading[2], h);
      out.appendChild(h);
    } else if (item) {
      if (para.length) flush();
      const ordered = /\d/.test(item[1][0]);
      if (!list || (list.tagName === "OL") !== ordered) { list = document.createElement(ordered ? "ol" : "ul"); out.appendChild(list); }
      const li = document.createElement("li");
      inline(item[2], li);
      list.appendChild(li);
    } else if (line.trim() === "") {
      flush();
    } else {
      list = null;
      para.push(line);
    }
  }
  flush();
  return out;
}

// ---- rendering ----
function messageElement(m) {
  const div = document.createElement("div");
  div.className = "message";
  div.dataset.role = m.role;
  div.appendChild(markdown(m.content));
  if (m.stopped) {
    const s = document.createElement("div");
    s.className = "stopped";
    s.textContent = "(stopped)";
    div.appendChild(s);
  }
  return div;
}
function render() {
  const c = current();
  $("messages").replaceChildren(...c.messages.map(messageElement));
  $("conversations").replaceChildren(...conversations.map((x) => {
    const li = document.createElement("li");
    li.textContent = x.title;
    li.title = x.title;
    if (x.id === currentId) li.className = "current";
    li.addEventListener("click", () => { if (!running) { currentId = x.id; save(); render(); } });
    return li;
  }));
  $("messages").scrollTop = $("messages").scrollHeight;
}
function renderStatus(usage) {
  $("model-name").textContent = props ? props.model : "…";
  if (props && usage) $("context-use").textContent = `context ${usage.prompt_tokens + usage.completion_tokens} / ${props.n_ctx}`;
  else if (props) $("context-use").textContent = `context ${props.n_ctx}`;
}

// ---- settings ----
function settings() {
  const d = (props && props.default_generation_settings) || { temperature: 0.8, top_p: 0.95, max_tokens: null };
  return Object.assign({ system: "", temperature: d.temperature, top_p: d.top_p, max_tokens: d.max_tokens }, load(STORE.settings, {}));
}
function showSettings() {
  const s = settings();
  $("system").value = s.system;
  $("temperature").value = s.temperature;
  $("top-p").value = s.top_p;
  $("max-tokens").value = s.max_tokens == null ? "" : s.max_tokens;
}
function readSettings() {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const s = { system: $("system").value, temperature: num("temperature"), top_p: num("top-p"), max_tokens: num("max-tokens") };
  localStorage.setItem(STORE.settings, JSON.stringify(s));
}

// ---- talking to the server ----
async function loadProps() {
  const r = await fetch("/props", { headers: headers() });
  if (r.status === 401) {
    $("api-key-form").hidden = false;
    showError(localStorage.getItem(STORE.key) ? "The server refused that API key: enter its --api-key on the left." : "This server needs an API key: enter it on the left.");
    return false;
  }
  if (!r.ok) { showError(`cannot read /props: HTTP ${r.status}`); return false; }
  props = await r.json();
  $("api-key-form").hidden = !props.api_key_required;
  showError("");
  renderStatus(null);
  showSettings();
  return true;
}

async function send(text) {
  if (running || !props) return;
  readSettings();
  const s = settings();
  const c = current();
  c.messages.push({ role: "user", content: text });
  if (c.title === "New chat") c.title = text.slice(0, 40);
  const reply = { role: "assistant", content: "" };
  c.messages.push(reply);
  save();
  render();
  const el = $("messages").lastElementChild;
  el.classList.add("streaming");
  const history = c.messages.slice(0, -1).map((m) => ({ role: m.role, content: m.content }));
  const body = { model: props.model, messages: (s.system ? [{ role: "system", content: s.system }] : []).concat(history), stream: true, stream_options: { include_usage: true } };
  if (s.temperature != null) body.temperature = s.temperature;
  if (s.top_p != null) body.top_p = s.top_p;
  if (s.max_tokens != null) body.max_tokens = s.max_tokens;
  const controller = new AbortController();
  running = { controller, message: reply };
  $("composer").querySelector('[data-action="stop"]').disabled = false;
  $("composer").querySelector('[data-action="send"]').disabled = true;
  showError("");
  let first = null, chunks = 0, usage = null, pending = false;
  const redraw = () => { pending = false; el.replaceChildren(markdown(reply.content)); $("messages").scrollTop = $("messages").scrollHeight; };
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!r.ok) {
      const e = await r.json().catch(() => null);
      throw new Error((e && e.error && e.error.message) || `HTTP ${r.status}`);
    }
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const msg = JSON.parse(line.slice(6));
          if (msg.usage) usage = msg.usage;
          const delta = msg.choices && msg.choices[0] && msg.choices[0].delta;
          if (delta && delta.content) {
            if (first === null) first = performance.now();
            chunks++;
            reply.content += delta.content;
            if (!pending) { pending = true; requestAnimationFrame(redraw); }
          }
        }
      }
    }
  } catch (e) {
    if (e.name === "AbortError") reply.stopped = true;
    else showError(String(e.message || e));
  } finally {
    running = null;
    el.classList.remove("streaming");
    save();
    render();
    $("composer").querySelector('[data-action="stop"]').disabled = true;
    $("composer").querySelector('[data-action="send"]').disabled = false;
    const tokens = usage ? usage.completion_tokens : chunks;
    const seconds = first === null ? 0 : (performance.now() - first) / 1000;
    if (tokens > 1 && seconds > 0) $("speed").textContent = `${((tokens - 1) / seconds).toFixed(1)} tokens/s`;
    renderStatus(usage);
  }
}

function stop() {
  if (running) running.controller.abort();
}

// ---- wiring ----
document.addEventListener("DOMContentLoaded", async () => {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value;
    if (!text.trim() || running) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") stop(); });
  $("composer").querySelector('[data-action="stop"]').addEventListener("click", stop);
  document.querySelector('[data-action="new-chat"]').addEventListener("click", () => {
    if (running) return;
    currentId = null;
    current();
    save();
    render();
  });
  document.querySelector('[data-action="reset-settings"]').addEventListener("click", () => { localStorage.removeItem(STORE.settings); showSettings(); });
  for (const id of ["system", "temperature", "top-p", "max-tokens"]) $(id).addEventListener("change", readSettings);
  $("api-key-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    localStorage.setItem(STORE.key, $("api-key").value);
    $("api-key").value = "";
    await loadProps();
  });
  render();
  await loadProps();
});
