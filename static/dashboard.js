// The Ollama Host dashboard: polls the admin endpoints and draws what they say.
//
// Everything that came from a caller (prompts, answers, tags, model names) reaches
// the page through textContent or an attribute, never as HTML.

import { el } from "./dom.js";
import { renderGpu } from "./gpu.js";

const POLL_MS = 3000;
const PAGE_SIZE = 50;
const MAX_ROWS = 500;
const PERIODS = {
  // period: [milliseconds back, bucket the server adds up by]
  "15m": [15 * 60e3, "minute"],
  "1h": [60 * 60e3, "minute"],
  "24h": [24 * 3600e3, "hour"],
  "7d": [7 * 86400e3, "hour"],
  "30d": [30 * 86400e3, "day"],
  all: [null, "day"],
};
const BUCKET_WORD = { 60: "minute", 3600: "hour", 86400: "day" };
const FILTER_KEYS = [
  "model", "project", "process_id", "subprocess_id", "front", "endpoint", "upstream", "status",
];
const THEME_KEY = "ollama-host-theme";

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat();

const state = {
  filters: {
    period: "24h", model: "", project: "", process_id: "", subprocess_id: "",
    front: "", endpoint: "", upstream: "", status: "",
  },
  rows: [], // newest first
  etags: new Map(), // url -> etag
  timer: null,
  busy: false,
  again: false,
  lastDuration: 0, // ms the last refresh took
  generation: 0, // bumped when the filters change, so late answers to old filters are dropped
  nextCursor: null,
};

// ---- small helpers ------------------------------------------------------------------------

function fmtInt(value) {
  return value === null || value === undefined ? "–" : numberFormat.format(value);
}

function fmtSeconds(value) {
  if (value === null || value === undefined) return "–";
  if (value > 0 && value < 0.0005) return "<1 ms";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 100) return `${value.toFixed(2)} s`;
  if (value < 3600) return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  return `${(value / 3600).toFixed(1)} h`;
}

function fmtRate(value) {
  if (value === null || value === undefined) return "–";
  // 9.9 tok/s keeps its decimal; 2,962,963 (a model that reports microseconds) gets commas.
  return value < 100 ? value.toFixed(1) : numberFormat.format(Math.round(value));
}

function fmtTime(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return today ? time : `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function fmtBucket(iso, seconds) {
  const date = new Date(iso);
  if (seconds >= 86400) return date.toLocaleDateString([], { month: "short", day: "numeric" });
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (new Date().toDateString() === date.toDateString()) return time;
  return `${date.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

function tokensPerSecond(record) {
  if (record.tokens_estimated || !record.eval_seconds || !record.output_tokens) return null;
  return record.output_tokens / record.eval_seconds;
}

function processOf(record) {
  if (!record.process_id && !record.subprocess_id) return "";
  return `${record.process_id || "-"}/${record.subprocess_id || "-"}`;
}

function showProblem(message) {
  const box = $("problem");
  box.textContent = message || "";
  box.hidden = !message;
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) {
    // Not our JSON error shape; the status line says enough.
  }
  return `HTTP ${response.status}`;
}

class Unreachable extends Error {}

// GET a JSON endpoint, revalidating with the ETag we hold. `stale` means the filters changed
// while it was on its way; `unchanged` that the server answered 304.
async function getJSON(path, params, generation) {
  const url = `${path}?${params}`;
  const headers = {};
  const etag = state.etags.get(url);
  if (etag) headers["If-None-Match"] = etag;
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store" });
  } catch (_) {
    // fetch rejects only when no answer came back at all.
    throw new Unreachable();
  }
  if (generation !== state.generation) return { stale: true };
  if (response.status === 304) return { unchanged: true, response };
  if (!response.ok) throw new Error(`${path}: ${await errorText(response)}`);
  const body = await response.json();
  if (generation !== state.generation) return { stale: true };
  const tag = response.headers.get("ETag");
  if (tag) {
    if (state.etags.size > 50) state.etags.clear();
    state.etags.set(url, tag);
  }
  return { response, body };
}

// ---- filters and the URL -------------------------------------------------------------------

function readURL() {
  const params = new URLSearchParams(location.search);
  const period = params.get("period");
  if (period && period in PERIODS) state.filters.period = period;
  for (const key of FILTER_KEYS) state.filters[key] = params.get(key) || "";
}

function writeURL() {
  const params = new URLSearchParams();
  if (state.filters.period !== "24h") params.set("period", state.filters.period);
  for (const key of FILTER_KEYS) if (state.filters[key]) params.set(key, state.filters[key]);
  const search = params.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
}

function fillForm() {
  const form = $("filters");
  form.elements.period.value = state.filters.period;
  for (const key of FILTER_KEYS) form.elements[key].value = state.filters[key];
}

// The query the API understands. `since` is rounded down to the minute so the URL (and its
// ETag) stays the same for a minute and an idle page's polls are answered 304.
function apiParams() {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) if (state.filters[key]) params.set(key, state.filters[key]);
  const back = PERIODS[state.filters.period][0];
  if (back !== null) {
    const minute = Math.floor(Date.now() / 60e3) * 60e3;
    params.set("since", new Date(minute - back).toISOString());
  }
  return params;
}

function updateExportLinks() {
  for (const format of ["csv", "json"]) {
    const params = apiParams();
    params.set("format", format);
    $(`export-${format}`).href = `/api/v1/admin/export?${params}`;
  }
}

function onFiltersChanged() {
  const form = $("filters");
  state.filters.period = form.elements.period.value;
  for (const key of FILTER_KEYS) state.filters[key] = form.elements[key].value.trim();
  writeURL();
  resetTable();
  refresh();
}

function setFilter(key, value) {
  state.filters[key] = value;
  fillForm();
  onFiltersChanged();
}

// ---- totals, charts, breakdowns ------------------------------------------------------------

function renderTotals(totals) {
  const cards = [
    ["t-calls", totals.calls, fmtInt],
    ["t-input", totals.input_tokens, fmtInt],
    ["t-output", totals.output_tokens, fmtInt],
    ["t-model", totals.model_seconds, fmtSeconds],
    ["t-errors", totals.errors, fmtInt],
    ["t-cancelled", totals.cancelled, fmtInt],
  ];
  for (const [id, value, format] of cards) {
    const node = $(id);
    node.textContent = format(value);
    // The exact figure, for a tooltip (and for tests, which compare it with the API's).
    node.dataset.value = String(value);
    node.title = String(value);
  }
}

// Every bucket from the period's start to now, including the empty ones the server leaves out.
function filledSeries(stats) {
  const step = stats.bucket_seconds * 1000;
  const byStart = new Map(stats.series.map((b) => [Date.parse(b.start), b]));
  const back = PERIODS[state.filters.period][0];
  const now = Date.now();
  let first = back === null ? null : Math.floor((now - back) / step) * step;
  if (first === null) first = stats.series.length ? Date.parse(stats.series[0].start) : Math.floor(now / step) * step;
  const last = Math.floor(now / step) * step;
  const out = [];
  // A cap, so that a strange clock cannot make the browser draw a million bars.
  for (let t = first; t <= last && out.length < 2000; t += step) {
    out.push(byStart.get(t) || { start: new Date(t).toISOString(), calls: 0, input_tokens: 0, output_tokens: 0 });
  }
  return out;
}

const SVG = "http://www.w3.org/2000/svg";

function drawBars(svg, series, parts, bucketSeconds) {
  // The SVG is 100 x 100 user units stretched to its box; bars need no text, so stretching is fine.
  svg.replaceChildren();
  const totals = series.map((b) => parts.reduce((sum, [key]) => sum + b[key], 0));
  const peak = Math.max(0, ...totals);
  const max = Math.max(1, peak);
  const width = 100 / Math.max(1, series.length);
  const gap = series.length > 60 ? 0 : width * 0.15;
  series.forEach((bucket, i) => {
    let y = 100;
    for (const [key, className] of parts) {
      const value = bucket[key];
      if (!value) continue;
      const height = (value / max) * 100;
      y -= height;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", String(i * width + gap / 2));
      rect.setAttribute("width", String(Math.max(width - gap, 0.2)));
      rect.setAttribute("y", String(y));
      rect.setAttribute("height", String(height));
      rect.setAttribute("class", className);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${fmtBucket(bucket.start, bucketSeconds)}: ${fmtInt(value)} ${className === "calls" ? "calls" : `${className}put tokens`}`;
      rect.append(title);
      svg.append(rect);
    }
  });
  return peak;
}

function renderCharts(stats) {
  const series = filledSeries(stats);
  const word = BUCKET_WORD[stats.bucket_seconds] || `${stats.bucket_seconds} s`;
  $("calls-per").textContent = `per ${word}`;
  $("tokens-per").textContent = `per ${word}`;
  const callsMax = drawBars($("chart-calls"), series, [["calls", "calls"]], stats.bucket_seconds);
  const tokensMax = drawBars(
    $("chart-tokens"),
    series,
    [["input_tokens", "in"], ["output_tokens", "out"]],
    stats.bucket_seconds,
  );
  const from = series.length ? fmtBucket(series[0].start, stats.bucket_seconds) : "";
  const to = series.length ? fmtBucket(series[series.length - 1].start, stats.bucket_seconds) : "";
  $("calls-from").textContent = from;
  $("tokens-from").textContent = from;
  $("calls-to").textContent = to;
  $("tokens-to").textContent = to;
  $("calls-max").textContent = callsMax ? `peak ${fmtInt(callsMax)}` : "no calls";
  $("tokens-max").textContent = tokensMax ? `peak ${fmtInt(tokensMax)}` : "no tokens";
}

const BREAKDOWN_COLUMNS = [
  ["calls", "Calls", fmtInt],
  ["input_tokens", "In", fmtInt],
  ["output_tokens", "Out", fmtInt],
  ["model_seconds", "Model time", fmtSeconds],
  ["p50_seconds", "p50", fmtSeconds],
  ["p95_seconds", "p95", fmtSeconds],
  ["p50_ttft_seconds", "TTFT p50", fmtSeconds],
  ["tokens_per_second", "Tok/s", fmtRate],
  ["errors", "Errors", fmtInt],
];

function renderBreakdown(table, rows, label) {
  const head = el("tr");
  head.append(el("th", label));
  for (const [, title] of BREAKDOWN_COLUMNS) head.append(el("th", title, "num"));
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    const key = el("td", row.key, "key");
    key.title = row.key;
    tr.append(key);
    for (const [field, , format] of BREAKDOWN_COLUMNS) tr.append(el("td", format(row[field]), "num"));
    tr.dataset.key = row.key;
    if (row.key === "-" || row.key === "-/-") tr.classList.add("nofilter");
    else tr.title = "Show only these calls";
    body.append(tr);
  }
  if (!rows.length) {
    const tr = el("tr", null, "nofilter");
    const td = el("td", "No calls in this period.", "muted");
    td.colSpan = BREAKDOWN_COLUMNS.length + 1;
    tr.append(td);
    body.append(tr);
  }
  table.replaceChildren(el("thead"), body);
  table.tHead.append(head);
}

function onBreakdownClick(event) {
  const tr = event.target.closest("tr");
  const table = event.currentTarget;
  if (!tr || !tr.dataset.key || tr.classList.contains("nofilter")) return;
  const key = tr.dataset.key;
  if (table.dataset.filter === "process") {
    const [process, sub] = key.split("/");
    state.filters.process_id = process === "-" ? "" : process;
    state.filters.subprocess_id = sub === "-" ? "" : sub;
    fillForm();
    onFiltersChanged();
  } else {
    setFilter(table.dataset.filter, key);
  }
}

function fillDatalist(id, values) {
  const list = $(id);
  const known = new Set([...list.options].map((o) => o.value));
  for (const value of values) {
    if (value && value !== "-" && !known.has(value)) {
      const option = el("option");
      option.value = value;
      list.append(option);
      known.add(value);
    }
  }
}

function renderStats(stats) {
  renderGpu(stats, setFilter);
  renderTotals(stats.totals);
  renderCharts(stats);
  renderBreakdown($("by-model"), stats.by_model, "Model");
  renderBreakdown($("by-project"), stats.by_project, "Project");
  renderBreakdown($("by-process"), stats.by_process, "Process/sub");
  renderBreakdown($("by-front"), stats.by_front || [], "Front");
  renderBreakdown($("by-endpoint"), stats.by_endpoint || [], "Endpoint");
  renderBreakdown($("by-upstream"), stats.by_upstream || [], "Upstream");
  fillDatalist("models-seen", stats.by_model.map((r) => r.key));
  fillDatalist("projects-seen", stats.by_project.map((r) => r.key));
  fillDatalist("processes-seen", stats.by_process.map((r) => r.key.split("/")[0]));
  fillDatalist("subprocesses-seen", stats.by_process.map((r) => r.key.split("/")[1]));
  fillDatalist("endpoints-seen", (stats.by_endpoint || []).map((r) => r.key));
  fillDatalist("upstreams-seen", (stats.by_upstream || []).map((r) => r.key));
}

async function refreshStats(generation) {
  const params = apiParams();
  params.set("bucket", PERIODS[state.filters.period][1]);
  const result = await getJSON("/api/v1/admin/stats", params, generation);
  if (result.stale || result.unchanged) return;
  renderStats(result.body);
}

// ---- upstreams ------------------------------------------------------------------------------

function upstreamState(upstream) {
  // "up" with a closed circuit; otherwise the circuit says whether calls still go there.
  if (upstream.status === "up" && (!upstream.circuit || upstream.circuit === "closed")) return ["up", "up"];
  if (upstream.circuit === "half-open") return ["half-open", "trial calls"];
  return ["down", upstream.circuit === "open" ? "down · circuit open" : "down"];
}

function renderUpstreams(upstreams) {
  const body = el("tbody");
  for (const upstream of upstreams) {
    const tr = el("tr");
    tr.dataset.name = upstream.name;
    const name = el("td", upstream.name);
    name.append(el("span", ` ${upstream.kind}`, "muted small"));
    const [kind, text] = upstreamState(upstream);
    const cap = upstream.capacity === null || upstream.capacity === undefined ? "" : ` / ${upstream.capacity}`;
    const models = el("td", null, "models");
    const loaded = new Set(upstream.loaded || []);
    (upstream.models || []).forEach((model, i) => {
      if (i) models.append(", ");
      models.append(el("span", model, loaded.has(model) ? "loaded" : ""));
    });
    tr.append(
      name,
      el("td", text, `state ${kind}`),
      el("td", `${fmtInt(upstream.in_flight)}${cap}`, "num"),
      el("td", fmtInt(upstream.waiting || 0), "num"),
      models,
      el("td", upstream.address, "key"),
    );
    body.append(tr);
    if (upstream.error) {
      const why = el("tr");
      const td = el("td", upstream.error, "problem-text");
      td.colSpan = 6;
      why.append(td);
      body.append(why);
    }
  }
  $("upstreams").tBodies[0].replaceWith(body);
}

async function refreshUpstreams() {
  // /health reports the router's last reading; it asks no upstream on the way.
  let response;
  try {
    response = await fetch("/health", { cache: "no-store" });
  } catch (_) {
    throw new Unreachable();
  }
  if (!response.ok) return;
  const health = await response.json();
  renderUpstreams(health.upstreams || []);
}

// ---- the live table ------------------------------------------------------------------------

function callRow(record) {
  const tr = el("tr");
  tr.dataset.id = record.id;
  tr.tabIndex = 0;
  tr.append(el("td", fmtTime(record.date)));
  const status = el("td", record.status, `status ${record.status}`);
  if (record.error) status.title = record.error;
  tr.append(status);
  for (const text of [record.model_name, record.front || "", record.project || "", processOf(record)]) {
    const td = el("td", text, "cell-text");
    td.title = text;
    tr.append(td);
  }
  tr.append(el("td", fmtInt(record.input_tokens), "num"));
  tr.append(el("td", `${record.tokens_estimated ? "≈" : ""}${fmtInt(record.output_tokens)}`, "num"));
  tr.append(el("td", record.total_seconds.toFixed(2), "num"));
  tr.append(el("td", fmtRate(tokensPerSecond(record)), "num"));
  return tr;
}

// New filters: answers still on their way are for the old ones, and the ETags we hold
// describe what the page showed before, so both are dropped.
function resetTable() {
  state.generation += 1;
  state.etags.clear();
  clearTable();
}

function clearTable() {
  state.rows = [];
  state.nextCursor = null;
  $("calls").tBodies[0].replaceChildren();
  $("older").hidden = true;
}

function byIdNewestFirst(a, b) {
  return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
}

async function refreshTable(generation) {
  const params = apiParams();
  params.set("limit", String(PAGE_SIZE));
  const result = await getJSON("/api/v1/admin/dashboard", params, generation);
  if (result.stale || result.unchanged) return;
  const records = result.body;
  const body = $("calls").tBodies[0];
  if (!state.rows.length) {
    state.nextCursor = result.response.headers.get("X-Next-Cursor");
    body.replaceChildren(...records.map(callRow));
    state.rows = records;
  } else {
    // A call's id is taken when it starts and its record lands when it ends, so a long
    // call can arrive after newer ones: merge the newest page in by id, not by arrival.
    const known = new Set(state.rows.map((record) => record.id));
    // Older than the last row shown while older pages remain: "Load older" brings it.
    const floor = state.nextCursor ? state.rows[state.rows.length - 1].id : "";
    const fresh = records.filter((record) => !known.has(record.id) && record.id > floor);
    if (fresh.length >= PAGE_SIZE) {
      // More arrived than one page holds: start over rather than leave a hole in the table.
      clearTable();
      return refreshTable(generation);
    }
    if (fresh.length) {
      const added = new Set(fresh.map((record) => record.id));
      state.rows = state.rows.concat(fresh).sort(byIdNewestFirst);
      if (state.rows.length > MAX_ROWS) {
        state.rows.length = MAX_ROWS;
        state.nextCursor = state.rows[state.rows.length - 1].id;
      }
      body.replaceChildren(
        ...state.rows.map((record) => {
          const tr = callRow(record);
          if (added.has(record.id)) tr.classList.add("new");
          return tr;
        }),
      );
    }
  }
  $("calls-empty").hidden = state.rows.length > 0;
  $("older").hidden = !state.nextCursor;
}

async function loadOlder() {
  if (!state.nextCursor) return;
  const generation = state.generation;
  const params = apiParams();
  params.set("limit", String(PAGE_SIZE));
  params.set("cursor", state.nextCursor);
  try {
    const result = await getJSON("/api/v1/admin/dashboard", params, generation);
    if (result.stale || result.unchanged) return;
    state.nextCursor = result.response.headers.get("X-Next-Cursor");
    $("calls").tBodies[0].append(...result.body.map(callRow));
    state.rows = state.rows.concat(result.body);
    $("older").hidden = !state.nextCursor;
  } catch (error) {
    showProblem(error.message);
  }
}

// ---- one call's detail ---------------------------------------------------------------------

function latencyParts(record) {
  // Ollama's total covers loading, prompt evaluation and generation; what is left of it is
  // time it spent queueing or scheduling. The gateway's total adds the network and relaying.
  const load = record.load_seconds || 0;
  const prompt = record.prompt_eval_seconds || 0;
  const gen = record.eval_seconds || 0;
  const upstream = record.upstream_seconds;
  const queue = load + (upstream ? Math.max(0, upstream - load - prompt - gen) : 0);
  const gateway = upstream ? Math.max(0, record.total_seconds - upstream) : Math.max(0, record.total_seconds - queue - prompt - gen);
  return [
    ["queue / load", queue, "seg-queue"],
    ["prompt evaluation", prompt, "seg-prompt"],
    ["generation", gen, "seg-gen"],
    [upstream ? "gateway & network" : "not accounted for by Ollama", gateway, "seg-gateway"],
  ];
}

function showDetail(record) {
  $("d-title").textContent = `Call ${record.id}`;
  const meta = $("d-meta");
  meta.replaceChildren();
  const facts = [
    ["When", new Date(record.date).toLocaleString()],
    ["Model", record.model_name],
    ["Came in by", [record.front, record.endpoint].filter(Boolean).join(" ") || "–"],
    ["Status", record.status + (record.done_reason ? ` (${record.done_reason})` : "")],
    ["Project", record.project || "–"],
    ["Process", processOf(record) || "–"],
    ["Tokens", `${fmtInt(record.input_tokens)} in, ${record.tokens_estimated ? "≈" : ""}${fmtInt(record.output_tokens)} out`],
    ["Total", fmtSeconds(record.total_seconds)],
    ["First token after", fmtSeconds(record.ttft_seconds)],
    ["Tokens/s", fmtRate(tokensPerSecond(record))],
    ["Streamed", record.streamed ? "yes" : "no"],
  ];
  if (record.upstream) facts.push(["Upstream", record.upstream + (record.attempts > 1 ? ` (${record.attempts} tries)` : "")]);
  if (record.gpu_seconds !== null && record.gpu_seconds !== undefined) {
    facts.push(["GPU time", fmtSeconds(record.gpu_seconds) + (record.cost ? ` (cost ${record.cost.toFixed(4)})` : "")]);
  }
  if (record.input_count !== null && record.input_count !== undefined) facts.push(["Inputs embedded", fmtInt(record.input_count)]);
  if (record.user) facts.push(["User", record.user]);
  for (const [term, value] of facts) meta.append(el("dt", term), el("dd", value));

  const bar = $("d-latency");
  const legend = $("d-latency-legend");
  bar.replaceChildren();
  legend.replaceChildren();
  const parts = latencyParts(record);
  const sum = parts.reduce((total, [, seconds]) => total + seconds, 0) || 1;
  for (const [name, seconds, className] of parts) {
    if (seconds > 0) {
      const segment = el("span", null, className);
      segment.style.width = `${(seconds / sum) * 100}%`;
      segment.title = `${name}: ${fmtSeconds(seconds)}`;
      bar.append(segment);
    }
    const item = el("li");
    item.append(el("span", null, `swatch ${className}`), el("span", `${name} ${fmtSeconds(seconds)}`));
    legend.append(item);
  }

  const error = $("d-error");
  error.hidden = !record.error;
  error.textContent = record.error ? `${record.error_code || "error"}: ${record.error}` : "";

  const input = $("d-input");
  input.replaceChildren();
  for (const message of record.input) {
    const box = el("div", null, "message");
    box.append(el("div", message.role, "role"), el("pre", message.content));
    input.append(box);
  }
  $("d-output").textContent = record.output;
  const dialog = $("detail");
  if (!dialog.open) dialog.showModal();
}

function onCallClick(event) {
  const tr = event.target.closest("tr[data-id]");
  if (!tr) return;
  const record = state.rows.find((r) => r.id === tr.dataset.id);
  if (record) showDetail(record);
}

// ---- polling -------------------------------------------------------------------------------

function setLive(ok, text) {
  $("live").className = `live ${ok ? "on" : "off"}`;
  $("live-text").textContent = text;
}

async function refresh() {
  if (state.busy) {
    // Whatever changed since that refresh started is fetched right after it.
    state.again = true;
    return;
  }
  state.busy = true;
  state.again = false;
  const generation = state.generation;
  updateExportLinks();
  const began = performance.now();
  try {
    await Promise.all([refreshStats(generation), refreshTable(generation), refreshUpstreams()]);
    state.lastDuration = performance.now() - began;
    showProblem("");
    setLive(true, `live · updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (error instanceof Unreachable) {
      setLive(false, "cannot reach the gateway");
      showProblem(`The gateway at ${location.host} does not answer; the page keeps trying.`);
    } else {
      setLive(false, "the gateway reported a problem");
      showProblem(error.message);
    }
  } finally {
    state.busy = false;
    if (state.again) refresh();
  }
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = null;
  // A hidden tab does not poll at all; it catches up the moment it is shown again.
  if (document.hidden) return;
  // On a log so big that adding it up takes a while, poll less often rather than keep the
  // store busy: a page never asks for more than a fifth of the store's time.
  const delay = Math.max(POLL_MS, 5 * state.lastDuration);
  state.timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, delay);
}

// ---- theme ---------------------------------------------------------------------------------

function currentTheme() {
  return document.documentElement.dataset.theme || "auto";
}

function showTheme() {
  $("theme").textContent = `Theme: ${currentTheme()}`;
}

function nextTheme() {
  const order = ["auto", "light", "dark"];
  const next = order[(order.indexOf(currentTheme()) + 1) % order.length];
  if (next === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = next;
  try {
    if (next === "auto") localStorage.removeItem(THEME_KEY);
    else localStorage.setItem(THEME_KEY, next);
  } catch (_) {
    // Without storage the choice lasts until the page is closed.
  }
  showTheme();
}

// ---- the playground ------------------------------------------------------------------------

const playground = { source: null };

async function loadModels() {
  const select = $("playground").elements.agent;
  try {
    const response = await fetch("/api/v1/ai/models", { cache: "no-store" });
    if (!response.ok) throw new Error(await errorText(response));
    const models = await response.json();
    select.replaceChildren(...models.map((name) => {
      const option = el("option", name);
      option.value = name;
      return option;
    }));
    if (!models.length) $("pg-status").textContent = "Ollama has no models installed.";
    // Send stays disabled until there is a model to send to.
    $("pg-send").disabled = !models.length || playground.source !== null;
  } catch (error) {
    $("pg-status").textContent = `Cannot list the models: ${error.message}`;
  }
}

function stopStream(reason) {
  if (playground.source) {
    playground.source.close();
    playground.source = null;
  }
  $("pg-send").disabled = $("playground").elements.agent.options.length === 0;
  $("pg-stop").disabled = true;
  if (reason) $("pg-status").textContent = reason;
}

function parseData(event) {
  try {
    return JSON.parse(event.data);
  } catch (_) {
    return null;
  }
}

function startStream(event) {
  event.preventDefault();
  stopStream();
  const form = $("playground");
  const params = new URLSearchParams();
  params.set("agent", form.elements.agent.value);
  params.set("content", form.elements.content.value);
  // Stop means stop: the playground never resumes, so the model should not go on for
  // --resume-window seconds after the stream is closed.
  params.set("resumable", "false");
  if (form.elements.template.value.trim()) params.set("template", form.elements.template.value);
  if (form.elements.project.value.trim()) params.set("project", form.elements.project.value.trim());
  const output = $("pg-output");
  const thinking = $("pg-thinking");
  output.replaceChildren();
  thinking.replaceChildren();
  thinking.hidden = true;
  $("pg-status").textContent = "waiting for the model…";
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;

  const source = new EventSource(`/api/v1/ai/ask_async?${params}`);
  playground.source = source;
  source.addEventListener("start", (e) => {
    const data = parseData(e);
    $("pg-status").textContent = data ? `answering (call ${data.id})…` : "answering…";
  });
  // The fair queue (docs/queue.md): where the call stands while it waits for a slot, and a
  // model load on the way.
  source.addEventListener("queued", (e) => {
    const data = parseData(e);
    if (data) $("pg-status").textContent = `queued: position ${data.position} (${data.ahead} ahead)…`;
  });
  source.addEventListener("loading", (e) => {
    const data = parseData(e);
    if (data) $("pg-status").textContent = `loading ${data.model} on ${data.upstream}…`;
  });
  source.addEventListener("token", (e) => {
    const data = parseData(e);
    if (!data) return;
    if (data.thinking) {
      thinking.hidden = false;
      thinking.append(document.createTextNode(data.thinking));
    }
    if (data.content) output.append(document.createTextNode(data.content));
  });
  source.addEventListener("done", (e) => {
    const usage = parseData(e) || {};
    // Close now: a reconnect would only be answered 204 (an answer cannot be resumed).
    stopStream(
      `done: ${fmtInt(usage.input_tokens)} tokens in, ${fmtInt(usage.output_tokens)} out, ${fmtSeconds(usage.total_seconds)}`,
    );
    refresh();
  });
  source.addEventListener("error", (e) => {
    if (source !== playground.source) return;
    const data = e.data ? parseData(e) : null;
    if (data && data.error) {
      stopStream(`error: ${data.error.message}`);
    } else {
      // The connection itself failed: the request was refused before streaming, or dropped.
      stopStream("the stream could not open or was cut; the call's record says why");
    }
    refresh();
  });
}

// ---- start ---------------------------------------------------------------------------------

function start() {
  readURL();
  fillForm();
  showTheme();
  $("theme").addEventListener("click", nextTheme);

  const form = $("filters");
  form.addEventListener("change", onFiltersChanged);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    onFiltersChanged();
  });
  form.addEventListener("reset", () => {
    // The reset has not happened yet when this runs; read the form after it has.
    setTimeout(onFiltersChanged, 0);
  });
  for (const table of document.querySelectorAll("table.breakdown")) {
    table.addEventListener("click", onBreakdownClick);
  }
  const calls = $("calls");
  calls.addEventListener("click", onCallClick);
  calls.addEventListener("keydown", (event) => {
    if (event.key === "Enter") onCallClick(event);
  });
  $("older").addEventListener("click", loadOlder);

  $("playground").addEventListener("submit", startStream);
  $("playground").elements.content.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("pg-send").disabled) {
      $("playground").requestSubmit();
    }
  });
  $("pg-stop").addEventListener("click", () => stopStream("stopped"));
  // Leaving the page ends the stream, so the gateway stops Ollama generating for nobody.
  window.addEventListener("pagehide", () => stopStream());

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
    schedule();
  });
  loadModels();
  refresh();
  schedule();
}

start();
