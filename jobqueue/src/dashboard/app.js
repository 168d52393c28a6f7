// The rdask dashboard: renders the view the scheduler process pushes (server-sent events).
// Every text from the cluster goes through textContent: task output is never parsed as HTML.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const q = (s) => document.querySelector(s);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
// Whether the data behind a part of the page changed since it was last drawn: unchanged parts
// are left alone, so an idle cluster costs the browser almost nothing.
const last = {};
function changed(key, data) {
  const j = JSON.stringify(data);
  if (last[key] === j) return false;
  last[key] = j;
  return true;
}
function rows(sel, list) { const b = q(sel + " tbody"); b.replaceChildren(...list); }
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function secs(ms) {
  if (ms == null) return "-";
  const s = Math.round(ms / 1000);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${Math.floor(s % 3600 / 60)}m` : s >= 60 ? `${Math.floor(s / 60)}m${s % 60}s` : `${s}s`;
}
function bar(total, ok, bad) {
  const t = Math.max(total, 1), a = 100 * ok / t, b = 100 * bad / t;
  return el("span", { class: "bar" }, el("span", { class: "ok", style: `width:${a}%` }),
    el("span", { class: "bad", style: `left:${a}%;width:${b}%` }));
}
function pct(total, done) { return total ? Math.floor(100 * done / total) + "%" : "100%"; }
const STREAM_DRAWN = 500;
const colours = {};
function colour(kind) {
  if (!colours[kind]) {
    let h = 0; for (const c of kind) h = (h * 31 + c.charCodeAt(0)) % 360;
    colours[kind] = `hsl(${h},60%,50%)`;
  }
  return colours[kind];
}

function render(v) {
  const s = v.status || { workers: [], jobs: [], load: [] };
  const slots = s.workers.reduce((a, w) => a + Math.max(w.info.slots, 1), 0);
  const busy = s.workers.reduce((a, w) => a + Math.min(w.assigned, Math.max(w.info.slots, 1)), 0);
  q("#summary").textContent = `${s.workers.length} workers, ${busy}/${slots} slots busy, ${Object.keys(v.jobs).length} jobs`;
  q("#rate").textContent = `${bytes(v.bytes_per_s)}/s between workers (${bytes(v.fetched_bytes)} in all); scheduler answers in ${v.latency_us} µs`;

  // Pool and batch job of each worker, by launch tag.
  const alloc = {};
  const pools = (s.provisioning && s.provisioning.pools) || [];
  for (const p of pools) for (const j of p.jobs) alloc[j.launch] = { pool: p.name, id: j.id };
  if (changed("workers", [s.workers, v.cpu, pools])) rows("#workers", s.workers.map((w) => {
    const a = alloc[w.info.launch] || {};
    const cpu = v.cpu[w.id] != null ? v.cpu[w.id].toFixed(0) + "%" : "-";
    return el("tr", { class: "worker", "data-worker": w.id },
      el("td", {}, "worker " + w.id + (w.retiring ? " (retiring)" : "")), el("td", {}, w.info.host),
      el("td", {}, `${Math.min(w.assigned, w.info.slots)}/${w.info.slots}`),
      el("td", {}, `${w.holding} (${bytes(w.held_bytes)})`), el("td", {}, cpu), el("td", {}, bytes(w.load.rss_bytes)),
      el("td", {}, a.pool ? `${a.pool} / ${a.id || w.info.launch}` : (w.info.launch || "-")));
  }));

  if (changed("pools", [pools, s.workers.map((w) => w.ends_in_ms)])) {
  const poolDivs = [];
  for (const p of pools) {
    const head = el("div", {}, el("b", {}, `pool ${p.name}`), ` — ${p.unit}s of ${p.workers_per_job} worker(s) × ${p.slots} slot(s)`);
    if (p.adapt) head.append(el("div", { class: "muted" }, `adaptive target ${p.adapt.target}${p.adapt.paused ? " (PAUSED)" : ""}: ${p.adapt.reason}`));
    else if (p.target != null) head.append(el("div", { class: "muted" }, `target ${p.target}`));
    if (p.error) head.append(el("div", { class: "stderr" }, p.error));
    const t = el("table", { class: "batch-jobs" }, el("tr", {}, el("th", {}, "job"), el("th", {}, "state"), el("th", {}, "age"), el("th", {}, "walltime left"), el("th", {}, "workers"), el("th", {}, "note")));
    for (const j of p.jobs) {
      const ends = s.workers.filter((w) => j.workers.includes(w.id) && w.ends_in_ms != null).map((w) => w.ends_in_ms);
      t.append(el("tr", { class: "batch-job", "data-state": j.state },
        el("td", {}, j.id || "(submitting)"), el("td", {}, j.state), el("td", {}, secs(j.age_ms)),
        el("td", {}, ends.length ? secs(Math.min(...ends)) : "-"), el("td", {}, j.workers.join(" ")),
        el("td", {}, el("pre", { class: "stderr" }, j.note || ""))));
    }
    poolDivs.push(head, t);
  }
  q("#pools").replaceChildren(...(poolDivs.length ? poolDivs : [el("span", { class: "muted" }, "no provisioner")]));
  }

  if (changed("jobs", v.jobs)) rows("#jobs", Object.entries(v.jobs).reverse().map(([id, j]) => {
    const done = j.finished + j.failed;
    return el("tr", { class: "job", "data-job": id }, el("td", {}, id), el("td", {}, j.name),
      el("td", {}, bar(j.tasks, j.finished, j.failed), " ", el("span", { class: "pct" }, pct(j.tasks, done))),
      el("td", {}, `${j.finished}/${j.tasks}`), el("td", {}, j.failed));
  }));

  const load = {};
  for (const l of s.load) { const e = load[l.kind] || (load[l.kind] = { queued: 0, running: 0 }); e.queued += l.queued; e.running += l.running; }
  if (changed("kinds", [v.kinds, load])) rows("#kinds", v.kinds.map(([kind, fin, fail]) => {
    const l = load[kind] || { queued: 0, running: 0 }, total = fin + fail + l.queued + l.running;
    return el("tr", {}, el("td", {}, kind), el("td", {}, bar(total, fin, fail), " ", pct(total, fin + fail)),
      el("td", {}, fin), el("td", {}, fail), el("td", {}, l.queued), el("td", {}, l.running));
  }));

  const lastFailure = v.failures[v.failures.length - 1];
  if (changed("failures", [v.failures.length, lastFailure && lastFailure.at_ms, lastFailure && lastFailure.task])) rows("#failures", v.failures.slice().reverse().map((f) => el("tr", { class: "failure" },
    el("td", {}, f.job), el("td", {}, f.task), el("td", {}, f.worker == null ? "-" : f.worker),
    el("td", {}, el("pre", { class: "stderr" }, f.error)))));

  const lastEvent = v.events[v.events.length - 1];
  if (changed("events", lastEvent ? lastEvent.seq : 0)) rows("#events", v.events.slice().reverse().slice(0, 100).map((e) => {
    const [kind, fields] = Object.entries(e.what)[0];
    return el("tr", { class: "event" }, el("td", { class: "muted" }, (e.at_ms / 1000).toFixed(1) + "s"), el("td", {}, kind),
      el("td", {}, JSON.stringify(fields)));
  }));

  drawStream(v);
}

// Task stream: one lane per worker, the last 30 s of the scheduler's clock, drawn on a canvas
// (one element, however many tasks: the page must stay cheap for the browser showing it).
const STREAM_SPAN_MS = 30000, LANE_PX = 14, LABEL_PX = 70;
let drawn = [];
function drawStream(v) {
  const box = q("#stream");
  let c = box.querySelector("canvas");
  if (!c) {
    c = el("canvas", { class: "ts-canvas" });
    c.addEventListener("mousemove", (ev) => {
      const r = c.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
      const t = drawn.find((d) => x >= d.x && x <= d.x + d.w && y >= d.y && y <= d.y + LANE_PX);
      c.title = t ? t.title : "";
    });
    box.replaceChildren(c);
  }
  const end = v.now_ms, start = end - STREAM_SPAN_MS, width = Math.max(box.clientWidth, 200);
  const lanes = new Map();
  for (const t of v.tasks.slice(-STREAM_DRAWN)) {
    if (t.end_ms < start) continue;
    if (!lanes.has(t.worker)) lanes.set(t.worker, []);
    lanes.get(t.worker).push(t);
  }
  const order = [...lanes.keys()].sort((a, b) => a - b);
  const height = Math.max(order.length, 1) * LANE_PX, dpr = window.devicePixelRatio || 1;
  if (c.width !== width * dpr || c.height !== height * dpr) {
    c.width = width * dpr; c.height = height * dpr;
    c.style.width = width + "px"; c.style.height = height + "px";
  }
  const g = c.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = "10px system-ui, sans-serif";
  const scale = (width - LABEL_PX) / STREAM_SPAN_MS;
  drawn = [];
  order.forEach((w, i) => {
    const y = i * LANE_PX;
    g.fillStyle = "#666"; g.fillText("worker " + w, 2, y + 10);
    for (const t of lanes.get(w)) {
      const x = LABEL_PX + Math.max(0, t.start_ms - start) * scale;
      const wpx = Math.max(2, (t.end_ms - Math.max(t.start_ms, start)) * scale);
      g.fillStyle = t.ok ? colour(t.kind) : "#c00";
      g.fillRect(x, y + 1, wpx, LANE_PX - 2);
      drawn.push({ x, y, w: wpx, title: `${t.kind} on worker ${t.worker}: ${t.end_ms - t.start_ms} ms${t.ok ? "" : " (failed)"}` });
    }
  });
  // What the tests (and a curious reader) can see of the drawing.
  c.dataset.tasks = String(drawn.length);
  c.dataset.lanes = String(order.length);
}

// The current view at once, then every new one as the scheduler process pushes it.
fetch("api/state?token=" + encodeURIComponent(token)).then((r) => r.json()).then((v) => { if (v.status) show(v); });
// Views that arrive faster than the page paints are dropped but for the newest.
let pending = null;
function show(v) {
  if (document.hidden) { pending = v; return; } // drawn when the tab is shown again
  if (pending === null) requestAnimationFrame(() => { const p = pending; pending = null; render(p); });
  pending = v;
}
const source = new EventSource("api/stream?token=" + encodeURIComponent(token));
source.addEventListener("view", (m) => show(JSON.parse(m.data)));
document.addEventListener("visibilitychange", () => { if (!document.hidden && pending) { const p = pending; pending = null; show(p); } });
source.onerror = () => { q("#summary").textContent = "disconnected from the scheduler (retrying)"; };
