"use strict";
// The page's whole logic: ask the app's JSON API (app/main.py), show what it answers.
const $ = (id) => document.getElementById(id);
let last = null;      // the last answer: {token, mode, result, model}
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

async function predict(form) {
  form.append("mode", $("mode").value);
  status("Working…");
  $("predict").disabled = true;
  try {
    const r = await fetch("/api/predict", { method: "POST", body: form });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    show(answer);
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

function show(answer) {
  clear();
  last = answer;
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
    status("", false, $("feedback-status"));
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

async function sendFeedback(verdict) {
  if (!last) return;
  const body = { token: last.token, verdict, gloss: verdict === "wrong" ? $("gloss").value : null };
  try {
    const r = await fetch("/api/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
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
    form.append("file", new Blob(chunks, { type: "video/webm" }), "recording.webm");
    predict(form);
  };
  $("preview").srcObject = stream;
  $("preview").hidden = false;
  $("preview").play();
  recorder.start();
  // A toggle keeps its name ("Record"); aria-pressed says it is on (ARIA's toggle button).
  button.setAttribute("aria-pressed", "true");
  status("Recording… press Record again when the sign is done.");
}


// Live mode: 160 x 120 frames at 25 fps, sent in chunks of about half a second; the app
// answers with the words that are final (shown once, in order) and those still pending.
const LIVE_W = 160, LIVE_H = 120, CHUNK = 12;
let live = null;

async function toggleLive() {
  if (live) { stopLive(); return; }
  const stream = await openCamera();
  if (!stream) return;
  const r = await fetch("/api/live", { method: "POST" });
  const { session } = await r.json();
  clear();
  const canvas = document.createElement("canvas");
  canvas.width = LIVE_W; canvas.height = LIVE_H;
  live = { session, stream, canvas, ctx: canvas.getContext("2d", { willReadFrequently: true }),
           frames: [], busy: false, said: [] };
  $("preview").srcObject = stream;
  $("preview").hidden = false;
  await $("preview").play();
  live.timer = setInterval(captureFrame, 40);
  $("live").setAttribute("aria-pressed", "true");
  status("Live: sign in front of the camera; press Live again to stop.");
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
  if (live.frames.length >= CHUNK && !live.busy) sendChunk();
}

async function sendChunk() {
  const mine = live;
  const frames = mine.frames.splice(0, 50);  // the app takes at most 50 per request
  const body = new Uint8Array(frames.length * LIVE_W * LIVE_H * 3);
  frames.forEach((f, i) => body.set(f, i * f.length));
  mine.busy = true;
  try {
    const r = await fetch(`/api/live/${mine.session}?width=${LIVE_W}&height=${LIVE_H}`,
                          { method: "POST", body });
    const out = await r.json();
    if (!r.ok) throw new Error(out.error || r.statusText);
    mine.said.push(...out.final.map((w) => w.word));
    document.querySelector("[data-testid=prediction]").textContent = mine.said.join(" ");
    $("pending").textContent = out.pending.map((w) => w.word).join(" ");
  } catch (e) {
    status(`Live: ${e.message}`, true);
  } finally {
    mine.busy = false;
  }
}

function stopLive() {
  clearInterval(live.timer);
  live.stream.getTracks().forEach((t) => t.stop());
  fetch(`/api/live/${live.session}`, { method: "DELETE" });
  live = null;
  $("pending").textContent = "";
  $("preview").hidden = true;
  $("live").setAttribute("aria-pressed", "false");
  status("");
}

$("predict").addEventListener("click", () => {
  const form = new FormData();
  const file = $("file").files[0];
  if (file) form.append("file", file);
  else if ($("url").value.trim()) form.append("url", $("url").value.trim());
  else { status("Choose a video file, give a video URL, or record one.", true); return; }
  predict(form);
});
$("record").addEventListener("click", toggleRecord);
$("live").addEventListener("click", toggleLive);
$("correct").addEventListener("click", () => sendFeedback("correct"));
$("wrong").addEventListener("click", () => sendFeedback("wrong"));
loadModel();
