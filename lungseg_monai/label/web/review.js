// The lungseg_monai review page: one chest film, the lung model's mask over it, a brush to correct
// it, a button to save it as the image's label. Talks only to the MONAI Label server it came from:
//   GET  /datastore/?output=all             images and whether they have a label
//   GET  /lungseg/render?image=ID           the film as a grey PNG on the masks' grid
//   POST /infer/MODEL?image=ID&output=all   the model's mask (0/1 PNG) and its QC fields
//   GET  /lungseg/label?image=ID            the saved label as a 0/255 PNG (whatever format it was saved in),
//                                           with a PACS headers saying whose SEG it is (X-Segment-Algorithm-Type)
//   PUT  /datastore/label?image=ID&tag=final  save (with a PACS: a MANUAL DICOM SEG via STOW-RS)
// document.body.dataset.state says what the page shows: loading, list, film, running, mask, saving,
// saved, error; document.body.dataset.labelType the Segment Algorithm Type of the saved label shown
// ("" for none or a folder's). Every answer is checked against the image it was asked for: a film
// opened meanwhile is never given another film's mask.
"use strict";

const BASE = location.pathname.replace(/\/lungseg\/review\/?$/, "");
const LUNG_RGBA = [0, 190, 255];
const MAX_UNDO = 20;
const PERSON_TYPES = new Set(["MANUAL", "SEMIAUTOMATIC"]);  // Segment Algorithm Types of a person's label

const $ = (id) => document.getElementById(id);
const film = $("film");
const overlay = $("overlay");

const state = {
  token: 0,          // incremented whenever another film is opened; stale answers are dropped
  busy: false,       // the model is running: the brush is off
  model: null,       // the served model's name (from /info/)
  images: {},        // id -> {info, labelled, label: the label's info}
  id: null,          // the image shown
  rows: 0,
  cols: 0,
  mask: null,        // Uint8Array rows*cols, 1 = lung
  source: "",        // where the mask came from: "model", "saved label", "edited"
  undo: [],
  tool: "paint",
  drawing: false,
  last: null,
};

function setState(name) { document.body.dataset.state = name; }

function isCurrent(token) { return token === state.token; }

function enableSave() { $("save").disabled = !state.mask || state.busy; }

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
  if (isError) setState("error");
}

async function failure(response) {
  // The server's reason: MONAI Label answers {"detail": "..."} for 4xx/5xx.
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail ?? body);
  } catch (e) { /* not JSON */ }
  return new Error(`${response.status}: ${detail}`);
}

async function fetchOk(url, options) {
  const response = await fetch(BASE + url, options);
  if (!response.ok) throw await failure(response);
  return response;
}

// --- the image list ---------------------------------------------------------------------------

// With a PACS a label is a DICOM SEG, a person's (MANUAL, SEMIAUTOMATIC) or, when no person has
// labelled the image, a model's (AUTOMATIC, from lungseg node or lungseg infer --stow-to): a model's
// mask is never presented as a person's label. info: the label info (SegmentAlgorithmType,
// ContentDescription, UsedForTraining); {} for a folder's labels.
function byModel(info) { return Boolean(info.SegmentAlgorithmType) && !PERSON_TYPES.has(info.SegmentAlgorithmType); }

function labelKind(info) {
  const type = info.SegmentAlgorithmType;
  if (!type) return "";
  let kind = byModel(info) ? `a model's mask, ${type} SEG, not a person's label` : `a person's, ${type} SEG`;
  if (info.ContentDescription && info.ContentDescription.startsWith("QC ")) kind += `; ${info.ContentDescription}`;
  if (info.UsedForTraining === false) kind += "; not used for training";
  return kind;
}

function setBadge(badge, image) {
  const automatic = image.labelled && byModel(image.label);
  badge.className = "badge" + (automatic ? " automatic" : (image.labelled ? " labelled" : ""));
  badge.textContent = automatic ? "model's SEG" : (image.labelled ? "labelled" : (image.info.Modality || "image"));
  badge.title = image.labelled ? labelKind(image.label) : "";
}

async function loadList() {
  const info = await (await fetchOk("/info/")).json();
  state.model = Object.keys(info.models || {})[0];
  const datastore = await (await fetchOk("/datastore/?output=all")).json();
  $("source").textContent = datastore.url ? `PACS: ${datastore.url}` : (datastore.images_dir || "");
  const list = $("images");
  list.replaceChildren();
  state.images = {};
  for (const [id, entry] of Object.entries(datastore.objects || {})) {
    const imageInfo = (entry.image && entry.image.info) || {};
    const labelled = Object.keys(entry.labels || {}).includes("final");
    const labelInfo = (labelled && entry.labels.final.info) || {};
    state.images[id] = { info: imageInfo, labelled, label: labelInfo };
    const li = document.createElement("li");
    li.dataset.id = id;
    const badge = document.createElement("span");
    setBadge(badge, state.images[id]);
    const name = document.createElement("div");
    name.className = "id";
    name.textContent = id;
    li.append(badge, name);
    li.addEventListener("click", () => openImage(id));
    list.append(li);
  }
  const count = Object.keys(state.images).length;
  status(count ? `${count} radiograph(s). Pick one.` : "No radiographs in the datastore.");
  setState("list");
}

// --- showing a film and a mask ----------------------------------------------------------------

async function decode(blob) {
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  return { bitmap, data: ctx.getImageData(0, 0, bitmap.width, bitmap.height) };
}

function fitStage() {
  // Show the whole film in the stage, keeping its aspect ratio; the canvases keep full resolution.
  if (!state.cols) return;
  const stage = $("stage");
  const scale = Math.min(stage.clientWidth / state.cols, stage.clientHeight / state.rows);
  for (const canvas of [film, overlay]) {
    canvas.style.width = `${Math.floor(state.cols * scale)}px`;
    canvas.style.height = `${Math.floor(state.rows * scale)}px`;
  }
}

let drawPending = false;
function scheduleDraw() {
  // Brush strokes redraw at most once per frame (a 3000x3000 DX film is 9 M pixels).
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => { drawPending = false; drawMask(); });
}

function drawMask() {
  const ctx = overlay.getContext("2d");
  const image = ctx.createImageData(state.cols, state.rows);
  const alpha = Math.round(2.55 * Number($("opacity").value));
  const px = image.data;
  const mask = state.mask;
  if (mask) {
    for (let i = 0, j = 0; i < mask.length; i++, j += 4) {
      if (mask[i]) { px[j] = LUNG_RGBA[0]; px[j + 1] = LUNG_RGBA[1]; px[j + 2] = LUNG_RGBA[2]; px[j + 3] = alpha; }
    }
  }
  ctx.putImageData(image, 0, 0);
}

function showMask(mask, source) {
  // A mask shown over the current one can be undone (edits are never lost to a model run).
  if (state.mask) pushUndo();
  state.mask = mask;
  state.source = source;
  drawMask();
  $("undo").disabled = state.undo.length === 0;
  enableSave();
  setState("mask");
}

function pushUndo() {
  state.undo.push(state.mask.slice());
  if (state.undo.length > MAX_UNDO) state.undo.shift();
}

function maskFromPng(data) {
  // A 0/1 (or 0/255) grey PNG: any non-zero pixel is lung, as the server reads labels.
  if (data.width !== state.cols || data.height !== state.rows) {
    throw new Error(`the mask is ${data.width}x${data.height} but the film is ${state.cols}x${state.rows}`);
  }
  const mask = new Uint8Array(state.rows * state.cols);
  for (let i = 0, j = 0; i < mask.length; i++, j += 4) mask[i] = data.data[j] ? 1 : 0;
  return mask;
}

function ohifUrl(study, series) {
  // OHIF's standard viewer (the build in the monailabel wheel), reading the PACS through /proxy/dicom.
  const query = `StudyInstanceUIDs=${encodeURIComponent(study)}` +
    (series ? `&SeriesInstanceUIDs=${encodeURIComponent(series)}` : "");
  return `${BASE}/ohif/viewer?${query}`;
}

async function openImage(id) {
  const token = ++state.token;
  Object.assign(state, { id, mask: null, rows: 0, cols: 0, undo: [], source: "", drawing: false, busy: false });
  document.body.dataset.labelType = "";
  for (const li of $("images").children) li.classList.toggle("selected", li.dataset.id === id);
  for (const button of ["run", "save", "undo"]) $(button).disabled = true;
  $("qc").replaceChildren();
  setState("loading");
  status(`Loading ${id}…`);
  const info = state.images[id].info;
  const ohif = $("ohif");
  ohif.hidden = !info.StudyInstanceUID;
  if (info.StudyInstanceUID) ohif.href = ohifUrl(info.StudyInstanceUID);
  $("ohif-overlay").hidden = true;
  try {
    const blob = await (await fetchOk(`/lungseg/render?image=${encodeURIComponent(id)}`)).blob();
    if (!isCurrent(token)) return;  // another film was opened meanwhile
    const { bitmap } = await decode(blob);
    if (!isCurrent(token)) return;
    for (const canvas of [film, overlay]) { canvas.width = bitmap.width; canvas.height = bitmap.height; }
    film.getContext("2d").drawImage(bitmap, 0, 0);
    state.rows = bitmap.height;
    state.cols = bitmap.width;
    drawMask();
    fitStage();
    $("run").disabled = false;
    setState("film");
    if (state.images[id].labelled) {
      await showSavedLabel(id, token);
    } else {
      status(`${id}: ${state.cols}x${state.rows}. Run the model, or paint the lungs.`);
    }
  } catch (e) {
    if (isCurrent(token)) status(`Cannot show ${id}: ${e.message}`, true);
  }
}

async function showSavedLabel(id, token) {
  const response = await fetchOk(`/lungseg/label?image=${encodeURIComponent(id)}`);
  // Whose mask it is, as the server says now (the list may be older than a SEG stored since).
  const type = response.headers.get("X-Segment-Algorithm-Type");
  if (type) {
    const training = response.headers.get("X-Used-For-Training");
    state.images[id].label = {
      SegmentAlgorithmType: type,
      ContentDescription: response.headers.get("X-Content-Description") || "",
      UsedForTraining: training === null ? undefined : training === "true",
    };
  }
  const blob = await response.blob();
  if (!isCurrent(token)) return;
  const { data } = await decode(blob);
  if (!isCurrent(token)) return;
  const info = state.images[id].label;
  const automatic = byModel(info);
  showMask(maskFromPng(data), automatic ? "model's SEG" : "saved label");
  document.body.dataset.labelType = info.SegmentAlgorithmType || "";
  const kind = labelKind(info);
  const what = automatic ? "the model's mask stored in the PACS" : "its saved label";
  const next = automatic ? "Correct it and save it as a person's label, or run the model for a new proposal."
    : "Run the model for a new proposal, or correct it.";
  status(`${id}: showing ${what}${kind ? ` (${kind})` : ""}. ${next}`);
}

// --- the model --------------------------------------------------------------------------------

function showQc(params) {
  const qc = $("qc");
  const verdict = document.createElement("span");
  verdict.className = params.qc_status;
  verdict.textContent = `QC ${params.qc_status}`;
  const score = typeof params.qc_score === "number" ? params.qc_score.toFixed(2) : "not available";
  const reasons = (params.qc_reasons || []).join("; ");
  const details = ` (score ${score}) · lung ${(100 * params.lung_fraction).toFixed(1)}% of the film` +
    (reasons ? ` · ${reasons}` : "") + ` · ${params.latencies ? params.latencies.total + " s" : ""}`;
  qc.replaceChildren(verdict, document.createTextNode(details));
}

async function runModel() {
  const id = state.id;
  const token = state.token;
  state.busy = true;
  $("run").disabled = true;
  enableSave();
  setState("running");
  status(`Running the lung model on ${id}…`);
  try {
    const form = new FormData();
    form.append("params", JSON.stringify({ result_extension: ".png" }));
    const url = `/infer/${encodeURIComponent(state.model)}?image=${encodeURIComponent(id)}&output=all`;
    const parts = await (await fetchOk(url, { method: "POST", body: form })).formData();
    if (!isCurrent(token)) return;
    const rawParams = parts.get("params");
    const params = JSON.parse(typeof rawParams === "string" ? rawParams : await rawParams.text());
    const { data } = await decode(parts.get("image"));
    if (!isCurrent(token)) return;
    state.busy = false;
    showMask(maskFromPng(data), "model");
    showQc(params);
    status(`${id}: the model's lung mask. Correct it with the brush, then save it.`);
  } catch (e) {
    if (isCurrent(token)) status(`The model could not segment ${id}: ${e.message}`, true);
  } finally {
    if (isCurrent(token)) {
      state.busy = false;
      $("run").disabled = false;
      enableSave();
    }
  }
}

// --- the brush --------------------------------------------------------------------------------

function imagePoint(event) {
  const rect = overlay.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * state.cols) / rect.width,
    y: ((event.clientY - rect.top) * state.rows) / rect.height,
  };
}

function brushRadius() {
  // The slider is in screen pixels; the brush works on the film's grid.
  const rect = overlay.getBoundingClientRect();
  return Math.max(1, (Number($("radius").value) * state.cols) / Math.max(rect.width, 1));
}

function stamp(cx, cy, radius, value) {
  const r2 = radius * radius;
  const y0 = Math.max(0, Math.floor(cy - radius)), y1 = Math.min(state.rows - 1, Math.ceil(cy + radius));
  const x0 = Math.max(0, Math.floor(cx - radius)), x1 = Math.min(state.cols - 1, Math.ceil(cx + radius));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (dx * dx + dy * dy <= r2) state.mask[y * state.cols + x] = value;
    }
  }
}

function strokeTo(point) {
  const radius = brushRadius();
  const value = state.tool === "paint" ? 1 : 0;
  const from = state.last || point;
  const steps = Math.max(1, Math.ceil(Math.hypot(point.x - from.x, point.y - from.y) / (radius / 2)));
  for (let i = 1; i <= steps; i++) {
    stamp(from.x + ((point.x - from.x) * i) / steps, from.y + ((point.y - from.y) * i) / steps, radius, value);
  }
  state.last = point;
  scheduleDraw();
}

overlay.addEventListener("pointerdown", (event) => {
  // Left button (or pen/touch) only, on a film that is shown, while the model is not running.
  if (event.button !== 0 || !state.cols || state.busy || state.id === null) return;
  if (!state.mask) state.mask = new Uint8Array(state.rows * state.cols);
  pushUndo();
  state.drawing = true;
  state.last = null;
  overlay.setPointerCapture(event.pointerId);
  strokeTo(imagePoint(event));
});
overlay.addEventListener("pointermove", (event) => { if (state.drawing) strokeTo(imagePoint(event)); });
const endStroke = () => {
  if (!state.drawing) return;
  state.drawing = false;
  state.source = "edited";
  drawMask();
  $("undo").disabled = state.undo.length === 0;
  enableSave();
  setState("mask");
  status(`${state.id}: edited. Save the label when it is right.`);
};
overlay.addEventListener("pointerup", endStroke);
overlay.addEventListener("pointercancel", endStroke);

function undo() {
  if (!state.undo.length || state.drawing) return;
  state.mask = state.undo.pop();
  drawMask();
  $("undo").disabled = state.undo.length === 0;
}

function selectTool(tool) {
  state.tool = tool;
  $("paint").classList.toggle("active", tool === "paint");
  $("erase").classList.toggle("active", tool === "erase");
}

// --- saving -----------------------------------------------------------------------------------

function maskPng() {
  const canvas = document.createElement("canvas");
  canvas.width = state.cols;
  canvas.height = state.rows;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.cols, state.rows);
  const mask = state.mask || new Uint8Array(state.rows * state.cols);
  for (let i = 0, j = 0; i < mask.length; i++, j += 4) {
    const v = mask[i] ? 255 : 0;
    image.data[j] = v; image.data[j + 1] = v; image.data[j + 2] = v; image.data[j + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function save() {
  const id = state.id;
  const token = state.token;
  if (!state.mask) return;  // nothing to save: never an empty label by accident
  $("save").disabled = true;
  setState("saving");
  status(`Saving the label of ${id}…`);
  try {
    const form = new FormData();
    form.append("label", await maskPng(), `${id}.png`);
    const url = `/datastore/label?image=${encodeURIComponent(id)}&tag=final`;
    const answer = await (await fetchOk(url, { method: "PUT", body: form })).json();
    const info = (answer && answer.label_info) || {};
    state.images[id].labelled = true;
    state.images[id].label = info;
    const li = [...$("images").children].find((el) => el.dataset.id === id);
    if (li) setBadge(li.querySelector(".badge"), state.images[id]);
    if (!isCurrent(token)) return;
    document.body.dataset.labelType = info.SegmentAlgorithmType || "";
    const seg = info.SOPInstanceUID;
    let overlayNote = "";
    if (info.overlay_error) {
      overlayNote = ` Its overlay for viewers was NOT stored: ${info.overlay_error}`;
    } else if (info.overlay_sop_instance_uid) {
      const link = $("ohif-overlay");
      link.href = ohifUrl(info.StudyInstanceUID, info.overlay_series_instance_uid);
      link.hidden = false;
      overlayNote = ` Its overlay (Secondary Capture ${info.overlay_sop_instance_uid}) is in the study for viewers.`;
    }
    status(seg ? `Saved: DICOM SEG ${seg} stored in the PACS.${overlayNote}` : `Saved: the label of ${id}.`);
    document.body.dataset.savedSeg = seg || "";
    setState("saved");
  } catch (e) {
    if (isCurrent(token)) status(`The label of ${id} was NOT saved: ${e.message}`, true);
  } finally {
    if (isCurrent(token)) enableSave();
  }
}

// --- wiring -----------------------------------------------------------------------------------

$("run").addEventListener("click", runModel);
$("save").addEventListener("click", save);
$("undo").addEventListener("click", undo);
$("paint").addEventListener("click", () => selectTool("paint"));
$("erase").addEventListener("click", () => selectTool("erase"));
$("opacity").addEventListener("input", drawMask);
new ResizeObserver(fitStage).observe($("stage"));  // the window, or the status and QC lines above it
window.addEventListener("keydown", (event) => {
  if (event.target instanceof HTMLInputElement) return;
  if (event.key === "p") selectTool("paint");
  else if (event.key === "e") selectTool("erase");
  else if (event.key === "z" && (event.ctrlKey || event.metaKey)) undo();
});

loadList().catch((e) => status(`Cannot list the images: ${e.message}`, true));
