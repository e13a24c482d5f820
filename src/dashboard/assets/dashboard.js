// kbridge dashboard: polls /api/summary (15 min of 1 s samples, fetched
// whole once and then only what is new) and /api/aggregates every 2 s, and
// draws the charts with uPlot. `window.kbridgeDashboard` exposes what is
// shown, for the browser test and for curious operators.
"use strict";

const REFRESH_MS = 2000;
const KEEP = 900;
const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2",
  "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];

const state = {
  t: [],             // sample times, Unix ms
  series: new Map(), // key -> {metric, labels, kind, values[], last}
  roles: [],
  aggregates: null,  // {field, topics, minutes: {topic: buckets}, values}
  charts: {},        // id -> {plot, keys}
  shown: { tiles: {}, charts: {}, values: [] },
  updated: 0,
};
window.kbridgeDashboard = state.shown;

const $ = (id) => document.getElementById(id);
const fmt = (v) => v == null || Number.isNaN(v) ? "–"
  : Math.abs(v) >= 100 || Number.isInteger(v) ? Math.round(v).toLocaleString("en-US")
  : v.toFixed(1);

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// Appends the new samples of an /api/summary answer to the state.
function merge(s) {
  state.roles = s.roles;
  const before = state.t.length;
  state.t.push(...s.t);
  const seen = new Set();
  for (const x of s.series) {
    const key = x.metric + JSON.stringify(x.labels);
    seen.add(key);
    let have = state.series.get(key);
    if (!have) {
      have = { metric: x.metric, labels: x.labels, kind: x.kind, values: new Array(before).fill(null) };
      state.series.set(key, have);
    }
    have.values.push(...x.values);
    have.last = x.last;
  }
  for (const [key, have] of state.series) {
    if (!seen.has(key)) have.values.push(...new Array(s.t.length).fill(null));
  }
  const extra = state.t.length - KEEP;
  if (extra > 0) {
    state.t.splice(0, extra);
    for (const have of state.series.values()) have.values.splice(0, extra);
  }
}

const of = (metric) => [...state.series.values()].filter((x) => x.metric === metric);
const total = (metric) => of(metric).reduce((a, x) => a + (x.last ?? 0), 0);
const has = (metric) => of(metric).length > 0;

// Element-wise sum of several series (null where all are null).
function sum(list) {
  return state.t.map((_, i) => {
    let acc = null;
    for (const x of list) if (x.values[i] != null) acc = (acc ?? 0) + x.values[i];
    return acc;
  });
}

function ratio(num, den) {
  return num.map((v, i) => (v == null || !den[i] ? null : Math.min(100, (100 * v) / den[i])));
}

// Draws (or redraws) chart `id` with x values, labelled series and options.
function draw(id, xs, lines, opts = {}) {
  const el = $(id);
  const keys = lines.map((l) => l.label).join("|");
  const nonzero = lines.reduce((a, l) => a + l.data.filter((v) => v != null && v !== 0).length, 0);
  state.shown.charts[id] = { series: lines.length, points: xs.length, nonzero };
  el.dataset.nonzero = nonzero;
  if (!lines.length || !xs.length) {
    if (state.charts[id]) { state.charts[id].plot.destroy(); delete state.charts[id]; }
    el.innerHTML = `<div class="empty">${opts.empty || "no data yet"}</div>`;
    return;
  }
  const data = [xs.map((t) => t / 1000), ...lines.map((l) => l.data)];
  let c = state.charts[id];
  if (c && c.keys === keys) { c.plot.setData(data); return; }
  if (c) c.plot.destroy();
  el.innerHTML = "";
  const series = [{}, ...lines.map((l, i) => ({
    label: l.label,
    stroke: l.color || COLORS[i % COLORS.length],
    fill: l.fill,
    width: 1.5,
    scale: l.scale || "y",
    spanGaps: false,
    points: { show: opts.points || false },
    value: l.value || ((u, v) => fmt(v)),
  }))];
  const axes = [{}, { size: 60, values: (u, vs) => vs.map(fmt) }];
  if (opts.y2) axes.push({ scale: "y2", side: 1, grid: { show: false }, size: 50, values: (u, vs) => vs.map(fmt) });
  const scales = { x: { time: true }, y: opts.yRange ? { range: opts.yRange } : {} };
  const plot = new uPlot({ width: el.clientWidth || 500, height: 220, series, axes, scales, legend: { show: opts.legend !== false, live: true } }, data, el);
  state.charts[id] = { plot, keys };
}

function tiles() {
  const list = [
    ["ingest", "kbridge_ingest_records_acked_total", "ingest: records acked"],
    ["ingest", "kbridge_ingest_records_failed_total", "ingest: records failed"],
    ["deliver", "kbridge_deliver_consumed_total", "deliver: consumed"],
    ["deliver", "kbridge_deliver_delivered_total", "deliver: delivered"],
    ["deliver", "kbridge_deliver_retries_total", "deliver: retries"],
    ["deliver", "kbridge_deliver_dead_letters_total", "deliver: dead-lettered"],
    ["collect", "kbridge_collect_consumed_total", "collect: consumed"],
    ["collect", "kbridge_collect_written_bytes_total", "collect: bytes written"],
    ["collect", "kbridge_collect_files_open", "collect: files open"],
  ].filter(([role, metric]) => state.roles.includes(role) && has(metric));
  const box = $("tiles");
  box.innerHTML = "";
  state.shown.tiles = {};
  for (const [, metric, label] of list) {
    const v = total(metric);
    state.shown.tiles[metric] = v;
    const d = document.createElement("div");
    d.className = "tile";
    d.dataset.metric = metric;
    d.innerHTML = `<div class="label"></div><div class="value"></div>`;
    d.querySelector(".label").textContent = label;
    d.querySelector(".value").textContent = fmt(v);
    box.appendChild(d);
  }
}

function byLabel(metric, label) {
  const groups = new Map();
  for (const x of of(metric)) {
    const k = x.labels[label] ?? "";
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(x);
  }
  return [...groups].sort((a, b) => a[0].localeCompare(b[0])).map(([k, xs]) => ({ label: k, data: sum(xs) }));
}

function outcomes() {
  const raw = [["dead-lettered", "kbridge_deliver_dead_letters_total", "#dc2626"],
    ["retried", "kbridge_deliver_retries_total", "#ea580c"],
    ["delivered", "kbridge_deliver_delivered_total", "#16a34a"]]
    .map(([label, metric, color]) => ({ label, color, data: sum(of(metric)) }));
  // Stacked: each drawn line is itself plus everything below it; drawn top
  // first with opaque fills, the legend shows each one's own value.
  const lines = raw.map((l, i) => ({
    label: l.label, color: l.color, fill: l.color + "cc",
    data: l.data.map((_, j) => raw.slice(i).reduce((a, x) => (x.data[j] == null ? a : (a ?? 0) + x.data[j]), null)),
    value: (u, v, si, j) => fmt(j == null ? null : l.data[j]),
  }));
  draw("chart-outcomes", state.t, lines);
}

function fill() {
  const lines = [];
  for (const role of ["ingest", "deliver"]) {
    const len = sum(of(`kbridge_${role}_channel_length`));
    const cap = sum(of(`kbridge_${role}_channel_capacity`));
    if (has(`kbridge_${role}_channel_length`)) lines.push({ label: `${role} channel`, data: ratio(len, cap) });
  }
  if (has("kbridge_deliver_in_flight_calls")) {
    lines.push({ label: "deliver calls in flight", data: ratio(sum(of("kbridge_deliver_in_flight_calls")), sum(of("kbridge_deliver_max_in_flight"))) });
  }
  const size = byLabel("kbridge_pool_size", "pool");
  for (const { label, data } of byLabel("kbridge_pool_active_count", "pool")) {
    const den = size.find((s) => s.label === label);
    if (den) lines.push({ label: `pool ${label} busy`, data: ratio(data, den.data) });
  }
  draw("chart-fill", state.t, lines, { yRange: [0, 100] });
}

function lag() {
  const rows = [];
  for (const role of ["deliver", "collect"]) {
    for (const x of of(`kbridge_${role}_consumer_lag`)) {
      // deliver's rows name their subscription (`deliver` for [deliver]).
      const who = role === "deliver" ? subOf(x) : role;
      rows.push({ label: `${who} ${x.labels.topic}[${x.labels.partition}]`, data: x.values, last: x.last });
    }
  }
  rows.sort((a, b) => (b.last ?? 0) - (a.last ?? 0) || a.label.localeCompare(b.label));
  // The 12 largest are drawn; the table (largest first) is their legend.
  const drawn = rows.slice(0, 12).sort((a, b) => a.label.localeCompare(b.label));
  drawn.forEach((r, i) => { r.color = COLORS[i % COLORS.length]; });
  draw("chart-lag", state.t, drawn, { empty: "no partitions assigned yet", legend: false });
  const table = $("lag-table");
  table.innerHTML = "<tr><th>partition</th><th>lag now</th></tr>";
  for (const r of rows.slice(0, 50)) {
    const tr = table.insertRow();
    const name = tr.insertCell();
    if (r.color) {
      const dot = document.createElement("span");
      dot.className = "swatch";
      dot.style.background = r.color;
      name.appendChild(dot);
    }
    name.appendChild(document.createTextNode(r.label));
    const n = tr.insertCell();
    n.className = "n";
    n.textContent = fmt(r.last);
  }
}

// The subscription a series belongs to: its `subscription` label, or
// `deliver` for [deliver]'s (unlabelled) series.
const subOf = (x) => x.labels.subscription ?? "deliver";
const COLUMNS = [
  ["delivered/s", "kbridge_deliver_delivered_total", "rate"],
  ["delivered", "kbridge_deliver_delivered_total", "last"],
  ["filtered", "kbridge_deliver_skipped_total", "last", (x) => x.labels.reason === "filtered"],
  ["retries", "kbridge_deliver_retries_total", "last"],
  ["dead-lettered", "kbridge_deliver_dead_letters_total", "last"],
  ["in flight", "kbridge_deliver_in_flight_calls", "last"],
  ["lag", "kbridge_deliver_consumer_lag", "last"],
];

// One row per subscription (GET /subscriptions names them and their
// state), with its own figures; a button suspends or resumes it.
function subscriptions() {
  const subs = state.subscriptions || [];
  const lines = byLabel("kbridge_deliver_delivered_total", "subscription")
    .map((l) => ({ label: l.label || "deliver", data: l.data }));
  draw("chart-subscriptions", state.t, lines, { empty: "no subscription delivered yet" });
  const table = $("subscriptions");
  table.innerHTML = "";
  const head = table.insertRow();
  for (const h of ["subscription", "state", ...COLUMNS.map((c) => c[0]), ""]) {
    const th = document.createElement("th");
    th.textContent = h;
    head.appendChild(th);
  }
  state.shown.subscriptions = {};
  for (const s of subs) {
    const shown = { suspended: s.suspended };
    const tr = table.insertRow();
    tr.dataset.subscription = s.name;
    tr.insertCell().textContent = s.name;
    const st = tr.insertCell();
    st.className = `state${s.suspended ? " suspended" : ""}`;
    st.textContent = s.suspended ? "suspended" : "active";
    for (const [label, metric, how, pick] of COLUMNS) {
      const xs = of(metric).filter((x) => subOf(x) === s.name && (!pick || pick(x)));
      const v = !xs.length ? null : xs.reduce((a, x) => a + ((how === "rate"
        ? x.values[x.values.length - 1] : x.last) ?? 0), 0);
      shown[label] = v;
      const td = tr.insertCell();
      td.dataset.column = label;
      td.textContent = fmt(v);
    }
    const button = document.createElement("button");
    button.textContent = s.suspended ? "resume" : "suspend";
    button.addEventListener("click", async () => {
      button.disabled = true;
      const action = s.suspended ? "resume" : "suspend";
      await fetch(`/subscriptions/${encodeURIComponent(s.name)}/${action}`, { method: "PUT" });
      await refresh();
    });
    tr.insertCell().appendChild(button);
    state.shown.subscriptions[s.name] = shown;
  }
}

function aggregates() {
  const a = state.aggregates;
  if (!a) return;
  $("field").textContent = a.field || "(none)";
  const topics = a.topics.map((t) => t.topic);
  const lines = topics.filter((t) => a.minutes[t]).map((t) => ({ label: t, data: a.minutes[t].map((b) => b.count) }));
  const first = topics.find((t) => a.minutes[t]);
  const xs = first ? a.minutes[first].map((b) => b.start) : [];
  draw("chart-minutes", xs, lines, { points: true, empty: "no events consumed yet" });
  const ol = $("values");
  ol.innerHTML = "";
  const values = a.values ? a.values.values : [];
  state.shown.values = values.map((v) => [v.value, v.count]);
  const max = Math.max(1, ...values.map((v) => v.count));
  for (const v of values) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="name"></span><span><div class="bar"></div></span><span class="count"></span>`;
    li.querySelector(".name").textContent = v.value;
    li.querySelector(".name").title = v.value;
    li.querySelector(".bar").style.width = `${(100 * v.count) / max}%`;
    li.querySelector(".count").textContent = fmt(v.count);
    li.dataset.value = v.value;
    li.dataset.count = v.count;
    ol.appendChild(li);
  }
  if (!values.length) ol.innerHTML = `<li class="empty">no values yet</li>`;
}

async function fetchAggregates() {
  if (!state.roles.includes("deliver")) { state.aggregates = null; return; }
  state.subscriptions = (await getJson("/subscriptions")).subscriptions;
  const list = await getJson("/api/aggregates");
  const select = $("topic");
  const names = list.topics.map((t) => t.topic);
  if (select.dataset.names !== names.join(",")) {
    const keep = select.value;
    select.innerHTML = "";
    for (const n of names) select.add(new Option(n, n));
    if (names.includes(keep)) select.value = keep;
    select.dataset.names = names.join(",");
  }
  const minutes = {};
  await Promise.all(names.slice(0, 12).map(async (t) => {
    const r = await getJson(`/api/aggregates?topic=${encodeURIComponent(t)}&by=minute&from=now-60m`);
    minutes[t] = r.buckets;
  }));
  const values = select.value
    ? await getJson(`/api/aggregates?topic=${encodeURIComponent(select.value)}&by=value&limit=10`)
    : null;
  state.aggregates = { field: list.field, topics: list.topics, minutes, values };
  state.shown.topics = Object.fromEntries(list.topics.map((t) => [t.topic, t.consumed]));
}

function render() {
  $("roles").textContent = state.roles.join(" · ");
  for (const card of document.querySelectorAll(".card[data-role]")) {
    card.hidden = !card.dataset.role.split(" ").some((r) => state.roles.includes(r));
  }
  tiles();
  subscriptions();
  aggregates();
  outcomes();
  fill();
  lag();
  draw("chart-ingest", state.t, byLabel("kbridge_ingest_responses_total", "status"),
    { empty: "no requests yet" });
  const lines = [];
  if (has("kbridge_collect_written_bytes_total")) lines.push({ label: "bytes/s", data: sum(of("kbridge_collect_written_bytes_total")) });
  if (has("kbridge_collect_files_open")) lines.push({ label: "files open", data: sum(of("kbridge_collect_files_open")), scale: "y2" });
  draw("chart-collect", state.t, lines, { y2: true });
}

let running = null;
// One refresh at a time: a second caller waits for the one under way.
function refresh() {
  running = running || refreshOnce().finally(() => { running = null; });
  return running;
}

async function refreshOnce() {
  const status = $("status");
  try {
    const last = state.t[state.t.length - 1];
    merge(await getJson(last == null ? "/api/summary" : `/api/summary?since=${last}`));
    await fetchAggregates();
    render();
    state.updated = Date.now();
    state.shown.updated = state.updated;
    status.textContent = `updated ${new Date(state.updated).toLocaleTimeString()}`;
    status.classList.remove("bad");
  } catch (e) {
    status.textContent = `cannot reach kbridge (${e.message}); retrying`;
    status.classList.add("bad");
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}

$("topic").addEventListener("change", refresh);
window.addEventListener("resize", () => {
  for (const [id, c] of Object.entries(state.charts)) c.plot.setSize({ width: $(id).clientWidth, height: 220 });
});
window.kbridgeRefresh = refresh;
loop();
