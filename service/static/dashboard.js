// The dashboard's script (served by the app at /dashboard/static/dashboard.js; no build step).
// Polls dashboard/data every 2 s (accounts, semaphores) and dashboard/history every 5 s (charts,
// drawn with uPlot, vendored in service/static/vendor/uplot). Text from the service is always
// inserted as text nodes, never as HTML.
"use strict";
const REFRESH_MS = 2000;
const HISTORY_MS = 5000;
const CHART_HEIGHT = 190;
const MIN_BUCKETS = 6;  // a chart spans at least a minute, even right after the first sample
const COLOURS = ["#3563d9", "#d1463b", "#2f9e6a", "#d99a1e", "#8e44ad", "#16a2b8", "#e67e22",
                 "#5f6b7a", "#c2185b", "#2e7d32", "#6d4c41", "#0097a7"];
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return value.toFixed(1) + " s";
  if (value < 3600) return Math.floor(value / 60) + " m " + Math.round(value % 60) + " s";
  return Math.floor(value / 3600) + " h " + Math.round((value % 3600) / 60) + " m";
}

function bar(used, limit, small) {
  const ratio = limit > 0 ? Math.min(1, used / limit) : 0;
  const level = ratio >= 1 ? "full" : ratio >= 0.7 ? "warn" : "";
  return el("div", {class: "bar " + level + (small ? " small" : ""),
                    title: used + " of " + limit + " in use"},
    el("span", {style: "width:" + (ratio * 100).toFixed(1) + "%"}));
}

// -- accounts ----------------------------------------------------------------------------------

function nextToken(w) {
  if (w.used < w.limit) {
    const free = w.limit - w.used;
    const back = w.oldest_returns_in_s === null ? "" :
      "; the oldest returns in " + seconds(w.oldest_returns_in_s);
    return "now (" + free + " free" + back + ")";
  }
  return "in " + seconds(w.next_free_in_s);
}

function accountsTable(accounts) {
  if (!accounts.length) {
    return el("div", {class: "none"},
      "No account was admitted in the last 15 minutes. An account appears here with its first " +
      "generation.");
  }
  const body = el("tbody");
  for (const a of accounts) {
    const w = a.window;
    body.append(el("tr", {class: "account-row", "data-account": a.account},
      el("td", {class: "mono nowrap"}, a.account,
        a.server_token ? el("span", {class: "badge"}, "server token") : null),
      el("td", {class: "num"}, a.in_use + " / " + (a.limit === null ? "–" : a.limit),
        a.limit ? bar(a.in_use, a.limit, true) : null),
      el("td", {class: "num"}, a.waiting),
      el("td", {class: "num"}, w.used + " / " + w.limit + " in " + Math.round(w.window_s) + " s",
        bar(w.used, w.limit, true)),
      el("td", {class: "nowrap"}, nextToken(w))));
  }
  return el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "Account"), el("th", {}, "Concurrency (in use / limit)"),
      el("th", {}, "Waiting"), el("th", {}, "Creation window (used / limit)"),
      el("th", {}, "Next window token"))),
    body);
}

// -- semaphores --------------------------------------------------------------------------------

function holdersTable(sem) {
  if (!sem.holders.length) return el("div", {class: "none"}, "No holders.");
  const body = el("tbody");
  for (const h of sem.holders) {
    body.append(el("tr", {},
      el("td", {class: "mono"}, h.lease + "…"),
      el("td", {class: "nowrap"}, h.replica),
      el("td", {}, (h.purpose || "–") + (h.state && h.state !== "held" ? " (" + h.state + ")" : "")),
      el("td", {class: "mono"}, h.prediction_id ? h.prediction_id + "…" : "–"),
      el("td", {class: "num"}, seconds(h.held_for_s)),
      el("td", {class: "num"}, seconds(h.expires_in_s))));
  }
  const more = sem.in_use > sem.holders.length
    ? el("div", {class: "none"}, "+" + (sem.in_use - sem.holders.length) + " more") : null;
  return el("div", {},
    el("table", {},
      el("thead", {}, el("tr", {},
        el("th", {}, "Lease"), el("th", {}, "Replica"), el("th", {}, "Purpose"),
        el("th", {}, "Prediction"), el("th", {}, "Held for"), el("th", {}, "Expires in"))),
      body),
    more);
}

function waitersTable(sem) {
  if (!sem.waiters.length) return null;
  const body = el("tbody");
  for (const w of sem.waiters) {
    body.append(el("tr", {},
      el("td", {class: "num"}, "#" + w.position),
      el("td", {}, w.replica || "–"),
      el("td", {class: "num"}, seconds(w.waiting_s))));
  }
  return el("table", {},
    el("thead", {}, el("tr", {},
      el("th", {}, "Queue"), el("th", {}, "Waiting on replica"), el("th", {}, "Waiting for"))),
    body);
}

function card(sem) {
  const meta = el("div", {class: "meta"},
    el("span", {class: sem.waiting ? "queued" : ""}, "Queue ", el("b", {}, sem.waiting)),
    el("span", {}, "Oldest waiter ", el("b", {}, seconds(sem.oldest_waiter_s))),
    el("span", {}, "Free ", el("b", {}, Math.max(0, sem.limit - sem.in_use))),
    sem.orphans > 0
      ? el("span", {class: "grace"}, "Orphaned slots (their replica vanished) being settled: " +
          sem.orphans) : null,
    sem.grace_remaining_s > 0
      ? el("span", {class: "grace"}, "Recovering after a Redis restart: " +
          seconds(sem.grace_remaining_s)) : null);
  return el("section", {class: "card"},
    el("div", {class: "row"},
      el("h2", {}, sem.semaphore_id),
      el("span", {class: "count"}, sem.in_use + " / " + sem.limit)),
    bar(sem.in_use, sem.limit, false),
    meta,
    holdersTable(sem),
    waitersTable(sem));
}

// What an operator must send to create one: the admin key goes in its header.
function emptyState(setup) {
  const url = new URL(setup.create_path, location.href).href;
  const body = JSON.stringify(setup.create_body);
  const id = setup.create_body.semaphore_id;
  const command = "curl -X POST " + url + " \\\n  -H \"" + setup.admin_header +
    ": $ADMIN_KEY\" -H \"Content-Type: application/json\" \\\n  -d '" + body + "'";
  return el("div", {class: "empty", id: "empty-semaphores"},
    el("div", {}, "No global semaphores registered (the account limits above still apply). " +
      "Creating one takes the admin key — the value of CONCURRENT_DOCKER_ADMIN_API_KEY — in the ",
      el("span", {class: "mono"}, setup.admin_header), " header:"),
    el("pre", {}, command),
    el("div", {}, "or declare it on every replica with ",
      el("span", {class: "mono"}, "GLOBAL_SEMAPHORES=" + id + "=" + setup.create_body.limit),
      " (created at start). Requests then name it in ",
      el("span", {class: "mono"}, "external_semaphore_id"), "."),
    setup.admin_key_configured ? null : el("div", {class: "grace"},
      "This replica has no admin key (CONCURRENT_DOCKER_ADMIN_API_KEY is unset), so it refuses " +
      "the request above: set the key and restart, or use GLOBAL_SEMAPHORES."));
}

function render(data) {
  const ok = data.redis.reachable;
  const pill = $("redis");
  pill.className = "pill " + (ok ? "ok" : "bad");
  pill.lastChild.textContent = ok ? "Redis reachable" : "Redis unreachable";
  $("replica").textContent = data.replica_id;
  $("updated").textContent = new Date().toLocaleTimeString();
  const banner = $("banner");
  banner.className = ok ? "banner" : "banner show";
  banner.textContent = ok ? "" :
    "Redis is unreachable: limits cannot be read, and generation fails closed until it is back.";
  const sems = data.semaphores;
  const accounts = data.accounts;
  const grid = $("grid");
  if (!ok) {  // nothing is known: show no numbers rather than zeros
    for (const id of ["s-accounts", "s-acct-used", "s-count", "s-used", "s-wait"]) {
      $(id).textContent = "–";
    }
    $("accounts").replaceChildren(el("div", {class: "none"}, "Unknown while Redis is unreachable."));
    grid.replaceChildren();
    return;
  }
  const sum = (items, f) => items.reduce((n, item) => n + (f(item) || 0), 0);
  $("s-accounts").textContent = accounts.length;
  $("s-acct-used").textContent = sum(accounts, (a) => a.in_use) + " / " +
    sum(accounts, (a) => a.limit);
  $("s-count").textContent = sems.length + (data.truncated ? "+" : "");
  $("s-used").textContent = sum(sems, (s) => s.in_use) + " / " + sum(sems, (s) => s.limit);
  $("s-wait").textContent = sum(sems, (s) => s.waiting) + sum(accounts, (a) => a.waiting);
  const jobs = data.jobs || {};
  const ended = (jobs.succeeded || 0) + (jobs.failed || 0) + (jobs.canceled || 0);
  $("s-jobs").textContent = data.jobs
    ? `${jobs.queued || 0} · ${jobs.running || 0} · ${ended}` : "–";
  $("s-jobs").title = data.jobs ? Object.entries(jobs).map(([k, v]) => `${k}: ${v}`).join(", ") : "";
  $("accounts").replaceChildren(accountsTable(accounts));
  grid.replaceChildren(...(sems.length ? sems.map(card) : [emptyState(data.setup)]));
}

// -- charts ------------------------------------------------------------------------------------

const charts = {};

// Pixels of the plot area drawn in a series colour: the test reads this from the DOM to know the
// chart is not empty (grid lines and axes are grey or black, never a series colour).
function inkOf(u) {
  const {left, top, width, height} = u.bbox;
  if (width < 1 || height < 1) return 0;
  const pixels = u.ctx.getImageData(left, top, width, height).data;
  const wanted = u.series.slice(1).map((s) => {
    const hex = typeof s.stroke === "function" ? s.stroke(u) : s.stroke;
    return [1, 3, 5].map((i) => parseInt(String(hex).slice(i, i + 2), 16));
  });
  let ink = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] < 160) continue;
    for (const [r, g, b] of wanted) {
      if (Math.abs(pixels[i] - r) + Math.abs(pixels[i + 1] - g) + Math.abs(pixels[i + 2] - b) < 60) {
        ink++;
        break;
      }
    }
  }
  return ink;
}

function axisSeconds(u, splits) {
  return splits.map((v) => v === null ? "" : v === 0 ? "0" :
    v < 1 ? Math.round(v * 1000) + " ms" : v + " s");
}

// Local wall-clock time of day: the axis spans at most 15 minutes.
function axisClock(u, splits) {
  return splits.map((v) => {
    const d = new Date(v * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) +
      (d.getSeconds() ? ":" + pad(d.getSeconds()) : "");
  });
}

function drawChart(id, times, series, yFormat) {
  const box = $(id);
  const labels = series.map((s) => s.label).join("\u0000");
  const data = [times, ...series.map((s) => s.values)];
  const points = series.reduce((n, s) => n + s.values.filter((v) => v !== null).length, 0);
  box.dataset.points = String(points);
  let chart = charts[id];
  if (chart && chart.labels !== labels) {
    chart.plot.destroy();
    chart = null;
  }
  if (!chart) {
    box.replaceChildren();
    const opts = {
      width: Math.max(300, box.clientWidth),
      height: CHART_HEIGHT,
      padding: [12, 28, 0, 0],  // room for the last time label on the right
      legend: {live: false},
      cursor: {drag: {x: false, y: false}},
      scales: {x: {time: true},
               y: {range: (u, min, max) => [0, max > 0 ? max * 1.15 : 1]}},
      axes: [{values: axisClock}, yFormat ? {values: yFormat, size: 56} : {size: 48}],
      series: [{}, ...series.map((s, i) => ({
        label: s.label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: false,
      }))],
      hooks: {draw: [(u) => {
        box.dataset.drawn = String(Number(box.dataset.drawn || 0) + 1);
        box.dataset.ink = String(inkOf(u));
      }]},
    };
    chart = {labels, plot: new uPlot(opts, data, box)};
    charts[id] = chart;
  } else {
    chart.plot.setData(data);
  }
  const note = box.querySelector(".nodata");
  if (!points && !note) {
    box.append(el("div", {class: "nodata"}, "No samples in the last 15 minutes."));
  } else if (points && note) {
    note.remove();
  }
}

function renderHistory(h) {
  if (!h.redis.reachable) {
    $("history-note").textContent = "(Redis unreachable)";
    return;
  }
  // Up to 15 minutes: from the first bucket any replica wrote (a fresh deployment shows the
  // minutes it has, not a 15-minute axis with its data squeezed against the right edge).
  const first = h.replicas.findIndex((n) => n > 0);
  const from = first < 0 ? 0 : Math.max(0, Math.min(first, h.t.length - MIN_BUCKETS));
  const cut = (values) => values.slice(from);
  const t = cut(h.t);
  $("history-note").textContent = first < 0
    ? "(no samples yet: every replica writes one every 2 s)"
    : from > 0 ? "(since " + new Date(t[0] * 1000).toLocaleTimeString() + ", the first sample)" : "";
  const limits = h.limits.map((l) => ({...l, name: l.label + (l.limit ? " (limit " + l.limit + ")" : "")}));
  drawChart("chart-inflight", t, limits.map((l) => ({label: l.name, values: cut(l.in_use)})));
  drawChart("chart-queue", t, limits.map((l) => ({label: l.name, values: cut(l.waiting)})));
  drawChart("chart-admissions", t, [
    {label: "account slots", values: cut(h.admissions_per_min.account)},
    {label: "global semaphore slots", values: cut(h.admissions_per_min.semaphore)},
  ]);
  drawChart("chart-throttled", t, [
    {label: "HTTP 429 from Replicate", values: cut(h.upstream_429_per_min)},
  ]);
  drawChart("chart-wait", t, [
    {label: "p50", values: cut(h.wait_p50_s)},
    {label: "p99", values: cut(h.wait_p99_s)},
  ], axisSeconds);
}

// -- polling -----------------------------------------------------------------------------------

async function refresh() {
  try {
    const response = await fetch("dashboard/data", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    const banner = $("banner");
    banner.className = "banner show";
    banner.textContent = "Cannot reach the service (" + err.message + "); retrying…";
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

async function refreshHistory() {
  try {
    const response = await fetch("dashboard/history", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    renderHistory(await response.json());
  } catch (err) {
    $("history-note").textContent = "(cannot read the history: " + err.message + ")";
  } finally {
    setTimeout(refreshHistory, HISTORY_MS);
  }
}

refresh();
refreshHistory();

window.addEventListener("resize", () => {
  for (const [id, chart] of Object.entries(charts)) {
    chart.plot.setSize({width: Math.max(300, $(id).clientWidth), height: CHART_HEIGHT});
  }
});
