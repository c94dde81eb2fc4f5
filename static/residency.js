// The residency view: which models each upstream held when, how often each was loaded and what
// loading cost, which models push each other out, and the advice the numbers support.
// Polls /api/v1/admin/residency (the last hour). A file of its own beside dashboard.js.
//
// Model names and key labels come from callers and upstreams: they reach the page through
// textContent and attributes only, never as HTML.

import { el } from "./dom.js";

const POLL_MS = 5000;
const HOURS = 1;
const SVG = "http://www.w3.org/2000/svg";
const LANE = 18; // px per model in the timeline

const $ = (id) => document.getElementById(id);

function seconds(value) {
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

function table(headers, rows) {
  const t = el("table", null, "breakdown");
  const head = el("tr");
  for (const h of headers) head.append(el("th", h, typeof h === "string" && h.startsWith("#") ? "num" : ""));
  t.append(el("thead"));
  t.tHead.append(head);
  const body = el("tbody");
  for (const row of rows) {
    const tr = el("tr");
    for (const cell of row) tr.append(el("td", cell, typeof cell === "number" ? "num" : ""));
    body.append(tr);
  }
  t.append(body);
  return t;
}

// Intervals each model was resident, from the events (oldest first) and what is loaded now.
function intervals(view, since, until) {
  const open = new Map(); // model -> start ms
  const spans = new Map(); // model -> [[start, end, reloaded]]
  const add = (model, start, end, kind) => {
    if (!spans.has(model)) spans.set(model, []);
    spans.get(model).push([start, end, kind]);
  };
  for (const event of view.events) {
    const at = Date.parse(event.at);
    if (event.event === "loaded") {
      open.set(event.model, at);
    } else if (event.event === "unloaded") {
      add(event.model, open.has(event.model) ? open.get(event.model) : since, at, "loaded");
      open.delete(event.model);
    } else if (event.event === "reloaded") {
      add(event.model, open.has(event.model) ? open.get(event.model) : since, at, "loaded");
      open.set(event.model, at);
      add(event.model, at, at, "reload");
    }
  }
  for (const model of view.loaded) {
    add(model, open.has(model) ? open.get(model) : since, until, "loaded");
  }
  return spans;
}

function timeline(view, periodStart, until) {
  // From the first change seen in the period (a minute at least) to now, so that loads a
  // few seconds apart are told apart; the axis says which times these are.
  const first = Math.min(...view.events.map((e) => Date.parse(e.at)), until);
  const since = Math.max(periodStart, Math.min(first - 0.05 * (until - first), until - 60e3));
  const spans = intervals(view, since, until);
  const models = [...spans.keys()].sort();
  const svg = document.createElementNS(SVG, "svg");
  const height = Math.max(1, models.length) * LANE;
  svg.setAttribute("viewBox", `0 0 1000 ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "residency-timeline");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `models loaded on ${view.name} over the last hour`);
  svg.style.height = `${height}px`;
  const x = (ms) => Math.max(0, Math.min(1000, ((ms - since) / (until - since)) * 1000));
  models.forEach((model, i) => {
    for (const [start, end, kind] of spans.get(model)) {
      const rect = document.createElementNS(SVG, "rect");
      const left = x(start);
      rect.setAttribute("x", String(left));
      rect.setAttribute("y", String(i * LANE + 3));
      rect.setAttribute("width", String(Math.max(kind === "reload" ? 3 : 2, x(end) - left)));
      rect.setAttribute("height", String(LANE - 6));
      rect.setAttribute("class", kind === "reload" ? "reload" : `lane${i % 6}`);
      const title = document.createElementNS(SVG, "title");
      title.textContent = kind === "reload"
        ? `${model} reloaded at ${new Date(start).toLocaleTimeString()}`
        : `${model}: ${new Date(start).toLocaleTimeString()} – ${new Date(end).toLocaleTimeString()}`;
      rect.append(title);
      svg.append(rect);
    }
  });
  const labels = el("ul", null, "residency-lanes");
  for (const model of models) labels.append(el("li", model));
  const wrap = el("div", null, "residency-chart");
  const axis = el("div", null, "axis");
  axis.append(el("span", new Date(since).toLocaleTimeString()), el("span", "now"));
  wrap.append(labels, svg, el("span"), axis);
  if (!models.length) wrap.append(el("p", "Nothing loaded in the last hour.", "muted"));
  return wrap;
}

function render(reply) {
  const root = $("residency-body");
  const since = Date.parse(reply.since);
  const until = Date.parse(reply.until);
  const parts = [];
  for (const view of reply.upstreams) {
    const box = el("article", null, "residency-upstream");
    box.dataset.upstream = view.name;
    const title = el("h3", view.name);
    title.append(el("span", ` holds ${view.loaded.length ? view.loaded.join(", ") : "nothing"} now`, "muted small"));
    box.append(title);
    for (const text of view.advice) box.append(el("p", text, "advice"));
    box.append(timeline(view, since, until));
    const grid = el("div", null, "residency-grid");
    if (view.models.length) {
      const loads = el("div");
      loads.append(el("h4", "Loads"), table(
        ["Model", "#Loads", "Loading"],
        view.models.map((m) => [m.model, m.loads, seconds(m.load_seconds)]),
      ));
      grid.append(loads);
    }
    if (view.pairs.length) {
      const pairs = el("div");
      pairs.append(el("h4", "Pushed out"), table(
        ["Loading", "unloaded", "#Times", "Loading"],
        view.pairs.map((p) => [p.loaded, p.evicted, p.times, seconds(p.load_seconds)]),
      ));
      grid.append(pairs);
    }
    if (view.option_reloads.length) {
      const reloads = el("div");
      reloads.append(el("h4", "Reloads by options"), table(
        ["Key", "Model", "#Times", "Loading"],
        view.option_reloads.map((r) => [r.key, r.model, r.times, seconds(r.load_seconds)]),
      ));
      grid.append(reloads);
    }
    if (!grid.childElementCount) grid.append(el("p", "No call paid for a model load in the last hour.", "muted"));
    box.append(grid);
    parts.push(box);
  }
  if (!parts.length) parts.push(el("p", "No upstream reports its loaded models.", "muted"));
  root.replaceChildren(...parts);
  $("residency-section").dataset.loaded = "true";
}

async function refresh() {
  try {
    const response = await fetch(`/api/v1/admin/residency?hours=${HOURS}`, { cache: "no-store" });
    if (response.ok) render(await response.json());
  } catch {
    // The dashboard's own status line says when the gateway cannot be reached.
  } finally {
    setTimeout(refresh, document.hidden ? POLL_MS * 4 : POLL_MS);
  }
}

refresh();
