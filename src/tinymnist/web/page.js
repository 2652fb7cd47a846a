// The draw-a-digit page with no server: every stroke is prepared and classified here (tinymnist.js).
"use strict";
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", {willReadFrequently: true});
const seen = document.getElementById("seen").getContext("2d");
const probs = document.getElementById("probs");
const error = document.getElementById("error");
const model = TinyMNIST.load(TINYMNIST_MODEL);
let drawing = false, last = null, inked = false, queued = false;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  probs.innerHTML = ""; error.textContent = "";
  seen.clearRect(0, 0, 28, 28);
  inked = false;
  delete document.body.dataset.answer;
  window.tinymnistLast = null;
}

function point(event) {
  const r = pad.getBoundingClientRect();
  return [(event.clientX - r.left) * pad.width / r.width, (event.clientY - r.top) * pad.height / r.height];
}

function stroke(to) {
  ctx.strokeStyle = "#000"; ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(...(last || to)); ctx.lineTo(...to); ctx.stroke();
  last = to; inked = true;
}

function show(pixels, outputs) {
  const p = TinyMNIST.probabilities(outputs), best = p.indexOf(Math.max(...p));
  probs.innerHTML = "";
  p.forEach((v, digit) => {
    const li = document.createElement("li");
    if (digit === best) li.className = "top";
    li.innerHTML = `<span class="digit">${digit}</span><span class="bar" style="width:${Math.max(2, 200 * v)}px"></span>` +
                   `<span class="pct">${(100 * v).toFixed(1)}%</span>`;
    probs.appendChild(li);
  });
  const image = seen.createImageData(28, 28);
  pixels.forEach((v, i) => { image.data.set([v, v, v, 255], 4 * i); });
  seen.putImageData(image, 0, 0);
  window.tinymnistLast = {pixels: Array.from(pixels), probabilities: p};  // for tests and scripts
  document.body.dataset.answer = String(best);
}

function predict() {  // at most once a frame, however fast the pointer moves
  if (!inked || queued) return;
  queued = true;
  requestAnimationFrame(() => {
    queued = false;
    const prepared = TinyMNIST.prepare(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
    if (prepared.error) { error.textContent = prepared.error; return; }
    error.textContent = "";
    show(prepared.pixels, TinyMNIST.forward(model, prepared.pixels));
  });
}

pad.addEventListener("pointerdown", e => { drawing = true; last = null; pad.setPointerCapture(e.pointerId); stroke(point(e)); });
pad.addEventListener("pointermove", e => { if (drawing) { stroke(point(e)); predict(); } });
pad.addEventListener("pointerup", () => { drawing = false; last = null; predict(); });
pad.addEventListener("pointercancel", () => { drawing = false; last = null; });
document.getElementById("clear").addEventListener("click", clearPad);

clearPad();
const acc = model.recorded_test_acc == null ? "" : `, ${model.recorded_test_acc.toFixed(2)}% recorded test accuracy`;
document.getElementById("model").textContent =
  `Answering: ${model.name}, ${model.params.toLocaleString("en")} parameters${acc}`;
document.body.dataset.ready = String(performance.now());  // milliseconds from navigation to a model ready to answer
