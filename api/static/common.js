// Helpers shared by the dashboard's pages: API calls, formatting, small DOM builders.

/** Call the API; a 401 sends the browser to the login form. Errors carry the API's body. */
export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  // A FormData body (an upload) sets its own multipart Content-Type.
  if (options.body !== undefined && !(options.body instanceof FormData)) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("the API needs the token: log in");
  }
  const text = await response.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch { body = { detail: text }; }
  }
  if (!response.ok) {
    const error = new Error((body && body.detail) || response.statusText);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

/** A DOM element: el("td", {class: "num"}, "1.0"). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An LR with 4 significant digits, as the snippets and the CLI write it (the JSON has them all).
export function fmtLR(x) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  const shown = Number(Number(x).toPrecision(4));
  const a = Math.abs(shown);
  return a !== 0 && (a < 1e-4 || a >= 1e5) ? shown.toExponential() : String(shown);
}

export function fmtNum(x, digits = 4) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  const a = Math.abs(x);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? x.toExponential(2) : Number(x).toPrecision(digits);
}

export function fmtDuration(seconds) {
  if (seconds === null || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${seconds % 60}s`;
  const h = Math.floor(seconds / 3600);
  return h < 48 ? `${h}h ${Math.floor((seconds % 3600) / 60)}m` : `${Math.floor(h / 24)}d`;
}

export function age(iso) {
  return fmtDuration((Date.now() - Date.parse(iso)) / 1000);
}

export const PHASES = { queued: "waiting for a worker", finding: "range test",
  searching: "schedule search", confirming: "confirmation", succeeded: "done",
  failed: "failed", cancelled: "cancelled" };

const RUNNING = new Set(["finding", "searching", "confirming"]);

/**
 * How far a job has got, in work units: the range test counts as one unit (by its steps),
 * each search trial and confirmation run as one. The ETA extrapolates the time per unit so
 * far; null until a unit is done.
 */
export function progressOf(job) {
  const p = job.progress;
  const rt = p.range_test_steps_total ? Math.min(1, p.range_test_steps_done / p.range_test_steps_total)
    : (["searching", "confirming", "succeeded"].includes(job.status) ? 1 : 0);
  const trialsTotal = p.trials_total || job.spec.search.n_trials;
  const done = rt + p.trials_done + p.confirmations_done;
  const total = 1 + trialsTotal + p.confirmations_total;
  let fraction = job.status === "succeeded" ? 1 : Math.min(1, done / total);
  let eta = null;
  if (RUNNING.has(job.status) && job.started_at && done > 0) {
    const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
    eta = elapsed * (total - done) / done;
  }
  const parts = [];
  if (p.range_test_steps_total) parts.push(`range test ${p.range_test_steps_done}/${p.range_test_steps_total} steps`);
  if (trialsTotal) parts.push(`trials ${p.trials_done}/${trialsTotal}`);
  if (p.confirmations_total) parts.push(`confirmation ${p.confirmations_done}/${p.confirmations_total}`);
  return { fraction, eta, label: parts.join(" · ") };
}

export function badge(status) {
  return el("span", { class: `badge ${status}`, "data-status": status }, status);
}

export function bar(fraction) {
  const inner = el("span");
  inner.style.width = `${Math.round(fraction * 100)}%`;
  return el("div", { class: "bar", role: "progressbar", "aria-valuenow": Math.round(fraction * 100) }, inner);
}

/** Decode the API's run-length encoded LR rows ([[row, count], ...]) to group 0's LR per step. */
export function decodeSteps(encoded) {
  const out = [];
  for (const [row, count] of encoded || []) for (let i = 0; i < count; i++) out.push(row[0]);
  return out;
}

export const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
  "#db2777", "#65a30d", "#7c3aed", "#0d9488"];
