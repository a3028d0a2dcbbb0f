// WorkShaper dashboard: follows one namespace over server-sent events (/api/events) and draws
// tables and a lag sparkline per partition. Plain JavaScript, no build step.
"use strict";

const HISTORY = 120; // lag points kept per partition (one per update)
let config = { allow_actions: false, interval: 1 };
let source = null;
let lagHistory = new Map(); // partition -> [lag, ...]
let lastAcked = new Map(); // partition -> [time, acked]

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function dash(v) { return v === null || v === undefined ? "-" : v; }

function age(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 60) return seconds.toFixed(1) + "s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + "m";
  return (seconds / 3600).toFixed(1) + "h";
}

function spark(points) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", `0 0 ${HISTORY} 24`);
  svg.setAttribute("preserveAspectRatio", "none");
  const max = Math.max(1, ...points);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  const start = HISTORY - points.length;
  line.setAttribute("points", points.map((v, i) => `${start + i},${(23 - (v / max) * 22).toFixed(1)}`).join(" "));
  svg.append(line);
  return svg;
}

function fill(tableId, rows, columns) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    body.append(el("tr", { class: "empty" }, el("td", { colspan: String(columns) }, "none")));
    return;
  }
  for (const r of rows) body.append(r);
}

async function act(what, payload, label) {
  const result = document.getElementById("action-result");
  result.textContent = `${label}: running...`;
  const response = await fetch(`/api/actions/${what}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ namespace: currentNamespace(), ...payload }),
  });
  const body = await response.json();
  result.textContent = response.ok
    ? `${label}: ${body.outcome || (body.dropped !== undefined ? `dropped ${body.dropped}` : "done")}`
      + (body.error_message ? ` (${body.error_type}: ${body.error_message})` : "")
    : `${label}: failed: ${body.error}`;
  result.dataset.outcome = response.ok ? (body.outcome || "done") : "error";
}

function actionCell(buttons) {
  const td = el("td", { class: "action" });
  if (!config.allow_actions) {
    td.append(el("span", { class: "muted" }, "read-only"));
    return td;
  }
  for (const [text, handler, testid] of buttons) {
    td.append(el("button", { onclick: handler, "data-testid": testid }, text));
  }
  return td;
}

function render(doc) {
  const now = Date.now() / 1000;
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  const warnings = document.getElementById("warnings");
  warnings.replaceChildren();
  fill("partitions", doc.partitions.map((p) => {
    const hist = lagHistory.get(p.partition) || [];
    hist.push(p.lag);
    while (hist.length > HISTORY) hist.shift();
    lagHistory.set(p.partition, hist);
    let rate = "-";
    const before = lastAcked.get(p.partition);
    if (before && p.acked !== null && now > before[0]) {
      rate = (Math.max(0, p.acked - (before[1] ?? p.acked)) / (now - before[0])).toFixed(1);
    }
    lastAcked.set(p.partition, [now, p.acked]);
    if (p.lowest_unfinished !== null && p.oldest_unfinished_age >= doc.stuck_after) {
      warnings.append(el("div", { class: "warning" },
        `partition ${p.partition}: watermark held below offset ${p.lowest_unfinished} for ${age(p.oldest_unfinished_age)}`));
    }
    return el("tr", { "data-partition": String(p.partition) },
      el("td", {}, p.partition),
      el("td", { "data-field": "acked" }, dash(p.acked)),
      el("td", { "data-field": "highest" }, dash(p.highest)),
      el("td", { "data-field": "lag" }, p.lag),
      el("td", {}, spark(hist)),
      el("td", {}, rate),
      el("td", { "data-field": "unacked" }, p.unacked_items),
      el("td", {}, p.pending_sub_keys),
      el("td", {}, p.leased_sub_keys),
      el("td", { "data-field": "runnable" }, p.runnable_sub_keys),
      el("td", {}, p.blocked_sub_keys),
      el("td", { "data-field": "dead" }, p.dead_letters),
      el("td", {}, age(p.oldest_unfinished_age)));
  }), 13);
  fill("workers", doc.workers.map((w) => el("tr", { "data-worker": w.id },
    el("td", { class: "text" }, w.id), el("td", { class: "text" }, w.host), el("td", {}, w.pid),
    el("td", {}, w.concurrency), el("td", {}, w.in_flight), el("td", {}, age(w.heartbeat_age) + " ago"),
    el("td", { class: "text" }, w.reaper ? "reaper" : ""))), 7);
  document.getElementById("stuck-after").textContent = `(head older than ${age(doc.stuck_after)})`;
  fill("stuck", doc.stuck.map((s) => el("tr", {},
    el("td", {}, s.partition), el("td", { class: "text" }, s.sub_key), el("td", {}, dash(s.head_offset)),
    el("td", {}, age(s.age)), el("td", {}, s.attempts), el("td", { class: "text" }, dash(s.holder)),
    el("td", { class: "text why-" + s.why.replace(/ /g, "-") }, s.why), el("td", {}, s.queued))), 8);
  fill("blocked", doc.blocked.map((b) => el("tr", {},
    el("td", {}, b.partition), el("td", { class: "text" }, b.sub_key), el("td", {}, dash(b.offset)),
    el("td", {}, b.attempts), el("td", { class: "text" }, `${b.error_type}: ${b.error_message}`),
    actionCell([
      ["retry", () => act("retry", { partition: b.partition, sub_key: b.sub_key, sub_key_kind: b.sub_key_kind }, `retry ${b.partition}/${b.sub_key}`), `retry-${b.partition}-${b.sub_key}`],
      ["dead-letter", () => act("dead-letter", { partition: b.partition, sub_key: b.sub_key, sub_key_kind: b.sub_key_kind }, `dead-letter ${b.partition}/${b.sub_key}`), `dead-letter-${b.partition}-${b.sub_key}`],
    ]))), 6);
  document.getElementById("dead-total").textContent = `(${doc.dead_letters_total})`;
  fill("dead-letters", doc.dead_letters.map((d) => el("tr", { "data-offset": String(d.offset) },
    el("td", {}, d.partition), el("td", {}, dash(d.offset)), el("td", { class: "text" }, d.sub_key),
    el("td", {}, d.attempts), el("td", { class: "text" }, `${d.error_type}: ${d.error_message}`),
    el("td", { class: "text" }, d.worker), el("td", { class: "text" }, new Date(d.at_ms).toLocaleTimeString()),
    actionCell([
      ["replay", () => act("replay", { partition: d.partition, offset: d.offset }, `replay ${d.partition}/${d.offset}`), `replay-${d.partition}-${d.offset}`],
      ["drop", () => { if (confirm(`Drop dead letter ${d.partition}/${d.offset}?`)) act("drop", { partition: d.partition, offset: d.offset }, `drop ${d.partition}/${d.offset}`); }, `drop-${d.partition}-${d.offset}`],
    ]))), 8);
}

function currentNamespace() { return document.getElementById("namespace").value; }

function follow(ns) {
  if (source) source.close();
  lagHistory = new Map();
  lastAcked = new Map();
  const status = document.getElementById("connection");
  source = new EventSource(`/api/events?namespace=${encodeURIComponent(ns)}`);
  source.addEventListener("snapshot", (e) => {
    status.textContent = "live";
    status.className = "pill ok";
    render(JSON.parse(e.data));
  });
  source.addEventListener("failure", (e) => {
    status.textContent = "redis error: " + JSON.parse(e.data).error;
    status.className = "pill bad";
  });
  source.onerror = () => { status.textContent = "reconnecting"; status.className = "pill bad"; };
}

async function start() {
  config = await (await fetch("/api/config")).json();
  document.getElementById("mode").textContent = config.allow_actions ? "actions allowed" : "read-only";
  const { namespaces } = await (await fetch("/api/namespaces")).json();
  const select = document.getElementById("namespace");
  for (const ns of namespaces) select.append(el("option", { value: ns }, ns));
  const wanted = new URLSearchParams(location.search).get("namespace") || config.namespace;
  if (wanted) {
    if (!namespaces.includes(wanted)) select.append(el("option", { value: wanted }, wanted));
    select.value = wanted;
  }
  select.addEventListener("change", () => follow(currentNamespace()));
  if (select.value) follow(select.value);
}

start();
