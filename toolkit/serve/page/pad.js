// The page of `toolkit serve` (GET /): the seed's drawing pad for digit models, an upload-or-camera page
// for image models. It talks only to this server: GET /page/models, POST /v2/models/NAME/classify?view=1.
// A server started with --token-file answers 401 until the page sends its token; the page asks for it
// once and keeps it in this tab's sessionStorage (never in the URL, never in a cookie).
"use strict";

const TOKEN_KEY = "toolkit-serve-token";
const BRUSH_RADIUS = 8;       // the seed's brush: at 280 px it gives strokes about as thick as MNIST's
const DEBOUNCE_MS = 120;      // predict once the pointer rests, not on every move
const TOP_K = 5;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY);
let models = [];
let model = null;

class NeedToken extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  let response;
  try {
    response = await fetch(path, { ...options, headers, cache: "no-store" });
  } catch (e) {
    throw new Error("the server cannot be reached (" + e.message + ")");
  }
  if (response.status === 401) throw new NeedToken(token ? "refused" : "missing");
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || "HTTP " + response.status);
  return body;
}

function problem(text) {
  $("problem").textContent = text || "";
  $("problem").hidden = !text;
}

function askToken(why) {
  $("token-reason").textContent = why === "refused"
    ? "The server refused that token. Enter the content of its --token-file."
    : "This server needs its token (the content of its --token-file).";
  $("pad").hidden = $("photo").hidden = true;
  $("token-form").hidden = false;
  $("token").value = "";
  $("token").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-form").hidden = true;
  start();
});

async function start() {
  try {
    models = (await api("/page/models")).models;
  } catch (e) {
    if (e instanceof NeedToken) return askToken(e.message);
    return problem(e.message);
  }
  problem("");
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  $("model-choice").hidden = models.length < 2;
  choose(models[0].name);
}

$("model").addEventListener("change", (event) => choose(event.target.value));

function choose(name) {
  model = models.find((m) => m.name === name);
  $("where").textContent = `model ${model.name} · ${model.mode} · ${model.provider}`;
  const digit = model.mode === "digit";
  $("pad").hidden = !digit;
  $("photo").hidden = digit;
  if (digit) pad.setup(); else photo.setup();
}

function percent(p) {
  return (100 * p).toFixed(1) + "%";
}

async function classify(blob) {
  const started = performance.now();
  const answer = await api(`/v2/models/${encodeURIComponent(model.name)}/classify?view=1`,
                           { method: "POST", body: blob, headers: { "Content-Type": blob.type } });
  answer.ms = performance.now() - started;
  return answer;
}

function failed(e, where) {
  if (e instanceof NeedToken) return askToken(e.message);
  where.textContent = "no prediction: " + e.message;
}

// ---------------------------------------------------------------- the drawing pad (digit models)

const pad = {
  canvas: $("canvas"),
  inked: false,
  last: null,
  timer: null,
  sequence: 0,      // each drawing state; an answer for an older one is not shown
  inFlight: false,
  again: false,     // the drawing changed while a request was in flight
  answered: 0,

  setup() {
    this.ctx = this.canvas.getContext("2d");
    this.bars = [];
    $("bars").replaceChildren(...model.classes.map((name) => {
      const row = document.createElement("div");
      row.className = "bar";
      row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span>' +
                      '<span class="pct"></span>';
      row.querySelector(".name").textContent = name;
      this.bars.push(row);
      return row;
    }));
    $("view-size").textContent = `model input ${model.width} x ${model.height}`;
    $("view").style.width = 3 * model.width + "px";
    $("view").style.height = 3 * model.height + "px";
    this.clear();
  },

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * this.canvas.width / box.width,
            (event.clientY - box.top) * this.canvas.height / box.height];
  },

  dab([x, y]) {
    this.ctx.beginPath();
    this.ctx.arc(x, y, BRUSH_RADIUS, 0, 2 * Math.PI);
    this.ctx.fill();
  },

  segment([x0, y0], [x1, y1]) {
    // Pointer events come every few pixels when the pointer moves fast: joined, a stroke stays continuous.
    this.ctx.beginPath();
    this.ctx.moveTo(x0, y0);
    this.ctx.lineTo(x1, y1);
    this.ctx.stroke();
  },

  changed() {
    this.inked = true;
    this.sequence++;
    this.busy();
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.predict(), DEBOUNCE_MS);
  },

  clear() {
    clearTimeout(this.timer);
    this.timer = null;
    this.sequence++;
    this.inked = false;
    this.last = null;
    Object.assign(this.ctx, { fillStyle: "#000" });
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    Object.assign(this.ctx, { fillStyle: "#fff", strokeStyle: "#fff", lineWidth: 2 * BRUSH_RADIUS,
                              lineCap: "round", lineJoin: "round" });
    this.show(null);
    this.settle();
  },

  async predict() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.inked) return this.settle();
    if (this.inFlight) {
      this.again = true;
      return;
    }
    this.inFlight = true;
    this.again = false;
    const mine = this.sequence;
    try {
      const blob = await new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
      const answer = await classify(blob);
      if (mine === this.sequence) {
        this.answered++;
        this.show(answer);
      }
    } catch (e) {
      if (mine === this.sequence) failed(e, $("label"));
    } finally {
      this.inFlight = false;
      if (this.again) this.predict(); else this.settle();
    }
  },

  show(answer) {
    const probabilities = answer && !answer.blank ? answer.probabilities : null;
    $("label").textContent = probabilities ? `Prediction: ${answer.label} (${percent(answer.confidence)})`
                                           : "draw a digit";
    model.classes.forEach((name, i) => {
      const p = probabilities ? probabilities[name] : 0;
      const row = this.bars[i];
      row.classList.toggle("top", Boolean(probabilities) && name === answer.label);
      row.querySelector(".fill").style.width = (100 * p) + "%";
      row.querySelector(".pct").textContent = probabilities ? percent(p) : "";
    });
    if (answer) $("view").src = "data:image/png;base64," + answer.view;
    else $("view").removeAttribute("src");
    $("status").textContent = model.provider + (answer ? ` · ${answer.ms.toFixed(1)} ms` : "");
  },

  // What a test (or a curious user) can read: "settled" once the answer shown is for the drawing shown.
  busy() { this.canvas.dataset.state = "busy"; },
  settle() {
    if (this.timer === null && !this.inFlight) {
      this.canvas.dataset.state = "settled";
      this.canvas.dataset.answered = String(this.answered);
    }
  },
};

pad.canvas.addEventListener("pointerdown", (event) => {
  if (event.button !== 0) return;
  pad.canvas.setPointerCapture(event.pointerId);
  pad.last = pad.point(event);
  pad.dab(pad.last);
  pad.changed();
});
pad.canvas.addEventListener("pointermove", (event) => {
  if (pad.last === null) return;
  const here = pad.point(event);
  pad.segment(pad.last, here);
  pad.last = here;
  pad.changed();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.canvas.addEventListener(type, () => {
    if (pad.last === null) return;
    pad.last = null;
    pad.predict();  // the stroke is finished: no reason to wait for the debounce
  });
}
$("clear").addEventListener("click", () => pad.clear());
document.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement || $("pad").hidden) return;
  if (event.key === "c" || event.key === "C") pad.clear();
});

// ---------------------------------------------------------------- upload or camera (image models)

const photo = {
  stream: null,

  setup() {
    $("photo-view-size").textContent = `model input ${model.width} x ${model.height}`;
    const scale = Math.min(1, 160 / Math.max(model.width, model.height));
    $("photo-view").style.width = Math.round(scale * model.width) + "px";
    $("photo-view").style.height = Math.round(scale * model.height) + "px";
    $("photo-status").textContent = model.provider;
  },

  async send(blob) {
    $("picture").src = URL.createObjectURL(blob);
    $("picture").hidden = false;
    $("photo-label").textContent = "…";
    try {
      const answer = await classify(blob);
      this.show(answer);
    } catch (e) {
      failed(e, $("photo-label"));
    }
  },

  show(answer) {
    if (answer.blank) {
      $("photo-label").textContent = "nothing to classify (a blank image)";
      $("topk").replaceChildren();
    } else {
      $("photo-label").textContent = `${answer.label} (${percent(answer.confidence)})`;
      const ranked = Object.entries(answer.probabilities).sort((a, b) => b[1] - a[1]).slice(0, TOP_K);
      $("topk").replaceChildren(...ranked.map(([name, p]) => {
        const item = document.createElement("li");
        item.textContent = name;
        const pct = document.createElement("span");
        pct.className = "pct";
        pct.textContent = percent(p);
        item.append(pct);
        return item;
      }));
    }
    $("photo-view").src = "data:image/png;base64," + answer.view;
    $("photo-status").textContent = `${model.provider} · ${answer.ms.toFixed(1)} ms`;
  },

  async camera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return problem("the camera needs a secure page: open this server over https (--certfile) or on localhost");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (e) {
      return problem("no camera: " + e.message);
    }
    $("video").srcObject = this.stream;
    $("video").hidden = false;
    $("snap").hidden = false;
  },

  snap() {
    const video = $("video");
    const frame = document.createElement("canvas");
    frame.width = video.videoWidth;
    frame.height = video.videoHeight;
    frame.getContext("2d").drawImage(video, 0, 0);
    frame.toBlob((blob) => this.send(blob), "image/png");
  },
};

$("file").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) photo.send(file);
});
$("camera").addEventListener("click", () => photo.camera());
$("snap").addEventListener("click", () => photo.snap());

start();
