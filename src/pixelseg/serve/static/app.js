// The page of `pixelseg serve`: pick or drop an image, see the overlay, adjust, download.
"use strict";
const $ = (id) => document.getElementById(id);
let file = null;      // the image being shown
let pending = null;   // timer of a debounced refresh
let resultUrl = null;
let maskUrl = null;
let originalUrl = null;
let latest = 0;       // the newest refresh: older answers are dropped when they arrive

function headers() {
  const key = $("key").value;
  return key ? { "X-API-Key": key } : {};
}

async function loadModel() {
  let response;
  try {
    response = await fetch("/model", { headers: headers() });
  } catch (error) {
    $("model").textContent = "the server cannot be reached";
    return;
  }
  if (response.status === 401) {
    $("key-row").hidden = false;
    $("model").textContent = "this server needs an API key";
    return;
  }
  if (!response.ok) {
    $("model").textContent = `the server answered ${response.status}`;
    return;
  }
  const model = await response.json();
  $("model").textContent = `${model.name}: ${model.classes.join(", ")} · input ` +
    `${model.input_size.join("x")} · pixelseg ${model.version}`;
  $("threshold").value = model.threshold;
  $("threshold").disabled = model.num_classes > 1;
  showValues();
}

function showValues() {
  $("threshold-value").textContent = Number($("threshold").value).toFixed(2);
  $("opacity-value").textContent = Number($("opacity").value).toFixed(2);
}

async function ask(output) {
  const params = new URLSearchParams({
    output, threshold: $("threshold").value, opacity: $("opacity").value,
  });
  const form = new FormData();
  form.append("file", file);
  const response = await fetch(`/predict?${params}`, {
    method: "POST", body: form, headers: headers(),
  });
  if (!response.ok) {
    let message = `error ${response.status}`;
    try { message = (await response.json()).error ?? message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response.blob();
}

async function refresh() {
  if (!file) return;
  const output = $("cutout").checked ? "cutout" : "overlay";
  const mine = ++latest;
  $("status").textContent = "working…";
  try {
    const [picture, mask] = await Promise.all([ask(output), ask("mask")]);
    if (mine !== latest) return;  // a newer refresh (another file or setting) is on its way
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    if (maskUrl) URL.revokeObjectURL(maskUrl);
    resultUrl = URL.createObjectURL(picture);
    maskUrl = URL.createObjectURL(mask);
    $("result").src = resultUrl;
    $("result-caption").textContent = output;
    $("download").href = maskUrl;
    $("download").download = (file.name.replace(/\.[^.]+$/, "") || "image") + "_mask.png";
    $("download").hidden = false;
    $("status").textContent = "";
  } catch (error) {
    if (mine === latest) $("status").textContent = error.message;
  }
}

function later() {
  showValues();
  clearTimeout(pending);
  pending = setTimeout(refresh, 200);
}

function choose(chosen) {
  if (!chosen) return;
  file = chosen;
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  $("original").src = originalUrl;
  $("original").alt = `the image ${file.name}`;
  $("result").alt = `the prediction for ${file.name}`;
  $("controls").hidden = false;
  refresh();
}

$("file").addEventListener("change", (event) => choose(event.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  choose(event.dataTransfer.files[0]);
});
for (const id of ["threshold", "opacity"]) $(id).addEventListener("input", later);
$("cutout").addEventListener("change", refresh);
$("key").addEventListener("change", () => { loadModel(); refresh(); });
loadModel();
