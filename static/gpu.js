// The dashboard's headline: GPU time. Who used how much (by project, key and model), of
// which upstream, what share of it was model loading, and what it cost, beside the tokens.
// Drawn from the admin stats the page already polls (totals and the by_* breakdowns).
//
// Everything that came from a caller (project, key labels, model names) reaches the page
// through textContent or an attribute, never as HTML.

import { el } from "./dom.js";

const ROWS = 8;
const numberFormat = new Intl.NumberFormat();
const TABLES = [
  // table id, the stats breakdown, whether a row click filters the page by it
  ["gpu-by-project", "by_project", "project"],
  ["gpu-by-key", "by_key", null],
  ["gpu-by-model", "by_model", "model"],
  ["gpu-by-upstream", "by_upstream", "upstream"],
];

export function fmtGpu(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds === 0) return "0 s";
  if (seconds < 0.0005) return "<1 ms";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(2)} h`;
}

export function fmtCost(value) {
  if (!value) return "–";
  // Cents and more with two decimals; less than a cent with two significant digits.
  if (value < 0.01) return value.toPrecision(2);
  return value.toFixed(2);
}

function percent(part, whole) {
  if (!whole) return "–";
  const share = (part / whole) * 100;
  return share > 0 && share < 1 ? "<1%" : `${Math.round(share)}%`;
}

function exact(node, value) {
  // The exact figure, for a tooltip (and for tests, which compare it with the API's).
  node.dataset.value = String(value);
  node.title = String(value);
}

function renderTable(table, rows, total, filter, onPick) {
  const head = el("tr");
  for (const [title, className] of [
    ["", ""], ["Share of GPU time", "bar-col"], ["GPU time", "num"], ["", "num"],
    ["Loading", "num"], ["Cost", "num"], ["Tokens", "num"],
  ]) head.append(el("th", title, className));
  const body = el("tbody");
  const sorted = [...rows].sort((a, b) => (b.gpu_seconds || 0) - (a.gpu_seconds || 0) || b.calls - a.calls);
  for (const row of sorted.slice(0, ROWS)) {
    const gpu = row.gpu_seconds || 0;
    const load = row.gpu_load_seconds || 0;
    const tr = el("tr");
    tr.dataset.key = row.key;
    const key = el("td", row.key, "key");
    key.title = row.key;
    const bar = el("span", null, "gpu-bar");
    bar.style.width = total ? `${(gpu / total) * 100}%` : "0";
    if (gpu) {
      const loading = el("span", null, "gpu-bar-load");
      loading.style.width = `${(load / gpu) * 100}%`;
      bar.append(loading);
    }
    const barCell = el("td", null, "bar-col");
    barCell.append(bar);
    const seconds = el("td", fmtGpu(gpu), "num gpu-seconds");
    exact(seconds, gpu);
    const cost = el("td", fmtCost(row.cost), "num");
    exact(cost, row.cost || 0);
    tr.append(
      key,
      barCell,
      seconds,
      el("td", percent(gpu, total), "num muted"),
      el("td", load >= 0.0005 ? `${fmtGpu(load)} (${percent(load, gpu)})` : "–", "num"),
      cost,
      el("td", numberFormat.format((row.input_tokens || 0) + (row.output_tokens || 0)), "num"),
    );
    if (filter && row.key !== "-") {
      tr.title = "Show only these calls";
      tr.addEventListener("click", () => onPick(filter, row.key));
    } else {
      tr.classList.add("nofilter");
    }
    body.append(tr);
  }
  if (!sorted.length) {
    const tr = el("tr", null, "nofilter");
    const td = el("td", "No calls in this period.", "muted");
    td.colSpan = 7;
    tr.append(td);
    body.append(tr);
  }
  table.replaceChildren(el("thead"), body);
  table.tHead.append(head);
}

// Draw the GPU section from one stats answer; onPick(filter, value) narrows the page.
export function renderGpu(stats, onPick) {
  const totals = stats.totals;
  const gpu = totals.gpu_seconds || 0;
  const load = totals.gpu_load_seconds || 0;
  const figures = [
    ["g-total", gpu, fmtGpu(gpu)],
    ["g-load", load, gpu ? `${percent(load, gpu)} · ${fmtGpu(load)}` : "–"],
    ["g-cost", totals.cost || 0, fmtCost(totals.cost)],
    ["g-tokens", totals.input_tokens + totals.output_tokens, numberFormat.format(totals.input_tokens + totals.output_tokens)],
  ];
  for (const [id, value, text] of figures) {
    const node = document.getElementById(id);
    node.textContent = text;
    exact(node, value);
  }
  document.getElementById("g-cost").title = totals.cost
    ? String(totals.cost)
    : "No upstream has a price: set cost= per GPU-hour on an upstream";
  for (const [id, field, filter] of TABLES) {
    renderTable(document.getElementById(id), stats[field] || [], gpu, filter, onPick);
  }
}
