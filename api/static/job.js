// One job, live: its event stream (GET /v1/jobs/{id}/events, EventSource) triggers reads of
// the job, its range test, its trials and its recommendation; charts are uPlot.
import { EtaEstimator, FAILED_COLOR, PALETTE, PHASES, PRUNED_COLOR, api, badge, bar, decodeSteps, el, fmtDuration, fmtLR, fmtNum, progressOf, trains } from "./common.js";

const jobId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());
const base = `/v1/jobs/${encodeURIComponent(jobId)}`;
document.getElementById("trials-csv").href = `${base}/trials.csv`;
document.getElementById("trials-json").href = `${base}/trials`;
const REFRESH_MS = 1000; // at most one round of reads a second, however fast events come
const state = { job: null, finder: null, trials: null, rec: null, charts: {}, partial: [], live: {}, eta: new EtaEstimator() };
window.lrtuneCharts = state.charts; // the drawn uPlot charts, for the browser tests

// ---------------------------------------------------------------- charts
function chartWidth(node) {
  return Math.max(320, Math.floor(node.getBoundingClientRect().width || node.parentElement.clientWidth) - 4);
}

function mount(name, node, options, data) {
  if (state.charts[name]) state.charts[name].destroy();
  node.replaceChildren();
  const chart = new uPlot({ width: chartWidth(node), height: 320, ...options }, data, node);
  state.charts[name] = chart;
  node.dataset.drawn = "1";
  if (!window.__firstChartAt) window.__firstChartAt = performance.now();
  return chart;
}

window.addEventListener("resize", () => {
  for (const [name, chart] of Object.entries(state.charts)) {
    const node = chart.root.parentElement;
    if (node) chart.setSize({ width: chartWidth(node), height: 320 });
  }
});

/** Log-x ticks: decades only when the axis spans more than two, else 1-2-5 per decade. */
function logTicks(u, splits) {
  const [lo, hi] = [u.scales.x.min, u.scales.x.max];
  const wide = Math.log10(hi / lo) > 2.2;
  return splits.map((v) => {
    const m = Math.round(v / 10 ** Math.floor(Math.log10(v) + 1e-9));
    return m === 1 || (!wide && (m === 2 || m === 5)) ? v : null;
  });
}

const lrAxis = { scale: "x", label: "learning rate", space: 40, filter: logTicks,
  grid: { filter: logTicks, stroke: "rgba(0, 0, 0, 0.07)", width: 1 }, ticks: { filter: logTicks },
  values: (u, splits) => splits.map((v) => (v === null ? null : fmtDecade(v))) };

function fmtDecade(v) {
  const e = Math.floor(Math.log10(v) + 1e-9), m = Math.round(v / 10 ** e);
  return m === 1 ? `1e${e}` : `${m}e${e}`;
}

/**
 * Vertical markers and shaded LR bounds, drawn on the canvas after the series. Each rule's
 * label goes on the first row where it overlaps no label before it (the chosen one on the
 * top row), to the line's left where it would run off the plot; the boxes drawn are kept on
 * the chart (u.markerLabels) for the browser tests.
 */
function markersPlugin(markers, bounds) {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx, { left, top, width, height } = u.bbox, dpr = devicePixelRatio || 1;
    ctx.save();
    ctx.textAlign = "left"; // uPlot leaves its axes' alignment on the context
    ctx.textBaseline = "alphabetic";
    if (bounds) {
      const x0 = u.valToPos(bounds.low, "x", true), x1 = u.valToPos(bounds.high, "x", true);
      ctx.fillStyle = "rgba(22, 163, 74, 0.08)";
      ctx.fillRect(x0, top, x1 - x0, height);
      ctx.fillStyle = "rgba(22, 101, 52, 0.9)";
      ctx.font = `${11 * dpr}px system-ui`;
      ctx.fillText("search range", x0 + 4 * dpr, top + height - 6 * dpr);
    }
    const rowHeight = 13 * dpr, gap = 6 * dpr, rows = [[]]; // rows[r]: the boxes placed on row r
    const placed = [];
    const ordered = [...markers].sort((a, b) => (b.chosen - a.chosen) || (a.lr - b.lr));
    for (const m of ordered) {
      const x = u.valToPos(m.lr, "x", true);
      ctx.strokeStyle = m.chosen ? "#111827" : "rgba(100, 116, 139, 0.7)";
      ctx.lineWidth = (m.chosen ? 2.5 : 1) * dpr;
      ctx.setLineDash(m.chosen ? [] : [4 * dpr, 4 * dpr]);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
      ctx.setLineDash([]);
      ctx.font = `${(m.chosen ? 12 : 10) * dpr}px system-ui`;
      const text = m.chosen ? `chosen ${fmtLR(m.lr)}` : m.rule;
      const w = ctx.measureText(text).width;
      const x0 = x + 3 * dpr + w > left + width ? x - 3 * dpr - w : x + 3 * dpr;
      const clear = (row) => row.every((box) => x0 + w + gap <= box.x0 || box.x1 + gap <= x0);
      let r = m.chosen ? 0 : 1;
      while (rows[r] && !clear(rows[r])) r++;
      rows[r] = rows[r] || [];
      const box = { x0, x1: x0 + w, y: top + (12 * dpr) + r * rowHeight, text };
      rows[r].push(box);
      placed.push({ ...box, x0: box.x0 / dpr, x1: box.x1 / dpr, y: box.y / dpr });
      ctx.fillStyle = m.chosen ? "#111827" : "rgba(71, 85, 105, 0.95)";
      ctx.fillText(text, x0, box.y);
    }
    u.markerLabels = placed;
    ctx.restore();
  }] } };
}

/** Each range-test seed's line: its own dash, so that the seeds can be told apart. */
const SEED_DASHES = [[], [7, 3], [2, 3], [10, 3, 2, 3], [1, 4], [5, 5]];
const seedStyle = (i) => ({ stroke: `rgba(37, 99, 235, ${i % 2 ? 0.55 : 0.4})`, dash: SEED_DASHES[i % SEED_DASHES.length] });

/** A y-range that keeps the interesting part: from the lowest band value to a bit above the start. */
function lossRange(rt) {
  const finite = (xs) => xs.filter((v) => v !== null && isFinite(v));
  const median = finite(rt.median);
  const low = Math.min(...finite(rt.band_low.length ? rt.band_low : rt.median), ...median);
  const start = median.length ? median[0] : Math.max(...finite(rt.seeds[0].smoothed));
  const high = Math.max(start, ...finite(rt.band_high).slice(0, Math.max(1, Math.floor(median.length * 0.9))));
  const pad = (high - low) * 0.12 || Math.abs(high) * 0.1 || 1;
  return [low - pad, high + pad];
}

function drawFinder(view) {
  const rt = view.range_test, node = document.getElementById("finder-chart");
  const n = rt.lrs.length;
  const pad = (xs) => Array.from({ length: n }, (_, i) => (i < xs.length && xs[i] !== null && isFinite(xs[i]) ? xs[i] : null));
  const seeds = rt.seeds.map((s) => pad(s.smoothed));
  const data = [rt.lrs, ...seeds, pad(rt.band_high), pad(rt.band_low), pad(rt.median)];
  const k = seeds.length;
  const series = [{ label: "LR", value: (u, v) => fmtLR(v) }];
  seeds.forEach((_, i) => series.push({ label: `seed ${i + 1}`, ...seedStyle(i), width: 1.2, value: (u, v) => fmtNum(v) }));
  const low = data[k + 2]; // the band is one legend entry: "low – high" at the cursor
  series.push({ label: "band (25th–75th pct)", stroke: "rgba(37, 99, 235, 0.35)", width: 0.5,
    value: (u, v, si, i) => (v === null || i === null ? "–" : `${fmtNum(low[i])} – ${fmtNum(v)}`) });
  series.push({ label: "25th pct", stroke: "rgba(37, 99, 235, 0.35)", width: 0.5, value: (u, v) => fmtNum(v) });
  series.push({ label: "median", stroke: "#1e3a8a", width: 2.5, value: (u, v) => fmtNum(v) });
  const chosen = rt.consensus.suggestion.lr;
  const markers = Object.values(rt.suggestions).filter((s) => s.lr !== null).map((s) => ({ lr: s.lr, rule: s.rule, chosen: false }));
  if (chosen !== null) markers.push({ lr: chosen, rule: "consensus", chosen: true });
  const [ylo, yhi] = lossRange(rt);
  const chart = mount("finder", node, {
    scales: { x: { distr: 3, time: false }, y: { range: () => [ylo, yhi] } },
    axes: [lrAxis, { label: "training loss (smoothed)", size: 60, values: (u, s) => s.map((v) => fmtNum(v, 3)) }],
    series,
    bands: [{ series: [k + 1, k + 2], fill: "rgba(37, 99, 235, 0.12)" }],
    legend: { live: true },
    focus: { alpha: 0.35 },
    cursor: { focus: { prox: 24 } },
    hooks: { setSeries: [(u, i, opts) => { // the band's entry shows or hides both its edges
      if (i === k + 1 && opts && opts.show !== undefined) u.setSeries(k + 2, { show: opts.show }, false);
    }] },
    plugins: [markersPlugin(markers, view.bounds)],
  }, data);
  const entries = chart.root.querySelectorAll(".u-legend .u-series");
  if (entries[k + 2]) entries[k + 2].style.display = "none"; // the band's low edge: under the band's entry
  const spread = rt.spread_decades;
  document.getElementById("finder-note").textContent =
    `Seeds faint, each its own dash (hover: each seed's loss, the nearest line highlighted), median bold, band: 25th–75th percentile; dashed: each rule's suggestion, black: the chosen one (consensus of the seeds, ${fmtLR(chosen)}; spread ${spread === null ? "n/a" : spread.toFixed(2) + " decades"}, agreement ${rt.consensus.agreement}); green: the LR bounds the search draws from${view.bounds ? ` (${fmtLR(view.bounds.low)} – ${fmtLR(view.bounds.high)})` : ""}.`;
  const rows = Object.values(rt.suggestions).map((s) => el("tr", {}, el("td", {}, s.rule), el("td", { class: "num" }, fmtLR(s.lr)), el("td", { class: "muted" }, s.reason || "")));
  rows.push(el("tr", { class: "recommended" }, el("td", {}, "consensus (chosen)"), el("td", { class: "num" }, fmtLR(chosen)),
    el("td", {}, `median of ${rt.consensus.per_seed.length} seeds' suggestions`)));
  document.querySelector("#suggestions tbody").replaceChildren(...rows);
  document.getElementById("suggestions").hidden = false;
}

/**
 * The range test while it runs, from the points its progress events carry: each point is
 * [lr, smoothed loss] or [lr, smoothed loss, seed]. The seeds sweep the same LR grid, so
 * their points share x values. Redrawn at most every 250 ms.
 */
let partialTimer = null;
function drawPartial() {
  if (partialTimer || state.finder?.range_test) return;
  partialTimer = setTimeout(() => { partialTimer = null; drawPartialNow(); }, 250);
}

function drawPartialNow() {
  const pts = state.partial;
  if (pts.length < 2 || state.finder?.range_test) return;
  const xs = [...new Set(pts.map((p) => p[0]))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const seeds = [...new Set(pts.map((p) => p[2] ?? 0))].sort((a, b) => a - b);
  const ys = seeds.map(() => new Array(xs.length).fill(null));
  for (const [lr, loss, seed] of pts) ys[seeds.indexOf(seed ?? 0)][index.get(lr)] = isFinite(loss) ? loss : null;
  const series = [{ label: "LR", value: (u, v) => fmtLR(v) }, ...seeds.map((s) => ({ label: `seed ${s + 1}`,
    ...(seeds.length > 1 ? seedStyle(s) : { stroke: "#1e3a8a" }), width: 1.5, spanGaps: true }))];
  const node = document.getElementById("finder-chart");
  const chart = state.charts.finder;
  if (chart && chart.series.length === series.length && node.dataset.partial === "1") {
    chart.setData([xs, ...ys]); // grow in place
  } else {
    mount("finder", node, {
      scales: { x: { distr: 3, time: false } },
      axes: [lrAxis, { label: "training loss (so far)", size: 60, values: (u, s) => s.map((v) => fmtNum(v, 3)) }],
      series, legend: { live: false },
    }, [xs, ...ys]);
    node.dataset.partial = "1";
  }
  node.dataset.points = String(pts.length);
  document.getElementById("finder-note").textContent =
    `The range test is running: ${pts.length} points so far; the median, band and suggestions follow when it has finished.`;
}

/** An element under the trials chart, made once: the hover readout or the families' key. */
function underTrials(id, className) {
  let node = document.getElementById(id);
  if (!node) {
    node = el("div", { id, class: className });
    document.getElementById("trials-chart").after(node);
  }
  return node;
}

/**
 * The search trials' metric per epoch. One colour per schedule family (never the failed
 * red or the pruned grey), with a key of the families instead of a legend entry per trial;
 * hovering highlights the nearest trial and names it: its number, family, state and value.
 */
function drawTrials(view) {
  const node = document.getElementById("trials-chart");
  document.getElementById("metric-name").textContent = view.metric;
  const search = view.data.filter((t) => t.kind === "search" && t.epochs.length);
  if (!search.length) return;
  const maxEpoch = Math.max(...search.map((t) => t.epochs.length));
  const xs = Array.from({ length: maxEpoch }, (_, i) => i + 1);
  const families = [...new Set(search.map((t) => t.family))];
  const familyColor = (family) => PALETTE[families.indexOf(family) % PALETTE.length];
  const series = [{ label: "epoch" }];
  const data = [xs];
  for (const t of search) {
    const color = t.state === "FAIL" ? FAILED_COLOR : t.state === "PRUNED" ? PRUNED_COLOR : familyColor(t.family);
    series.push({ label: `#${t.number} ${t.family || ""}`, stroke: color, width: t.state === "COMPLETE" ? 1.8 : 1.2,
      dash: t.state === "PRUNED" ? [5, 4] : undefined, points: { show: true, size: 4 }, value: (u, v) => fmtNum(v) });
    data.push(xs.map((_, i) => (i < t.epochs.length ? t.epochs[i][view.metric] ?? null : null)));
  }
  const hover = underTrials("trials-hover", "legend-note trials-hover");
  let focused = null;
  const show = (u) => {
    const t = focused === null ? null : search[focused - 1], i = u.cursor.idx;
    hover.dataset.trial = t ? String(t.number) : "";
    if (!t) { hover.textContent = "Hover a line: its trial, family and value."; return; }
    const v = i === null || i === undefined ? null : data[focused][i];
    const at = v === null ? `final ${fmtNum(t.value)}` : `epoch ${xs[i]}: ${fmtNum(v)}`;
    hover.replaceChildren(el("span", { class: "swatch" }), ` trial #${t.number} · ${t.family || "–"} · ${t.state.toLowerCase()} · ${view.metric} ${at}`);
    hover.firstChild.style.background = u.series[focused].stroke();
  };
  mount("trials", node, {
    scales: { x: { time: false } },
    axes: [{ label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, s) => s.map((v) => (Number.isInteger(v) ? v : "")) },
      { label: view.metric, size: 60, values: (u, s) => s.map((v) => fmtNum(v, 3)) }],
    series, legend: { show: false },
    focus: { alpha: 0.15 },
    cursor: { focus: { prox: 30 } },
    hooks: {
      setSeries: [(u, i) => { focused = i; show(u); }],
      setCursor: [(u) => show(u)],
    },
  }, data);
  show(state.charts.trials);
  const key = underTrials("trials-key", "legend-note trials-key");
  const swatch = (color, dashed) => {
    const mark = el("span", { class: dashed ? "swatch dashed" : "swatch" });
    mark.style[dashed ? "borderColor" : "background"] = color;
    return mark;
  };
  key.replaceChildren(...families.map((f) => el("span", { class: "key" }, swatch(familyColor(f)), ` ${f || "–"}`)),
    el("span", { class: "key" }, swatch(PRUNED_COLOR, true), " pruned"),
    el("span", { class: "key" }, swatch(FAILED_COLOR), " failed"));
}

// A learning-rate-free winner's curve is its schedule at its lr argument: say what that is.
const LR_FREE_CURVE = {
  prodigy: { title: "Prodigy's LR multiplier per step", axis: "LR multiplier",
    note: "Prodigy's step size is this multiplier times a scale it estimates as it trains: the curve is the schedule's shape, not the step size." },
  schedule_free: { title: "Schedule-free's LR per step", axis: "learning rate",
    note: "Schedule-free keeps its LR constant (its default) and averages the weights instead of decaying the LR." },
};

function drawSchedule(rec, lrFree) {
  const lrs = decodeSteps(rec.lr_curve);
  if (!lrs.length) return;
  const step = Math.max(1, Math.floor(lrs.length / 4000)); // thin a long curve to ~4000 points
  const xs = [], ys = [];
  for (let i = 0; i < lrs.length; i += step) { xs.push(i); ys.push(lrs[i]); }
  const free = LR_FREE_CURVE[lrFree];
  document.getElementById("schedule-title").textContent = free ? free.title : "Recommended schedule: LR per step";
  const note = document.getElementById("schedule-note");
  note.textContent = free ? free.note : "";
  note.hidden = !free;
  const label = free ? `${lrFree.replace("_", "-")} ${free.axis}, ${rec.schedule.family}` : `${rec.schedule.family} (group 0)`;
  mount("schedule", document.getElementById("schedule-chart"), {
    height: 260,
    scales: { x: { time: false } },
    axes: [{ label: "optimizer step" }, { label: free ? free.axis : "learning rate", size: 70, values: (u, s) => s.map((v) => fmtLR(v)) }],
    series: [{ label: "step" }, { label, stroke: "#16a34a", width: 2, value: (u, v) => fmtLR(v) }],
    legend: { live: false },
  }, [xs, ys]);
}

// ---------------------------------------------------------------- tables and summary
function renderJob(job) {
  state.job = job;
  document.title = `lrtune · ${job.name || job.id.slice(0, 8)}`;
  document.getElementById("job-title").textContent = `Job ${job.name || ""} ${job.id.slice(0, 8)}`;
  document.getElementById("job-status").replaceChildren(badge(job.status));
  document.getElementById("job-phase").textContent = PHASES[job.status] || job.status;
  const progress = progressOf(job, state.eta);
  document.getElementById("job-progress").replaceChildren(bar(progress.fraction), el("span", { class: "muted", id: "job-progress-text" }, progress.label || "–"));
  document.getElementById("job-eta").textContent = progress.eta === null ? "–" : fmtDuration(progress.eta);
  document.getElementById("job-best").textContent = `${fmtNum(job.progress.best_value)} ${job.spec.search.metric}`;
  document.getElementById("metric-name").textContent = job.spec.search.metric;
  document.getElementById("job-what").textContent = trains(job.spec);
  document.getElementById("cancel").hidden = ["succeeded", "failed", "cancelled"].includes(job.status);
  const error = document.getElementById("job-error");
  error.textContent = job.error ? `Error: ${job.error}` : "";
  error.hidden = !job.error;
  if (!state.finder?.range_test) {
    const p = job.progress, empty = document.getElementById("finder-empty");
    if (empty) empty.textContent = job.status === "queued" ? "waiting for a worker…"
      : p.range_test_steps_total ? `range test running: ${p.range_test_steps_done} of ${p.range_test_steps_total} steps`
      : job.status === "finding" ? "range test running…" : "no range test";
  }
}

function renderTrials(view) {
  state.trials = view;
  const rows = view.data.map((t) => el("tr", { class: t.state === "FAIL" ? "fail" : t.state === "PRUNED" ? "pruned" : "", "data-state": t.state },
    el("td", { class: "num" }, t.number), el("td", {}, t.kind), el("td", {}, t.family || "–"),
    el("td", {}, t.state.toLowerCase()), el("td", { class: "num" }, fmtLR(t.base_lr)),
    el("td", { class: "num" }, fmtNum(t.value)), el("td", { class: "num" }, t.epochs.length),
    el("td", {}, [t.candidate ? `${t.candidate} (seed ${t.seed})` : null, t.reason ? (t.candidate ? " · " : "") + t.reason : null].filter(Boolean).join("") || "")));
  document.querySelector("#trials tbody").replaceChildren(...rows);
  drawTrials(view);
}

// A learning-rate-free baseline trains with its own optimizer: say so beside its schedule,
// as the CLI's table does ("prodigy (cosine)").
function familyOf(row) {
  return row.lr_free ? `${row.lr_free.replace("_", "-")} (${row.family})` : row.family;
}

// What the LR column holds for a learning-rate-free row: the optimizer's lr argument.
const LR_FREE_LR = {
  prodigy: "prodigy's LR is Prodigy's lr argument at its default, a multiplier of the step size it estimates as it trains",
  schedule_free: "schedule-free's LR is its optimizer's default LR, held constant (it averages the weights instead of following a schedule)",
};

/** The recommended candidate against one row: "beats it on 3/3 seeds" (header "Recommended…"). */
function pairedCell(p) {
  const seeds = `${p.wins}/${p.seeds} seeds`;
  return p.verdict === "inside the seed noise" ? `inside its seed noise (better on ${seeds})` : `${p.verdict} it on ${seeds}`;
}

/** The verdict's head, then its comparisons ("beats a ...; beats b ...") as a list. */
function renderVerdict(text) {
  const cut = text.lastIndexOf(": ");
  const items = cut < 0 ? [] : text.slice(cut + 2).split("; ");
  const split = items.length > 1;
  document.getElementById("rec-verdict").textContent = split ? text.slice(0, cut + 1) : text;
  const list = document.getElementById("rec-verdict-list");
  list.replaceChildren(...(split ? items.map((item) => el("li", {}, item)) : []));
  list.hidden = !split;
}

function renderRecommendation(stored) {
  const rec = stored.recommendation;
  state.rec = rec;
  document.getElementById("rec-pending").hidden = true;
  document.getElementById("rec-body").hidden = false;
  const item = (k, v) => el("div", {}, el("span", { class: "k" }, k), el("span", { class: "v" }, v));
  const chosen = rec.comparison.find((row) => row.role === "recommended");
  document.getElementById("rec-summary").replaceChildren(
    item("Recommended", chosen ? chosen.name : "none"),
    item("Schedule", rec.schedule ? familyOf(chosen || { family: rec.schedule.family }) : "none"),
    item({ prodigy: "LR multiplier (Prodigy)", schedule_free: "LR (schedule-free default)" }[chosen?.lr_free] || "Base LR", fmtLR(rec.base_lr)),
    item(`${rec.metric} (${rec.confirmed ? "mean" : `search seed ${rec.search_seed}`})`, fmtNum(rec.value)),
    item("Confirmed", rec.confirmed ? `yes, on ${rec.decided_on_seeds} seeds` : rec.provisional ? "no (provisional)" : "no"),
    item("Suggested LR (range test)", fmtLR(rec.suggested_lr)));
  renderVerdict(rec.verdict);
  const banner = document.getElementById("rec-provisional");
  banner.hidden = !rec.provisional;
  if (rec.provisional && state.job) {
    const ended = state.job.status === "failed" ? "failed" : `was ${state.job.status}`;
    banner.textContent = `Provisional, unconfirmed: the job ${ended} before its confirmation runs; this is its best finished search trial, on one seed.`;
  }
  const seeds = rec.confirm_seeds, confirmed = seeds.length > 0; // without seeds: no mean, std or paired verdicts
  document.getElementById("confirmation-title").textContent = confirmed ? "Confirmation" : "Candidates (search seed only, not confirmed)";
  document.querySelector("#confirmation thead").replaceChildren(el("tr", {},
    el("th", {}, "Candidate"), el("th", {}, "Role"), el("th", {}, "Family"), el("th", { class: "num" }, "Base LR"),
    el("th", { class: "num" }, `search seed ${rec.search_seed}`), ...seeds.map((s) => el("th", { class: "num" }, `seed ${s}`)),
    confirmed ? [el("th", { class: "num" }, "mean"), el("th", { class: "num" }, "std"), el("th", { title: "the recommended candidate against this row, seed by seed" }, "Recommended…")] : []));
  const verdicts = Object.fromEntries(rec.paired_comparisons.map((p) => [p.baseline, p]));
  document.querySelector("#confirmation tbody").replaceChildren(...rec.comparison.map((row) => {
    const p = verdicts[row.name];
    return el("tr", { class: row.role === "recommended" ? "recommended" : "" },
      el("td", { class: "nowrap" }, row.name), el("td", {}, row.role), el("td", {}, familyOf(row)), el("td", { class: "num" }, fmtLR(row.base_lr)),
      el("td", { class: "num" }, fmtNum(row.search_value)), ...seeds.map((s) => el("td", { class: "num" }, fmtNum(row.seed_values[s]))),
      confirmed ? [el("td", { class: "num" }, fmtNum(row.mean)), el("td", { class: "num" }, fmtNum(row.std)),
        el("td", { class: "nowrap" }, p ? pairedCell(p) : "")] : []);
  }));
  const freeKinds = [...new Set(rec.comparison.map((row) => row.lr_free).filter(Boolean))];
  const note = document.getElementById("confirmation-note");
  note.textContent = freeKinds.length
    ? `Learning-rate-free baselines train with their own optimizer at its documented defaults, with no tuning: ${freeKinds.map((k) => LR_FREE_LR[k] || k).join("; ")}.`
    : "";
  note.hidden = !freeKinds.length;
  document.getElementById("snippet").textContent = rec.code || "";
  drawSchedule(rec, chosen?.lr_free);
}

// ---------------------------------------------------------------- live updates
async function refresh() {
  const job = await api(base);
  // Progress events may be ahead of the stored progress: keep the furthest of the two.
  for (const [key, value] of Object.entries(state.live)) {
    if (!(job.progress[key] >= value)) job.progress[key] = value;
  }
  renderJob(job);
  const reads = [];
  if (!state.finder?.range_test) reads.push(api(`${base}/finder`).then((view) => {
    state.finder = view;
    if (view.range_test) { document.getElementById("finder-chart").dataset.partial = "0"; drawFinder(view); }
  }));
  if (job.status !== "queued" && job.status !== "finding") reads.push(api(`${base}/trials`).then(renderTrials));
  if (job.status === "succeeded" && !state.rec) reads.push(api(`${base}/recommendation`).then(renderRecommendation));
  // A job that ended early offers its best finished trial, provisional (404: none finished).
  if ((job.status === "cancelled" || job.status === "failed") && !state.rec) {
    reads.push(api(`${base}/recommendation`).then(renderRecommendation, () => {
      document.getElementById("rec-pending").textContent =
        `The job was ${job.status} before any search trial finished: there is no recommendation.`;
    }));
  }
  await Promise.all(reads);
}

let pending = null, lastRun = 0;
function scheduleRefresh() {
  if (pending) return;
  const wait = Math.max(0, lastRun + REFRESH_MS - Date.now());
  pending = setTimeout(async () => {
    lastRun = Date.now();
    try { await refresh(); } catch (exc) { console.warn(exc); } finally { pending = null; }
  }, wait);
}

function onEvent(message) {
  let event;
  try { event = JSON.parse(message.data); } catch { return; }
  const payload = event.payload || {};
  // A progress event may carry new range-test points: [[lr, loss], ...] (drawn as they come).
  if (Array.isArray(payload.points)) { state.partial.push(...payload.points); drawPartial(); }
  const progress = payload.progress || payload; // the job's progress fields, flat or nested
  if (state.job && progress.range_test_steps_done !== undefined) {
    state.live = pick(progress, Object.keys(state.job.progress).filter((k) => k !== "best_value"));
    state.job.progress = { ...state.job.progress, ...state.live };
    renderJob(state.job);
  }
  scheduleRefresh();
}

function pick(obj, keys) {
  return Object.fromEntries(keys.filter((k) => obj[k] !== undefined).map((k) => [k, obj[k]]));
}

function listen() {
  const source = new EventSource(`${base}/events`);
  source.onmessage = onEvent;
  source.addEventListener("end", () => { source.close(); scheduleRefresh(); });
  source.addEventListener("unavailable", () => scheduleRefresh()); // EventSource retries itself
}

document.getElementById("finder-png").href = `${base}/finder.png`;

// optuna-dashboard, when the API serves it (a 401 until logged in: the link leads to the login).
fetch("/dashboard", { method: "HEAD" }).then((r) => {
  const link = document.getElementById("optuna-link");
  link.href = `/jobs/${encodeURIComponent(jobId)}/optuna`;
  if (r.status !== 404) link.hidden = false;
}).catch(() => {});

document.getElementById("cancel").addEventListener("click", async (event) => {
  if (!confirm("Cancel this job? Its partial results stay.")) return;
  event.target.disabled = true;
  try { renderJob(await api(`${base}/cancel`, { method: "POST" })); }
  catch (exc) { alert(`Not cancelled: ${exc.message}`); }
  finally { event.target.disabled = false; }
});

document.getElementById("copy").addEventListener("click", async (event) => {
  const text = document.getElementById("snippet").textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = el("textarea", {}, text);
    document.body.append(area); area.select(); document.execCommand("copy"); area.remove();
  }
  event.target.textContent = "Copied";
  setTimeout(() => { event.target.textContent = "Copy"; }, 2000);
});

refresh().then(listen).catch((exc) => {
  const error = document.getElementById("job-error");
  error.textContent = exc.status === 404 ? `No job ${jobId}.` : `Cannot read the job: ${exc.message}`;
  error.hidden = false;
});
