// The jobs list: polled every few seconds (GET /v1/jobs).
import { EtaEstimator, PHASES, age, api, badge, bar, el, fmtDuration, fmtNum, progressOf, trains } from "./common.js";

const POLL_MS = 3000;
const body = document.querySelector("#jobs tbody");
const etas = new Map(); // job id -> its EtaEstimator, fed at every poll

function etaOf(id) {
  if (!etas.has(id)) etas.set(id, new EtaEstimator());
  return etas.get(id);
}

function row(job) {
  const progress = progressOf(job, etaOf(job.id));
  const name = job.name || job.id.slice(0, 8);
  return el("tr", { "data-job": job.id },
    el("td", {}, el("a", { href: `/jobs/${job.id}` }, name),
      el("div", { class: "muted" }, trains(job.spec))),
    el("td", {}, badge(job.status)),
    el("td", {}, PHASES[job.status] || job.status),
    el("td", { title: progress.label }, bar(progress.fraction),
      el("div", { class: "muted" }, progress.label)),
    el("td", {}, progress.eta === null ? "–" : fmtDuration(progress.eta)),
    el("td", { class: "num" }, fmtNum(job.progress.best_value),
      el("div", { class: "muted" }, job.spec.search.metric)),
    el("td", { title: job.created_at }, age(job.created_at)),
  );
}

// A worker or an agent (an agent's id starts with "agent-"), with the tasks it runs.
function workerRow(w) {
  const doing = w.activity.map((a) => `${a.job_id.slice(0, 8)} ${a.phase}${a.lease ? " (lease)" : ""}`);
  return el("tr", { "data-worker": w.id },
    el("td", {}, w.id),
    el("td", {}, w.host),
    el("td", {}, w.device),
    el("td", {}, Object.keys(w.plugin_registry.tasks || {}).sort().join(", ") || "–"),
    el("td", {}, doing.join(", ") || "idle"),
    el("td", {}, `${fmtNum(w.heartbeat_age_s, 2)} s ago`),
  );
}

async function refreshWorkers() {
  try {
    const workers = await api("/v1/workers");
    document.querySelector("#workers tbody").replaceChildren(...workers.data.map(workerRow));
    document.getElementById("workers-empty").hidden = workers.data.length > 0;
  } catch (exc) { /* the jobs' error line says why the service cannot be read */ }
}

async function refresh() {
  refreshWorkers();
  const error = document.getElementById("jobs-error");
  try {
    const page = await api("/v1/jobs?limit=100");
    body.replaceChildren(...page.data.map(row));
    document.getElementById("jobs-empty").hidden = page.data.length > 0;
    error.hidden = true;
  } catch (exc) {
    error.textContent = `Cannot read the jobs: ${exc.message}`;
    error.hidden = false;
  }
}

// optuna-dashboard, when the API serves it (a 401 until logged in: the link leads to the login).
fetch("/dashboard", { method: "HEAD" }).then((r) => {
  if (r.status !== 404) document.getElementById("optuna-note").hidden = false;
}).catch(() => {});

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, POLL_MS);
