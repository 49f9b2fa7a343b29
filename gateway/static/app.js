// Morgan's browser client. Protocol: docs/protocol.md. No build step.
"use strict";

const FRAME_SAMPLES = 512; // 32 ms at 16 kHz
const $ = (id) => document.getElementById(id);
// The API key comes in the URL's fragment (/#api_key=KEY), which no request carries,
// or from the key form; it is kept for this tab only and taken out of the address bar.
// The gateway refuses keys in URLs (docs/protocol.md, "Authentication").
let apiKey = new URLSearchParams(location.hash.slice(1)).get("api_key")
  || sessionStorage.getItem("morgan.api_key");
if (location.hash.includes("api_key=")) history.replaceState(null, "", location.pathname);
if (apiKey) sessionStorage.setItem("morgan.api_key", apiKey);

// Microphone: an AudioWorklet turns Float32 samples into Int16 frames of 32 ms.
const WORKLET = `
class Pcm16 extends AudioWorkletProcessor {
  constructor() { super(); this.buf = new Int16Array(${FRAME_SAMPLES}); this.n = 0; }
  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (!ch) return true;
    for (let i = 0; i < ch.length; i++) {
      const s = Math.max(-1, Math.min(1, ch[i]));
      this.buf[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.n === this.buf.length) {
        this.port.postMessage(this.buf.buffer, [this.buf.buffer]);
        this.buf = new Int16Array(${FRAME_SAMPLES}); this.n = 0;
      }
    }
    return true;
  }
}
registerProcessor("pcm16", Pcm16);`;

const state = {
  ws: null, sessionId: null, resumeToken: null, lastEvent: 0, lastAudio: 0, ended: false, retry: 0,
  mic: null, pendingAudio: null, replies: new Map(), outRate: 22050,
};

// ---- reply playback: AudioBuffers scheduled back to back ----
const player = { ctx: null, next: 0, sources: new Set() };

function play(header, bytes) {
  if (!player.ctx) player.ctx = new AudioContext();
  const pcm = new Int16Array(bytes);
  if (pcm.length === 0) return;
  const buf = player.ctx.createBuffer(1, pcm.length, header.rate);
  const data = buf.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) data[i] = pcm[i] / 0x8000;
  const src = player.ctx.createBufferSource();
  src.buffer = buf;
  src.connect(player.ctx.destination);
  const at = Math.max(player.next, player.ctx.currentTime + 0.05);
  src.start(at);
  player.next = at + buf.duration;
  player.sources.add(src);
  src.onended = () => player.sources.delete(src);
}

function flush() {
  for (const src of player.sources) { try { src.stop(); } catch (_) { /* not started */ } }
  player.sources.clear();
  player.next = 0;
}

const playing = () => player.sources.size > 0;

// ---- transcript view ----
function line(cls, text) {
  const div = document.createElement("div");
  div.className = cls;
  div.textContent = text;
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function reply(turn) {
  if (!state.replies.has(turn)) state.replies.set(turn, line("bot", ""));
  return state.replies.get(turn);
}

function onEvent(msg) {
  if (typeof msg.id === "number") {  // MAX_SAFE_INTEGER: "I have all so far" (history.js)
    const seen = state.lastEvent === Number.MAX_SAFE_INTEGER ? 0 : state.lastEvent;
    state.lastEvent = Math.max(seen, msg.id);
  }
  switch (msg.type) {
    case "session.ready":
      state.sessionId = msg.session_id;
      if (msg.resume_token) state.resumeToken = msg.resume_token;
      state.outRate = msg.output.rate;
      state.retry = 0;
      $("status").textContent = msg.resumed ? "resumed" : "connected";
      $("talk").disabled = false;
      break;
    case "vad.speech_started": $("vad").textContent = "listening…"; break;
    case "vad.speech_stopped": $("vad").textContent = "thinking…"; break;
    case "transcript": line("user", msg.text); break;
    case "reply.delta": reply(msg.turn).textContent += msg.text; $("vad").textContent = ""; break;
    case "reply.done": reply(msg.turn).textContent = msg.text; break;
    case "reply.cancelled":
      if (msg.flush) flush();
      if (state.replies.has(msg.turn)) state.replies.get(msg.turn).classList.add("cancelled");
      break;
    case "error":
      if (msg.code === "unknown_session") {  // the session expired: start a new one
        state.sessionId = state.resumeToken = null;
        state.lastEvent = state.lastAudio = 0;
        state.ws.send(JSON.stringify(START));
        break;
      }
      line("err", `${msg.code}: ${msg.message}`);
      break;
    case "audio": state.pendingAudio = msg; break;
  }
}

// ---- the API key: asked for when the gateway wants one ----
function askForKey(why) {
  $("status").textContent = why;
  $("keyform").hidden = false;
  $("key").focus();
}

$("keyform").onsubmit = (ev) => {
  ev.preventDefault();
  apiKey = $("key").value.trim();
  if (!apiKey) return;
  sessionStorage.setItem("morgan.api_key", apiKey);
  $("key").value = "";
  $("keyform").hidden = true;
  state.ended = false;
  connect();
  if (typeof listConversations === "function") listConversations();
};

// A single-use ticket for the socket (POST /api/session, key in the header): the key
// itself never goes into the WebSocket's URL. Null without a key (a gateway without
// keys); throws with the HTTP status otherwise.
async function ticket() {
  if (!apiKey) return null;
  const res = await fetch("/api/session", { method: "POST", headers: { Authorization: `Bearer ${apiKey}` } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw Object.assign(new Error(body.message || res.statusText), { status: res.status, code: body.error });
  return body.ticket;
}

// ---- the WebSocket, resumed after a drop ----
const START = { type: "session.start", rate: 16000, format: "s16le", channels: 1 };
const REVOKED = 4401; // the server closed the session: its API key was revoked
async function connect() {
  const url = new URL("/ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  try {
    const t = await ticket();
    if (t) url.searchParams.set("ticket", t);
  } catch (err) {
    if (err.status === 401) { askForKey(`API key refused (${err.code}): enter a valid key`); return; }
    retryLater(`no ticket (${err.status || err.message})`);
    return;
  }
  const ws = new WebSocket(url, ["morgan.v1"]);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onopen = () => {
    const start = { ...START };
    if (state.sessionId) {
      Object.assign(start, { session_id: state.sessionId, resume_token: state.resumeToken,
                             last_event: state.lastEvent, last_audio: state.lastAudio });
    }
    ws.send(JSON.stringify(start));
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") { onEvent(JSON.parse(ev.data)); return; }
    const header = state.pendingAudio;
    state.pendingAudio = null;
    if (!header) return;
    state.lastAudio = header.id;
    play(header, ev.data);
  };
  ws.onclose = (ev) => {
    $("talk").disabled = true;
    if (state.ended) { $("status").textContent = "session ended"; return; }
    if (ev.code === REVOKED) {
      sessionStorage.removeItem("morgan.api_key");
      apiKey = null;
      askForKey("this API key was revoked: enter another key");
      return;
    }
    retryLater(`disconnected (${ev.code})`);
  };
}

function retryLater(why) {
  const wait = Math.min(500 * 2 ** state.retry++, 8000);
  $("status").textContent = `${why}; retrying in ${wait / 1000} s`;
  setTimeout(connect, wait);
}

function send(obj) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(obj));
}

// ---- microphone ----
async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  const ctx = new AudioContext({ sampleRate: 16000 });
  const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
  await ctx.audioWorklet.addModule(url);
  const node = new AudioWorkletNode(ctx, "pcm16");
  node.port.onmessage = (ev) => {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(ev.data);
  };
  ctx.createMediaStreamSource(stream).connect(node);
  state.mic = { stream, ctx };
}

function stopMic() {
  if (!state.mic) return;
  state.mic.stream.getTracks().forEach((t) => t.stop());
  state.mic.ctx.close();
  state.mic = null;
}

$("talk").onclick = async () => {
  if (!player.ctx) player.ctx = new AudioContext(); // created on a click, so it may play
  if (state.mic) { stopMic(); $("talk").textContent = "Talk"; $("talk").classList.remove("on"); return; }
  try {
    await startMic();
    $("talk").textContent = "Stop"; $("talk").classList.add("on");
  } catch (err) { line("err", `microphone: ${err.message}`); }
};

$("typed").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  if (!player.ctx) player.ctx = new AudioContext();
  if (playing()) send({ type: "cancel" });
  send({ type: "text", text });
  $("text").value = "";
};

window.addEventListener("pagehide", () => { state.ended = true; });
connect();
