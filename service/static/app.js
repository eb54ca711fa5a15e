// The convserve page: sends one image to POST /v1/explain and shows what comes back.
// No framework and nothing inline (the Content-Security-Policy forbids it).
"use strict";

const SAMPLES_URL = "/static/samples/samples.json";
const KEY_STORE = "convserve.apiKey"; // sessionStorage: this tab only, never the URL

const $ = (id) => document.getElementById(id);
let lastImage = null; // the last Blob sent, so a new target can re-explain it

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

function number(value) {
  const size = Math.abs(value);
  if (size !== 0 && (size < 0.01 || size >= 1000)) return value.toExponential(2);
  return value.toFixed(Math.abs(value) < 1 ? 3 : 2);
}

function percent(value) {
  return (value * 100).toFixed(value < 0.001 ? 3 : 1) + "%";
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(title, detail) {
  const box = $("error");
  box.replaceChildren(element("strong", {}, title), element("span", {}, " " + detail));
  box.hidden = false;
}

// One sentence on what a layer does, for the kinds of layer the CNN is built from.
function describeLayer(layer, previous) {
  const [channels, height, width] = layer.shape;
  const inChannels = previous ? previous.shape[0] : null;
  switch (layer.kind) {
    case "Conv2d":
      return `Convolution: each of ${channels} learned 3x3 kernels slides over ` +
        `${inChannels ? inChannels + " input maps" : "the image"} and adds up the products, ` +
        "so a map is bright where its pattern (an edge, a corner, a texture) appears.";
    case "BatchNorm2d":
      return "Batch normalisation: each map is shifted and scaled by constants learned in " +
        "training, so the next layer gets values in the range it expects.";
    case "ReLU":
      return "ReLU: every negative value becomes 0 and positive ones pass unchanged, so only " +
        "the places where a pattern is present keep a response.";
    case "MaxPool2d":
      return `2x2 max-pooling: each 2x2 square keeps only its largest value, shrinking ` +
        `${previous ? previous.shape[1] + "x" + previous.shape[2] : "the maps"} to ` +
        `${height}x${width} while keeping the strongest responses.`;
    default:
      return `${layer.kind}: ${channels} maps of ${height}x${width}.`;
  }
}

function mapImage(picture, label, extraClass) {
  const flat = picture.min === picture.max;
  const range = `values ${number(picture.min)} to ${number(picture.max)}`;
  const text = `${label}, ${flat ? "flat at " + number(picture.min) + " (no response)" : range}`;
  const img = element("img", {
    src: picture.image,
    alt: text,
    title: text,
    class: "pixelated map" + (flat ? " dead" : "") + (extraClass ? " " + extraClass : ""),
  });
  return img;
}

function renderScores(prediction) {
  const body = $("scores").querySelector("tbody");
  body.replaceChildren();
  for (const entry of prediction.top_k) {
    const row = element("tr");
    row.append(element("th", { scope: "row" }, entry.label));
    row.append(element("td", { class: "number" }, percent(entry.score)));
    const cell = element("td");
    const bar = element("meter", {
      min: "0", max: "1", value: String(entry.score),
      "aria-label": `${entry.label}: ${percent(entry.score)}`,
    });
    cell.append(bar);
    row.append(cell);
    body.append(row);
  }
  $("top-label").textContent = `${prediction.label} (${percent(prediction.score)})`;
}

function renderTargets(prediction, chosen) {
  const select = $("target");
  const keep = chosen ?? "";
  select.replaceChildren(element("option", { value: "" }, "the top class"));
  Object.keys(prediction.scores).forEach((label, index) => {
    const option = element("option", { value: String(index) }, label);
    select.append(option);
  });
  select.value = keep;
  select.disabled = false;
}

function renderLayers(answer) {
  const kernels = answer.kernels;
  const [count, inChannels, kh, kw] = kernels.shape;
  $("kernels-text").textContent =
    `The ${count} kernels of ${kernels.layer}, each ${kh}x${kw}` +
    (inChannels > 1 ? ` over ${inChannels} colour channels` : "") +
    ", enlarged: each is scaled on its own from its most negative weight (black) to its " +
    "most positive (white). A hand-made kernel like [[0,-1,0],[-1,4,-1],[0,-1,0]] finds edges; " +
    "these were learned from the training images.";
  $("kernels").replaceChildren(...kernels.maps.map((picture, index) =>
    mapImage(picture, `kernel ${index} of ${kernels.layer}`, "kernel")));

  const container = $("layers");
  container.replaceChildren();
  answer.layers.forEach((layer, index) => {
    const previous = index > 0 ? answer.layers[index - 1] : null;
    const headingId = `layer-${index}`;
    const section = element("section", { class: "layer", "aria-labelledby": headingId });
    const [channels, height, width] = layer.shape;
    section.append(element("h3", { id: headingId },
      `${layer.name} · ${layer.kind} · block ${layer.block + 1} · ${channels} maps of ${height}x${width}`));
    section.append(element("p", {}, describeLayer(layer, previous)));
    const grid = element("div", { class: "maps" });
    grid.append(...layer.maps.map((picture, channel) =>
      mapImage(picture, `${layer.name} (${layer.kind}) channel ${channel}`)));
    section.append(grid);
    container.append(section);
  });
  const last = answer.layers[answer.layers.length - 1];
  const classes = Object.keys(answer.prediction.scores).length;
  $("classifier-text").textContent =
    `Finally the ${last.shape.join("x")} values of the last maps are flattened and a ` +
    `fully-connected layer weighs them into one score per class (${classes} classes); ` +
    "softmax turns the scores into the probabilities shown above.";
}

function renderCam(answer) {
  const cam = answer.gradcam;
  const label = cam.target.label;
  $("cam-overlay").src = cam.overlay;
  $("cam-overlay").alt = `Heat map for ${label} laid over the input image`;
  $("cam-heatmap").src = cam.heatmap;
  $("cam-heatmap").alt = `Heat map for ${label} on its own`;
  $("cam-caption").textContent = cam.empty
    ? `No part of the image raised the score of ${label} at layer ${cam.layer}: the map is empty.`
    : `Where ${cam.layer}'s evidence for "${label}" (${percent(cam.target.score)}) sits: ` +
      "brighter means a larger Grad-CAM weight.";
}

function render(answer, roundTripMs) {
  const t = answer.timing_ms;
  $("model-line").textContent =
    `Model ${answer.model.name}, version ${answer.model.version}.`;
  $("input-image").src = answer.input.image;
  $("input-image").alt =
    `The ${answer.input.width}x${answer.input.height} input the model saw`;
  renderScores(answer.prediction);
  $("timings").textContent =
    `Server: decode ${t.decode} ms, queue ${t.queue} ms, inference ${t.inference} ms, ` +
    `explain ${t.explain} ms, PNG encoding ${t.encode} ms, total ${t.total} ms; ` +
    `round trip in this browser ${roundTripMs.toFixed(1)} ms.`;
  renderCam(answer);
  renderLayers(answer);
  $("results").hidden = false;
}

async function explain(image, name) {
  lastImage = image;
  $("error").hidden = true;
  setStatus(`Explaining ${name}…`);
  const headers = { "Content-Type": image.type || "application/octet-stream" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const target = $("target").value;
  const query = target === "" ? "" : `?target=${encodeURIComponent(target)}`;
  const started = performance.now();
  let response;
  try {
    response = await fetch(`/v1/explain${query}`, { method: "POST", headers, body: image });
  } catch (error) {
    setStatus("");
    showError("The server could not be reached.", String(error));
    return;
  }
  const roundTrip = performance.now() - started;
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    setStatus("");
    const title = body && body.title ? body.title : `HTTP ${response.status}`;
    let detail = body && body.detail ? body.detail : "";
    if (response.status === 401) detail += " Enter the API key under Options and try again.";
    showError(title + ".", detail);
    if (response.status === 401) {
      $("options").open = true;
      $("api-key").focus();
    }
    return;
  }
  render(body, roundTrip);
  renderTargets(body.prediction, target);
  setStatus(`Done: ${name} is ${body.prediction.label}.`);
}

async function loadSamples() {
  const box = $("samples");
  let samples = [];
  try {
    const response = await fetch(SAMPLES_URL);
    samples = await response.json();
  } catch (error) {
    box.textContent = "The sample images could not be loaded.";
    return;
  }
  for (const sample of samples) {
    const button = element("button", { type: "button", class: "sample" });
    button.append(element("img", {
      src: `/static/samples/${sample.file}`, alt: "", class: "pixelated",
    }));
    button.append(element("span", {}, sample.label));
    button.addEventListener("click", async () => {
      const response = await fetch(`/static/samples/${sample.file}`);
      const blob = await response.blob();
      await explain(blob, `the sample ${sample.label}`);
    });
    box.append(button);
  }
}

function setUp() {
  const input = $("file-input");
  input.addEventListener("change", () => {
    if (input.files.length) explain(input.files[0], input.files[0].name);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) explain(file, file.name);
  });
  $("target").addEventListener("change", () => {
    if (lastImage) explain(lastImage, "the same image");
  });
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  loadSamples();
}

document.addEventListener("DOMContentLoaded", setUp);
