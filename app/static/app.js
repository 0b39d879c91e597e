"use strict";
// The page's whole logic: ask the app's JSON API (app/server.py), show what it answers.
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
  $("bars").replaceChildren();
  $("timeline").replaceChildren();
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
    if (!res.words.length) status("No sign found in this video.");
  }
  if ($("feedback").dataset.enabled) {
    $("feedback").hidden = false;
    if (words.length) $("gloss").value = words[0];
    status("", false, $("feedback-status"));
  }
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

async function toggleRecord() {
  const button = $("record");
  if (recorder) { recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
  } catch (e) {
    status(`No camera: ${e.message}`, true);
    return;
  }
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

$("predict").addEventListener("click", () => {
  const form = new FormData();
  const file = $("file").files[0];
  if (file) form.append("file", file);
  else if ($("url").value.trim()) form.append("url", $("url").value.trim());
  else { status("Choose a video file, give a video URL, or record one.", true); return; }
  predict(form);
});
$("record").addEventListener("click", toggleRecord);
$("correct").addEventListener("click", () => sendFeedback("correct"));
$("wrong").addEventListener("click", () => sendFeedback("wrong"));
loadModel();
