// Past conversations: list, read, continue (by voice or text), and "forget me".
// REST: GET /api/conversations, GET /api/conversations/{id},
// POST /api/conversations/{id}/resume, DELETE /api/users/me/memory (docs/protocol.md).
"use strict";

function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  return fetch(path, { ...init, headers }).then(async (res) => {
    const body = res.status === 204 ? {} : await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(`${body.error || res.status}: ${body.message || res.statusText}`);
    return body;
  });
}

const when = (unix) => new Date(unix * 1000).toLocaleString();

async function listConversations() {
  const list = $("conversations");
  try {
    const page = await api("/api/conversations?limit=20");
    list.replaceChildren();
    for (const c of page.conversations) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      const a = document.createElement("a");
      a.textContent = c.title || "(no words)";
      a.onclick = () => openConversation(c.id);
      const t = document.createElement("time");
      t.textContent = `${when(c.last_turn_at_unix)} · ${c.turns} turn${c.turns === 1 ? "" : "s"}`;
      li.append(a, t);
      list.appendChild(li);
    }
    if (!page.conversations.length) list.innerHTML = "<li>none yet</li>";
  } catch (err) {
    list.innerHTML = "";
    line("err", `conversations: ${err.message}`);
  }
}

async function openConversation(id) {
  const view = $("reading");
  let c;
  try {
    c = await api(`/api/conversations/${encodeURIComponent(id)}`);
  } catch (err) { line("err", `conversation: ${err.message}`); return; }
  view.replaceChildren();
  view.dataset.id = id;
  for (const m of c.messages) {
    const div = document.createElement("div");
    div.className = m.role === "user" ? "user" : m.cancelled ? "bot cancelled" : "bot";
    div.textContent = m.text;
    view.appendChild(div);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  const go = document.createElement("button");
  go.id = "continue";
  go.textContent = "Continue this conversation";
  go.onclick = () => continueConversation(id);
  actions.appendChild(go);
  view.appendChild(actions);
  view.hidden = false;
}

// Continuing: a fresh resume token for that session, then the WebSocket resumes it;
// what is said or typed next is answered with that conversation's context.
async function continueConversation(id) {
  let grant;
  try {
    grant = await api(`/api/conversations/${encodeURIComponent(id)}/resume`, { method: "POST" });
  } catch (err) { line("err", `continue: ${err.message}`); return; }
  flush(); // the reply playing now belongs to the conversation being left
  $("log").replaceChildren();
  for (const el of [...$("reading").children]) {
    if (!el.classList.contains("actions")) $("log").appendChild(el.cloneNode(true));
  }
  $("reading").hidden = true;
  state.replies.clear();
  Object.assign(state, { sessionId: grant.session_id, resumeToken: grant.resume_token,
                         lastEvent: Number.MAX_SAFE_INTEGER, lastAudio: Number.MAX_SAFE_INTEGER });
  if (state.ws) state.ws.close(4001, "continuing another conversation"); // onclose reconnects
}

$("refresh").onclick = listConversations;
$("forget").onclick = async () => {
  if (!confirm("Forget every conversation and memory of yours?")) return;
  try {
    const gone = await api("/api/users/me/memory", { method: "DELETE" });
    line("bot", `Forgotten: ${gone.conversations} conversations, ${gone.memories} memories.`);
    $("reading").hidden = true;
    await listConversations();
  } catch (err) { line("err", `forget: ${err.message}`); }
};
listConversations();
