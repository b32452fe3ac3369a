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

// What a job trains: "mlp / digits", or "task cifar-resnet" for the user's own code.
export function trains(spec) {
  return spec.task ? `task ${spec.task.name}` : `${spec.model.name} / ${spec.dataset.name}`;
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

const KINDS = { range_test: ["range_test_steps_done", "range_test_steps_total"],
  trial: ["trials_done", "trials_total"], confirmation: ["confirmations_done", "confirmations_total"] };
const STANDS_IN = { trial: "confirmation", confirmation: "trial" };

/**
 * How long a job has left, each kind of unit (range-test steps, trials, confirmation runs)
 * at its own measured pace: lrtune/jobs/eta.py's EtaEstimator line for line (the CLI's bar
 * uses that one; change both). Times are seconds.
 */
export class EtaEstimator {
  constructor(startedAt = null, searchStartedAt = null, trials = 0) {
    this.startedAt = startedAt; this.searchStartedAt = searchStartedAt; this.trials = trials;
    this.seen = {}; this.anchor = {}; this.last = {};
  }

  observe(t, progress) {
    const before = { ...this.seen };
    let previous = null;
    for (const [kind, [doneField]] of Object.entries(KINDS)) {
      const done = progress[doneField];
      const start = kind === "range_test" ? this.startedAt : this.searchStartedAt;
      if (!(kind in this.seen) && kind !== "confirmation" && start !== null) {
        this.anchor[kind] = [start, 0];
        if (done) this.last[kind] = [t, done];
        if (kind === "range_test" && this.searchStartedAt !== null) this.last[kind] = [this.searchStartedAt, done];
      } else if (kind in this.seen && done > this.seen[kind]) {
        if (kind in this.anchor) this.last[kind] = [t, done];
        else this.anchor[kind] = [t, done]; // a unit just ended: the next one is timed from here
      }
      if (previous !== null && !(kind in this.anchor) && !done) {
        const [prevDone, prevTotal] = KINDS[previous].map((f) => progress[f]);
        const justFinished = previous in before && before[previous] < prevDone;
        if (justFinished && prevTotal > 0 && prevTotal <= prevDone) this.anchor[kind] = [t, 0];
      }
      this.seen[kind] = done;
      previous = kind;
    }
  }

  secondsPerUnit(kind) {
    const own = this.measured(kind);
    return own === null && kind in STANDS_IN ? this.measured(STANDS_IN[kind]) : own;
  }

  measured(kind) {
    if (!(kind in this.anchor) || !(kind in this.last)) return null;
    const [[t0, d0], [t1, d1]] = [this.anchor[kind], this.last[kind]];
    return d1 > d0 ? (t1 - t0) / (d1 - d0) : null;
  }

  remaining(p, now) {
    if (!p.trials_total && p.range_test_steps_done < Math.max(1, p.range_test_steps_total)) return null;
    let left = 0, latest = null;
    for (const [kind, [doneField, totalField]] of Object.entries(KINDS)) {
      const done = p[doneField], total = p[totalField];
      if (total <= done) continue;
      const pace = this.secondsPerUnit(kind);
      if (pace === null) return null;
      if (latest === null) { // the kind running now: its current unit has begun
        const since = now - (this.last[kind] || this.anchor[kind] || [now, 0])[0];
        left -= Math.min(Math.max(0, since), pace);
        latest = kind;
      }
      left += (total - done) * pace;
    }
    return Math.max(0, left);
  }

  fraction(p, now) {
    const left = this.remaining(p, now);
    if (left !== null) {
      let spent = 0;
      for (const [kind, [doneField]] of Object.entries(KINDS)) spent += p[doneField] * (this.secondsPerUnit(kind) || 0);
      return spent + left <= 0 ? 1 : Math.min(1, spent / (spent + left));
    }
    const rt = p.range_test_steps_total ? Math.min(1, p.range_test_steps_done / p.range_test_steps_total) : 0;
    return Math.min(1, (rt + p.trials_done + p.confirmations_done) / (1 + (p.trials_total || this.trials) + p.confirmations_total));
  }
}

const seconds = (iso) => (iso ? Date.parse(iso) / 1000 : null);

/**
 * How far a job has got and its time left (null: not estimated yet), from ``eta``, the
 * page's EtaEstimator for this job, which this call feeds with the job as read now.
 */
export function progressOf(job, eta) {
  const p = job.progress, now = Date.now() / 1000;
  eta.startedAt ??= seconds(job.started_at);
  eta.searchStartedAt ??= seconds(job.search_started_at);
  eta.trials = eta.trials || job.spec.search.n_trials;
  eta.observe(now, p);
  const fraction = job.status === "succeeded" ? 1 : eta.fraction(p, now);
  const eta_s = RUNNING.has(job.status) && job.started_at ? eta.remaining(p, now) : null;
  const trialsTotal = p.trials_total || job.spec.search.n_trials;
  const parts = [];
  if (p.range_test_steps_total) parts.push(`range test ${p.range_test_steps_done}/${p.range_test_steps_total} steps`);
  if (trialsTotal) parts.push(`trials ${p.trials_done}/${trialsTotal}`);
  if (p.confirmations_total) parts.push(`confirmation ${p.confirmations_done}/${p.confirmations_total}`);
  return { fraction, eta: eta_s, label: parts.join(" · ") };
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

/** A failed trial's colour, and a pruned one's: no schedule family is drawn in either. */
export const FAILED_COLOR = "#dc2626";
export const PRUNED_COLOR = "#94a3b8";

/** The schedule families' colours: no red (failed), no grey (pruned), none close to them. */
export const PALETTE = ["#2563eb", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#7c3aed",
  "#0d9488", "#65a30d", "#1e40af", "#a16207"];
