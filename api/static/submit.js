// The submit form: model and dataset from the registry, the rest of the spec as JSON; the
// API's 422 field errors are shown beside the field they name. A dataset uploaded here (or one
// uploaded before) becomes the form's dataset: "uploaded" with its id in dataset.params.
import { api, el } from "./common.js";

const DEFAULT_SPEC = {
  name: "wine-logreg",
  model: { name: "logreg", params: {} },
  dataset: { name: "wine", params: { val_fraction: 0.25 } },
  optimizer: { name: "adamw", weight_decay: 0.01 },
  batch_size: 32,
  range_test: { seeds: 2, num_iter: 60 },
  search: { n_trials: 4, epochs: 3, families: ["cosine", "onecycle"] },
};

const form = document.getElementById("submit-form");
const models = document.getElementById("model");
const datasets = document.getElementById("dataset");
const textarea = document.getElementById("spec");

function fill(select, entries, chosen) {
  select.replaceChildren(...entries.map((e) =>
    el("option", { value: e.name, selected: e.name === chosen }, e.builtin ? e.name : `${e.name} (plugin)`)));
}

function withoutNames(spec) {
  const rest = structuredClone(spec);
  if (rest.model) delete rest.model.name;
  if (rest.dataset) delete rest.dataset.name;
  return rest;
}

function clearErrors() {
  for (const id of ["model-errors", "dataset-errors", "spec-errors"]) document.getElementById(id).replaceChildren();
  for (const node of form.querySelectorAll(".invalid")) node.classList.remove("invalid");
  document.getElementById("submit-error").hidden = true;
}

function showFieldErrors(errors) {
  for (const error of errors) {
    const loc = error.loc.filter((part) => part !== "body");
    let target = "spec", input = textarea;
    if (loc[0] === "model" && loc[1] === "name") { target = "model"; input = models; }
    if (loc[0] === "dataset" && loc[1] === "name") { target = "dataset"; input = datasets; }
    input.classList.add("invalid");
    document.getElementById(`${target}-errors`).append(
      el("li", { "data-loc": loc.join(".") }, el("code", {}, loc.join(".") || "spec"), `: ${error.msg}`));
  }
}

function useUpload(upload) {
  let spec;
  try { spec = JSON.parse(textarea.value || "{}"); } catch { spec = withoutNames(DEFAULT_SPEC); }
  const params = { val_fraction: 0.25, ...((spec.dataset || {}).params || {}), ...upload.dataset.params };
  spec.dataset = { params };
  textarea.value = JSON.stringify(spec, null, 2);
  datasets.value = "uploaded";
  const shape = upload.x_shape.join("×");
  const what = upload.task === "classification" ? `${upload.n_classes} classes` : "regression";
  document.getElementById("upload-status").textContent =
    `Using ${upload.name || "the upload"}: x ${shape}, ${what} (id ${upload.id.slice(0, 12)}…)`;
  document.getElementById("upload-box").setAttribute("data-upload-id", upload.id);
}

function fillUploads(uploads) {
  const choice = document.getElementById("upload-choice");
  choice.replaceChildren(el("option", { value: "" }, "(choose one)"), ...uploads.map((u) =>
    el("option", { value: u.id }, `${u.name || u.id.slice(0, 12)} (${u.x_shape.join("×")})`)));
  choice.onchange = () => {
    const upload = uploads.find((u) => u.id === choice.value);
    if (upload) useUpload(upload);
  };
}

async function upload() {
  const errors = document.getElementById("upload-errors");
  const status = document.getElementById("upload-status");
  errors.replaceChildren();
  const file = document.getElementById("upload-file").files[0];
  if (!file) { errors.append(el("li", {}, "choose a file first")); return; }
  const body = new FormData();
  body.append("file", file);
  const target = document.getElementById("upload-target").value.trim();
  if (target) body.append("target", target);
  const button = document.getElementById("upload");
  button.disabled = true;
  status.textContent = "Uploading…";
  try {
    const stored = await api("/v1/datasets", { method: "POST", body });
    useUpload(stored);
    fillUploads((await api("/v1/datasets/uploads")).data);
    document.getElementById("upload-choice").value = stored.id;
  } catch (exc) {
    status.textContent = "";
    const fields = (exc.body && exc.body.errors) || [];
    if (!fields.length) errors.append(el("li", {}, `Not uploaded (${exc.status || "network"}): ${exc.message}`));
    for (const error of fields) {
      const loc = error.loc.filter((part) => part !== "body").join(".");
      errors.append(el("li", { "data-loc": loc }, el("code", {}, loc), `: ${error.msg}`));
    }
  } finally {
    button.disabled = false;
  }
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  let spec;
  try {
    spec = JSON.parse(textarea.value || "{}");
  } catch (exc) {
    textarea.classList.add("invalid");
    document.getElementById("spec-errors").append(el("li", {}, `not valid JSON: ${exc.message}`));
    return;
  }
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
    showFieldErrors([{ loc: ["body"], msg: "the spec must be a JSON object" }]);
    return;
  }
  spec.model = { ...(spec.model || {}), name: models.value };
  spec.dataset = { ...(spec.dataset || {}), name: datasets.value };
  const button = document.getElementById("submit");
  button.disabled = true;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: JSON.stringify(spec) });
    location.href = `/jobs/${job.id}`;
  } catch (exc) {
    if (exc.status === 422 && exc.body && exc.body.errors && exc.body.errors.length) showFieldErrors(exc.body.errors);
    const message = document.getElementById("submit-error");
    message.textContent = `Not submitted (${exc.status || "network"}): ${exc.message}`;
    message.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function main() {
  textarea.value = JSON.stringify(withoutNames(DEFAULT_SPEC), null, 2);
  const [m, d, u] = await Promise.all([api("/v1/models"), api("/v1/datasets"), api("/v1/datasets/uploads")]);
  fill(models, m.data, DEFAULT_SPEC.model.name);
  fill(datasets, d.data, DEFAULT_SPEC.dataset.name);
  fillUploads(u.data);
  form.addEventListener("submit", submit);
  document.getElementById("upload").addEventListener("click", upload);
  form.setAttribute("data-ready", "1"); // (form.dataset is the select named "dataset")
}

main().catch((exc) => {
  const message = document.getElementById("submit-error");
  message.textContent = `Cannot read the registry: ${exc.message}`;
  message.hidden = false;
});
