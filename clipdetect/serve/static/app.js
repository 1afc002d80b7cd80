// The scoring page: send dropped or chosen images to /v1/score and show what comes back.
// Everything a server or a file name supplies is written with textContent, never as HTML.
"use strict";

let limits = {max_images: 32};

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function setStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError));
}

function showCard(card) {
  limits = card.limits || limits;
  const dl = document.getElementById("card");
  dl.replaceChildren();
  const target = card.threshold_target || {};
  const val = (card.measured || {}).val || {};
  const rows = [
    ["detector", card.name],
    ["backbone", (card.backbone || {}).spec || (card.backbone || {}).arch],
    ["features", card.feature_set],
    ["head", card.head ? `${card.head.kind} on ${card.head.in_dim}-d` : null],
    ["threshold", card.threshold === null ? null : `P(fake) > ${Number(card.threshold).toFixed(4)}`],
    ["threshold chosen for", card.threshold_chosen_for || [target.metric, target.value].filter((v) => v !== undefined && v !== null).join(" ")],
    ["validation AUC", val.auc === undefined || val.auc === null ? null : Number(val.auc).toFixed(4)],
    ["training rows", ((card.training || {}).rows || {}).train],
    ["limits", `${limits.max_images} images, ${Math.round(limits.max_body_bytes / 1048576)} MiB per request`],
  ];
  for (const [k, v] of rows) {
    if (v === undefined || v === null || v === "") continue;
    dl.append(el("dt", k), el("dd", v));
  }
  document.getElementById("card-json").textContent = JSON.stringify(card, null, 2);
}

function addRow(file, result) {
  const tr = el("tr");
  tr.dataset.name = file.name;
  const thumb = el("td");
  const img = el("img");
  img.alt = "";
  img.addEventListener("error", () => img.remove());  // not an image the browser can show
  img.src = URL.createObjectURL(file);
  thumb.append(img);
  tr.append(thumb, el("td", file.name, "name"));
  if (result.error) {
    tr.append(el("td", "—", "prob"), el("td", "error", "verdict error"), el("td", result.error.message, "detail"));
  } else {
    const pct = (100 * result.probability).toFixed(1) + "%";
    tr.append(el("td", pct, "prob"), el("td", result.verdict, "verdict " + result.verdict),
              el("td", `${result.timing.batch_size} in batch, ${result.timing.batch_ms.toFixed(0)} ms`, "detail"));
  }
  document.querySelector("#results tbody").prepend(tr);
}

async function score(files) {
  files = Array.from(files);
  if (!files.length) return;
  for (let i = 0; i < files.length; i += limits.max_images) {
    const chunk = files.slice(i, i + limits.max_images);
    const form = new FormData();
    for (const f of chunk) form.append("image", f, f.name);
    setStatus(`Scoring ${chunk.length} image(s)…`);
    let body;
    try {
      const resp = await fetch("/v1/score", {method: "POST", body: form});
      body = await resp.json();
      if (!resp.ok && !body.results) throw new Error(body.error ? body.error.message : resp.statusText);
    } catch (err) {
      setStatus(`Could not score: ${err.message}`, true);
      return;
    }
    body.results.forEach((r) => addRow(chunk[r.index], r));
    setStatus(`Scored ${body.n_scored} of ${body.n} image(s) in ${body.timing.total_ms.toFixed(0)} ms.`,
              body.n_errors > 0);
  }
}

function init() {
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  input.addEventListener("change", () => { score(input.files); input.value = ""; });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => score(e.dataTransfer.files));
  fetch("/v1/model").then((r) => r.json()).then(showCard)
    .catch((err) => setStatus(`Could not load the model card: ${err.message}`, true));
  fetch("/report", {method: "GET"}).then((r) => {
    document.getElementById("report-link").hidden = !r.ok;
  }).catch(() => {});
}

document.addEventListener("DOMContentLoaded", init);
