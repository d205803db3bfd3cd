"use strict";
const POLL_MS = 2000, HISTORY = 90;  // three minutes of lag
const BAR = 256;  // pixels of a partition's lag bar at the most lag
const history = new Map();  // group -> [{t, appended, processed, lag, dead}]

function el(tag, attrs, ...children) {
  const node = document.createElementNS(
    ["svg", "polyline", "rect"].includes(tag) ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}
const number = (n) => Math.round(n).toLocaleString("en-US");
const figure = (label, value, warn) =>
  el("div", {class: warn ? "figure warn" : "figure"}, el("b", {}, value), label);

function rate(points, field) {
  if (points.length < 2) return "…";
  const first = points[Math.max(0, points.length - 6)], last = points[points.length - 1];
  return number((last[field] - first[field]) / ((last.t - first.t) / 1000)) + "/s";
}

function sparkline(points) {
  const width = 360, height = 60, top = Math.max(1, ...points.map((p) => p.lag));
  const xy = points.map((p, i) =>
    `${(i / (HISTORY - 1)) * width},${height - 2 - (p.lag / top) * (height - 4)}`);
  return el("svg", {width, height, "aria-label": "lag over the last minutes"},
    el("polyline", {points: xy.join(" "), fill: "none", stroke: "#3b7dd8", "stroke-width": 2}));
}

// The dead-letter reasons of a stream whose count grew within the history (three minutes).
function grown(stream, points) {
  const before = points[0].dead;
  return new Set(Object.entries(stream.dead_letters_by_reason)
    .filter(([reason, count]) => count > (before[reason] || 0)).map(([reason]) => reason));
}

// Dead letters by reason, each linked to its list, those that grow in the warning colour.
function deadLetters(stream, growing) {
  const reasons = Object.entries(stream.dead_letters_by_reason);
  if (!reasons.length) return el("div", {class: "reasons muted"}, "no dead letters");
  const links = reasons.map(([reason, count]) => el("a", {
    href: `/v1/dead-letters?stream=${encodeURIComponent(stream.stream)}&reason=${encodeURIComponent(reason)}`,
    class: growing.has(reason) ? "warn" : ""}, `${reason} ${number(count)}`));
  return el("div", {class: "reasons"}, "dead letters by reason: ",
    ...links.flatMap((link, i) => i ? [" · ", link] : [link]));
}

function streamCard(stream, points) {
  const growing = grown(stream, points);
  const most = Math.max(1, ...stream.partitions.map((p) => p.lag));
  const rows = stream.partitions.map((p) => el("tr", {},
    el("td", {}, String(p.partition)), el("td", {}, number(p.appended)),
    el("td", {}, number(p.processed)), el("td", {}, number(p.lag)),
    el("td", {class: "bar"}, el("svg", {width: BAR, height: 11},
      el("rect", {width: (p.lag / most) * BAR, height: 11, rx: 2}))),
    el("td", {class: "muted"}, p.worker || "")));
  return el("div", {class: "card"},
    el("h2", {}, `${stream.app}@${stream.version} (${stream.version_status}) · ${stream.stream}`),
    ...(stream.version_status === "live" ? []
      : [el("div", {class: "muted"}, `started ${stream.started}`)]),
    el("div", {class: "figures"},
      figure("appended", number(stream.appended)), figure("processed", number(stream.processed)),
      figure("lag (records)", number(stream.lag)),
      figure("caught up in", stream.catch_up_s === null ? "not yet known"
        : stream.catch_up_s === 0 ? "caught up" : `${number(Math.ceil(stream.catch_up_s))} s`),
      figure("dead letters", number(stream.dead_letters), growing.size > 0),
      figure("workers", number(stream.workers)),
      figure("appended, last 10 s", rate(points, "appended")),
      figure("processed, last 10 s", rate(points, "processed"))),
    deadLetters(stream, growing),
    ...stream.partitions.filter((p) => p.halted).map((p) => el("div", {class: "error"},
      `partition ${p.partition} halted at offset ${number(p.halted.offset)}: ${p.halted.error}; ` +
      `next try at ${new Date(p.halted.retry_at * 1000).toLocaleTimeString()}`)),
    sparkline(points),
    el("table", {}, el("tr", {}, ...["partition", "appended", "processed", "lag", "", "worker"].map(
      (name) => el("th", {}, name))), ...rows));
}

// Each autoscaler's pool (workers, lag against the threshold, paused or not) and the
// last changes of the workers with why.
function autoscaling(scaling) {
  if (!scaling.pools.length) {
    return [el("div", {class: "muted"},
      "no autoscaler of kappaflow's reports here (in a cluster, KEDA scales the workers)")];
  }
  const pools = scaling.pools.map((p) => el("div", {class: "figures"},
    figure(`workers of ${p.pool}, wanted`, `${p.current} → ${p.desired}`),
    figure("lag to the policy", number(p.policy_lag)),
    figure("threshold per worker", number(p.threshold)),
    figure("state", p.paused === null ? (p.active ? "active" : "inactive")
      : `paused at ${p.paused}`, p.paused !== null)));
  const rows = scaling.decisions.slice(0, 10).map((d) => el("tr", {},
    el("td", {}, new Date(d.at * 1000).toLocaleTimeString()), el("td", {class: "text"}, d.pool),
    el("td", {}, `${d.previous} → ${d.replicas}`), el("td", {}, number(d.lag)),
    el("td", {class: "text"}, d.reason)));
  return [...pools, el("table", {}, el("tr", {}, ...["time", "pool", "workers", "lag", "why"]
    .map((name) => el("th", {}, name))), ...rows)];
}

function show(status) {
  const now = Date.now();
  const cards = status.streams.map((stream) => {
    const points = history.get(stream.group) || [];
    points.push({t: now, appended: stream.appended, processed: stream.processed, lag: stream.lag,
                 dead: stream.dead_letters_by_reason});
    history.set(stream.group, points.slice(-HISTORY));
    return streamCard(stream, history.get(stream.group));
  });
  document.getElementById("streams").replaceChildren(...cards);
  document.getElementById("autoscaling").replaceChildren(...autoscaling(status.autoscaling));
  document.getElementById("queries").replaceChildren(...status.queries.map((q) => el("tr", {},
    el("td", {class: "text"}, q.app),
    el("td", {class: "text"}, q.path.includes("{") ? el("code", {}, q.path)
      : el("a", {href: q.path}, q.path)),
    el("td", {class: "text"}, q.summary))));
  document.getElementById("updated").textContent = `updated ${new Date(now).toLocaleTimeString()}`;
}

const KEY = "kappaflow-api-key";
async function poll() {
  const error = document.getElementById("error");
  try {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? {authorization: `Bearer ${key}`} : {};
    const answer = await fetch("/status", {cache: "no-store", headers});
    if (answer.status === 401) {  // authentication is on: ask for a key of scope metrics
      const given = prompt("kappaflow asks for an API key of scope metrics:");
      if (given) sessionStorage.setItem(KEY, given.trim());
    }
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || `HTTP ${answer.status}`);
    show(body);
    error.hidden = true;
  } catch (failure) {
    error.textContent = `/status: ${failure.message}`;
    error.hidden = false;
  }
  setTimeout(poll, POLL_MS);
}
poll();
