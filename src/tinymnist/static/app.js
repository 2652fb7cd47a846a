// The page talks only to the API: GET /model, POST /predict (a PNG of the canvas), GET /test-digit.
const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen").getContext("2d");
const top3 = document.getElementById("top3");
const error = document.getElementById("error");
const testButton = document.getElementById("test-digit");
const testLabel = document.getElementById("test-label");
let drawing = false, last = null, pending = false, again = false, inked = false;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  top3.innerHTML = ""; error.textContent = ""; testLabel.textContent = "";
  seen.clearRect(0, 0, 28, 28);
  inked = false;
  delete document.body.dataset.answer;
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

pad.addEventListener("pointerdown", e => { drawing = true; last = null; pad.setPointerCapture(e.pointerId); stroke(point(e)); });
pad.addEventListener("pointermove", e => { if (drawing) { stroke(point(e)); predict(); } });
pad.addEventListener("pointerup", () => { drawing = false; last = null; predict(); });
pad.addEventListener("pointercancel", () => { drawing = false; last = null; });

function show(result) {
  top3.innerHTML = "";
  for (const t of result.top3) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="digit">${t.digit}</span><span class="bar" style="width:${Math.max(2, 200 * t.probability)}px"></span>` +
                   `<span class="pct">${(100 * t.probability).toFixed(1)}%</span>`;
    top3.appendChild(li);
  }
  const image = seen.createImageData(28, 28);
  result.input.flat().forEach((v, i) => { image.data.set([v, v, v, 255], 4 * i); });
  seen.putImageData(image, 0, 0);
  document.body.dataset.answer = String(result.top3[0].digit);  // for tests and scripts
}

async function predict() {
  if (!inked) return;
  if (pending) { again = true; return; }
  pending = true;
  document.body.dataset.busy = "1";
  try {
    const blob = await new Promise(resolve => pad.toBlob(resolve, "image/png"));
    const response = await fetch("/predict", {method: "POST", headers: {"Content-Type": "image/png"}, body: blob});
    const body = await response.json();
    if (!response.ok) { error.textContent = body.error; } else { error.textContent = ""; show(body); }
  } catch (e) {
    error.textContent = `the server did not answer (${e})`;
  } finally {
    pending = false;
    if (again) { again = false; predict(); } else { document.body.dataset.busy = "0"; }
  }
}

async function testDigit() {
  const response = await fetch("/test-digit");
  const body = await response.json();
  if (!response.ok) { error.textContent = body.error; return; }
  clearPad();
  const image = ctx.createImageData(28, 28);  // MNIST is light on dark: drawn dark on white, like the pad
  body.image.flat().forEach((v, i) => { image.data.set([255 - v, 255 - v, 255 - v, 255], 4 * i); });
  const small = document.createElement("canvas"); small.width = 28; small.height = 28;
  small.getContext("2d").putImageData(image, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, pad.width, pad.height);
  inked = true;
  testLabel.textContent = `MNIST test image ${body.index}, labelled ${body.label}`;
  predict();
}

async function start() {
  clearPad();
  const info = await (await fetch("/model")).json();
  const acc = info.recorded_test_acc == null ? "not recorded" : `${info.recorded_test_acc.toFixed(2)}% recorded test accuracy`;
  document.getElementById("model").textContent = `Answering: ${info.name}, ${info.params.toLocaleString("en")} parameters, ${acc}`;
  if (!info.test_digits) { testButton.disabled = true; testButton.title = info.test_digits_off_because; testLabel.textContent = `Test digits are off: ${info.test_digits_off_because}`; }
}

document.getElementById("clear").addEventListener("click", clearPad);
testButton.addEventListener("click", testDigit);
start();
