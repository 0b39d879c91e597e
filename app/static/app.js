"use strict";
// The page's whole logic: ask the app's JSON API (app/main.py), show what it answers.
const $ = (id) => document.getElementById(id);
// The last answer: {token, mode, result, model}, and `video`, what feedback sends back with the
// token ({file, name}: the uploaded File or the recorded Blob; or {url}: the link, fetched again).
let last = null;
let recorder = null;  // a MediaRecorder while recording

function status(text, isError = false, el = $("status")) {
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function loadModel() {
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    if (!r.ok) throw new Error(m.error || r.statusText);
    $("model-info").textContent = `Model ${m.name} ${m.version || ""} · ${m.labels.length} signs`;
    $("gloss").replaceChildren(...m.labels.map((g) => new Option(g, g)));
    $("feedback").dataset.enabled = m.feedback ? "1" : "";
  } catch (e) {
    $("model-info").textContent = `The model is not reachable: ${e.message}`;
  }
}

async function predict(form, video) {
  form.append("mode", $("mode").value);
  status("Working…");
  $("predict").disabled = true;
  try {
    const r = await fetch("/api/predict", { method: "POST", body: form });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    show(answer, video);
    status("");
  } catch (e) {
    clear();
    status(e.message, true);
  } finally {
    $("predict").disabled = false;
  }
}

function clear() {
  last = null;
  document.querySelector("[data-testid=prediction]").textContent = "";
  $("pending").textContent = "";
  $("bars").replaceChildren();
  $("timeline").replaceChildren();
  $("probs").hidden = true;
  $("legend").replaceChildren();
  $("feedback").hidden = true;
}

function show(answer, video) {
  clear();
  last = { ...answer, video };
  const res = answer.result;
  const words = answer.mode === "word" ? res.glosses.slice(0, 1) : res.words;
  document.querySelector("[data-testid=prediction]").textContent = words.join(" ");
  if (answer.mode === "word") {
    $("bars").replaceChildren(...res.glosses.map((g, i) => {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(res.scores[i] * 200)}px`;
      li.append(`${g} ${(res.scores[i] * 100).toFixed(1)}%`, bar);
      return li;
    }));
  } else {
    const end = Math.max(1, ...res.spans.map((s) => s[1] + 1));
    $("timeline").replaceChildren(...res.words.map((w, i) => {
      const [a, b] = res.spans[i];
      const d = document.createElement("div");
      d.className = "span";
      d.style.left = `${(100 * a) / end}%`;
      d.style.width = `${(100 * (b - a + 1)) / end}%`;
      d.title = `${w}: frames ${a}-${b}, confidence ${(res.confidences[i] * 100).toFixed(0)}%`;
      d.textContent = w;
      return d;
    }));
    if (res.frame_probs) drawProbs(res.words, res.frame_probs);
    if (!res.words.length) status("No sign found in this video.");
  }
  if ($("feedback").dataset.enabled) {
    $("feedback").hidden = false;
    if (words.length) $("gloss").value = words[0];
    $("correct").disabled = $("wrong").disabled = !answer.token;
    status(answer.token ? "" : answer.feedback_error || "", !answer.token, $("feedback-status"));
  }
}

const COLOURS = ["#2962ff", "#d50000", "#00c853", "#ff6d00", "#aa00ff", "#00b8d4"];

// One curve per word (P of its gloss, frame by frame) and a grey one for "no sign".
function drawProbs(words, rows) {
  const canvas = $("probs");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  const series = [...words, "no sign"];
  series.forEach((name, j) => {
    ctx.strokeStyle = j === words.length ? "#9e9e9e" : COLOURS[j % COLOURS.length];
    ctx.setLineDash(j === words.length ? [4, 3] : []);
    ctx.beginPath();
    rows.forEach((row, t) => {
      const x = (t / Math.max(1, rows.length - 1)) * w, y = h - row[j] * (h - 4) - 2;
      if (t === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  });
  canvas.dataset.series = JSON.stringify(series);
  canvas.hidden = false;
  $("legend").replaceChildren(...series.map((name, j) => {
    const s = document.createElement("span");
    s.style.color = j === words.length ? "#757575" : COLOURS[j % COLOURS.length];
    s.textContent = `— ${name}`;
    return s;
  }));
}

// The token says what was predicted (signed by the app); the video goes again with it, so any
// of the app's replicas can take the feedback: none keeps the video or the answer in between.
async function sendFeedback(verdict) {
  if (!last || !last.token) return;
  const form = new FormData();
  form.append("token", last.token);
  form.append("verdict", verdict);
  if (verdict === "wrong") form.append("gloss", $("gloss").value);
  if (last.video.url) form.append("url", last.video.url);
  else form.append("file", last.video.file, last.video.name);
  try {
    const r = await fetch("/api/feedback", { method: "POST", body: form });
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    status(out.status === "stored" ? "Thank you: feedback stored."
      : `Thank you: the store is unreachable, so your feedback is kept here and sent when it is back (${out.reason || ""}).`,
      false, $("feedback-status"));
  } catch (e) {
    status(`Feedback not sent: ${e.message}`, true, $("feedback-status"));
  }
}

// The camera's stream, or null (and the reason on the page) when there is none.
async function openCamera() {
  try {
    return await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    status(`No camera: ${e.message}`, true);
    return null;
  }
}

async function toggleRecord() {
  const button = $("record");
  if (recorder) { recorder.stop(); return; }
  const stream = await openCamera();
  if (!stream) return;
  const chunks = [];
  recorder = new MediaRecorder(stream, { mimeType: "video/webm" });
  recorder.ondataavailable = (ev) => { if (ev.data.size) chunks.push(ev.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    button.setAttribute("aria-pressed", "false");
    $("preview").hidden = true;
    const form = new FormData();
    const blob = new Blob(chunks, { type: "video/webm" });
    form.append("file", blob, "recording.webm");
    predict(form, { file: blob, name: "recording.webm" });
  };
  $("preview").srcObject = stream;
  $("preview").hidden = false;
  $("preview").play();
  recorder.start();
  // A toggle keeps its name ("Record"); aria-pressed says it is on (ARIA's toggle button).
  button.setAttribute("aria-pressed", "true");
  status("Recording… press Record again when the sign is done.");
}


// Live mode: each frame the camera presents, at 160 x 120, goes over a WebSocket as it comes, one
// message in flight: the frames that come while the app is busy go together in the next. The
// app answers each message with the words that are final (shown once, in order) and those still
// pending. The connection is the session (the replica that took it holds it): if it drops
// (the replica went away), the page opens a new one once and carries on, keeping the words
// already shown.
const LIVE_W = 160, LIVE_H = 120, MAX_FRAMES = 50;  // the app takes 50 per message
const LIVE_HINT = "Live: sign in front of the camera; press Live again to stop.";
// Close codes that mean the server went away rather than refused: going away, dropped, server
// error, restarting, bad gateway. Others (a limit, too many sessions, idle) are said and stop.
const RECONNECT = new Set([1001, 1006, 1011, 1012, 1014]);
let live = null;

async function toggleLive() {
  if (live) { stopLive(); return; }
  const stream = await openCamera();
  if (!stream) return;
  clear();
  const canvas = document.createElement("canvas");
  canvas.width = LIVE_W; canvas.height = LIVE_H;
  const mine = live = { stream, canvas, ctx: canvas.getContext("2d", { willReadFrequently: true }),
                       frames: [], busy: true, said: [], retried: false, ws: null };
  connectLive(mine);
  $("preview").srcObject = stream;
  $("preview").hidden = false;
  await $("preview").play();
  if (live !== mine) return;  // stopped meanwhile
  const video = $("preview");
  if (video.requestVideoFrameCallback) {  // every frame once, as soon as it is presented
    const onFrame = () => {
      if (live !== mine) return;
      captureFrame();
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  } else {
    mine.timer = setInterval(captureFrame, 40);
  }
  $("live").setAttribute("aria-pressed", "true");
  status(LIVE_HINT);
}

function connectLive(mine) {
  const url = new URL("/api/live/ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  mine.ws = ws;
  mine.busy = true;  // nothing is sent before the socket is open and knows the frame size
  ws.onopen = () => {
    ws.send(JSON.stringify({ width: LIVE_W, height: LIVE_H }));
    mine.frames.splice(0, Math.max(0, mine.frames.length - MAX_FRAMES));  // no backlog
    mine.busy = false;
  };
  ws.onmessage = (ev) => {
    const out = JSON.parse(ev.data);
    mine.busy = false;
    if (out.error) { status(`Live: ${out.error}`, true); return; }
    if (mine.retried || $("status").classList.contains("error")) status(LIVE_HINT);
    mine.retried = false;
    mine.said.push(...out.final.map((w) => w.word));
    document.querySelector("[data-testid=prediction]").textContent = mine.said.join(" ");
    $("pending").textContent = out.pending.map((w) => w.word).join(" ");
    if (mine.frames.length) sendChunk(mine);  // what came meanwhile, at once
  };
  ws.onclose = (ev) => {
    if (live !== mine || mine.ws !== ws) return;  // stopped, or already replaced
    if (RECONNECT.has(ev.code) && !mine.retried) {
      mine.retried = true;
      status("Live: the connection dropped; carrying on in a new session…");
      connectLive(mine);
      return;
    }
    const why = ev.reason || `the connection closed (code ${ev.code})`;
    stopLive();
    status(`Live stopped: ${why}`, true);
  };
}

function captureFrame() {
  if (!live) return;
  live.ctx.drawImage($("preview"), 0, 0, LIVE_W, LIVE_H);
  const rgba = live.ctx.getImageData(0, 0, LIVE_W, LIVE_H).data;
  const rgb = new Uint8Array(LIVE_W * LIVE_H * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2];
  }
  live.frames.push(rgb);
  if (!live.busy) sendChunk(live);
}

// One message in flight at a time: the next goes when the app has answered this one.
function sendChunk(mine) {
  if (mine.ws.readyState !== WebSocket.OPEN) return;
  const frames = mine.frames.splice(0, MAX_FRAMES);
  const body = new Uint8Array(frames.length * LIVE_W * LIVE_H * 3);
  frames.forEach((f, i) => body.set(f, i * f.length));
  mine.busy = true;
  mine.ws.send(body);
}

function stopLive() {
  const mine = live;
  live = null;
  clearInterval(mine.timer);
  mine.stream.getTracks().forEach((t) => t.stop());
  mine.ws.close(1000);
  $("pending").textContent = "";
  $("preview").hidden = true;
  $("live").setAttribute("aria-pressed", "false");
  status("");
}

$("predict").addEventListener("click", () => {
  const form = new FormData();
  const file = $("file").files[0];
  const url = $("url").value.trim();
  let video;
  if (file) { form.append("file", file); video = { file, name: file.name }; }
  else if (url) { form.append("url", url); video = { url }; }
  else { status("Choose a video file, give a video URL, or record one.", true); return; }
  predict(form, video);
});
$("record").addEventListener("click", toggleRecord);
$("live").addEventListener("click", toggleLive);
$("correct").addEventListener("click", () => sendFeedback("correct"));
$("wrong").addEventListener("click", () => sendFeedback("wrong"));
loadModel();
