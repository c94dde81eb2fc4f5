// The dashboard's Queue panel: GET /api/v1/admin/queue every second, drawn as a table of the
// calls running on each capped upstream and the calls waiting for a slot, in the order they
// would be served (docs/queue.md). Its own file, so the rest of the page knows nothing of it.
//
// Everything that came from a caller (key labels, projects, model names) reaches the page
// through textContent, never as HTML.

import { el } from "./dom.js";

const QUEUE_MS = 1000;

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 100) return `${value.toFixed(1)} s`;
  return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
}

function row(line, call, state) {
  const tr = el("tr");
  tr.className = `q-${state}`;
  tr.append(
    el("td", line.upstream),
    el("td", line.model),
    el("td", state, `q-state q-${state}`),
    el("td", call.position ?? "", "num"),
    el("td", call.key_label ?? "–"),
    el("td", call.project ?? "–"),
    el("td", call.priority, `q-class q-${call.priority}`),
    el("td", seconds(call.waited_seconds), "num"),
    el("td", state === "running" ? seconds(call.running_seconds) : "", "num"),
  );
  return tr;
}

export function renderQueue(view) {
  const body = document.querySelector("#queue tbody");
  const rows = [];
  for (const line of view.queues) {
    for (const call of line.running) rows.push(row(line, call, "running"));
    for (const call of line.waiting) rows.push(row(line, call, "waiting"));
  }
  body.replaceChildren(...rows);
  document.getElementById("q-empty").hidden = rows.length > 0;
  document.getElementById("q-shared").textContent = view.shared;
  document.getElementById("q-order").textContent = view.order;
}

async function poll() {
  try {
    const response = await fetch("/api/v1/admin/queue", { cache: "no-store" });
    if (response.ok) renderQueue(await response.json());
  } catch (_) {
    // The gateway is away: the rest of the page says so; try again at the next tick.
  }
  setTimeout(poll, document.hidden ? QUEUE_MS * 5 : QUEUE_MS);
}

if (document.getElementById("queue")) poll();
