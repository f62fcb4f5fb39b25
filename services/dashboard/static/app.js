// edgepub fleet dashboard: one page, three views (fleet, publishes, a pipeline), routed by
// location.pathname; every filter lives in the URL (history.pushState), so a reload or a
// shared link shows the same. Data arrives as server-sent events: a full `snapshot` on
// connect and after changes, a `ping` with the feed's state in between. No framework,
// nothing fetched but this server's own /api and /events.
"use strict";

const STALE_AFTER_MS = 15000; // no event for this long: the page says its feed is stale
const $ = (sel, root) => (root || document).querySelector(sel);

// --- small helpers ------------------------------------------------------------------------

function esc(value) {
  return String(value == null ? "" : value).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

function dash(value) {
  return value == null || value === "" ? '<span class="none">–</span>' : esc(value);
}

function num(value, digits) {
  if (value == null) return dash(null);
  const n = Number(value);
  return esc(digits == null ? n.toLocaleString("en-US") : n.toFixed(digits));
}

function bytes(value) {
  if (value == null) return dash(null);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = Number(value);
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u += 1;
  }
  return esc((u === 0 ? String(n) : n.toFixed(1)) + " " + units[u]);
}

function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}

function two(n) {
  return String(n).padStart(2, "0");
}

// A time as the operator reads it: UTC, to the second ("2026-12-02 06:51:02Z").
function absolute(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return (
    d.getUTCFullYear() + "-" + two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate()) + " " +
    two(d.getUTCHours()) + ":" + two(d.getUTCMinutes()) + ":" + two(d.getUTCSeconds()) + "Z"
  );
}

function clock(ms) {
  const d = new Date(ms);
  return two(d.getHours()) + ":" + two(d.getMinutes()) + ":" + two(d.getSeconds());
}

// The server's clock, as of its last snapshot: ages are counted on it, not on the browser's.
let serverOffsetMs = 0;
function serverNow() {
  return Date.now() + serverOffsetMs;
}

// `<span class="ago" data-at="ISO">`: "12 s ago", kept current every second by tick().
function ago(iso, suffix) {
  if (!iso) return dash(null);
  const s = suffix == null ? " ago" : suffix;
  return '<span class="ago" data-at="' + esc(iso) + '" data-suffix="' + esc(s) + '"></span>';
}

// Absolute and relative, compact: the time of day (UTC) when it is today's, else the date;
// the whole timestamp in the tooltip.
function when(iso) {
  if (!iso) return dash(null);
  const full = absolute(iso);
  const today = full.slice(0, 10) === absolute(new Date(serverNow()).toISOString()).slice(0, 10);
  const short = today ? full.slice(11) : full.slice(0, 16) + "Z";
  return '<span class="abs" title="' + esc(full) + '">' + esc(short) + "</span> " + ago(iso);
}

function updateAges(root) {
  const now = serverNow();
  for (const el of (root || document).querySelectorAll(".ago[data-at]")) {
    const age = (now - Date.parse(el.dataset.at)) / 1000;
    el.textContent = duration(age) + el.dataset.suffix;
  }
}

function showError(text) {
  const box = $("#error");
  box.textContent = text || "";
  box.hidden = !text;
}

// --- the live feed ------------------------------------------------------------------------

const feed = {
  source: null, // the EventSource
  url: null,
  lastEventAt: 0, // Date.now() of the last event
  lastSnapshotAt: 0,
  serverFeed: null, // the server's own word: {live, connected, heard_s_ago}
  onSnapshot: null,
  gotSnapshot: false,
};

function openFeed(url, onSnapshot) {
  closeFeed();
  feed.url = url;
  feed.onSnapshot = onSnapshot;
  feed.gotSnapshot = false;
  feed.serverFeed = null;
  const source = new EventSource(url);
  feed.source = source;
  source.addEventListener("snapshot", (ev) => {
    if (feed.source !== source) return;
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (err) {
      return;
    }
    feed.lastEventAt = feed.lastSnapshotAt = Date.now();
    feed.gotSnapshot = true;
    if (data.now) serverOffsetMs = Date.parse(data.now) - Date.now();
    feed.serverFeed = data.feed || null;
    showError("");
    onSnapshot(data);
    renderFeedStatus();
  });
  source.addEventListener("ping", (ev) => {
    if (feed.source !== source) return;
    feed.lastEventAt = Date.now();
    try {
      feed.serverFeed = JSON.parse(ev.data);
    } catch (err) {
      /* keep the last */
    }
    renderFeedStatus();
  });
  source.addEventListener("error", () => {
    if (feed.source !== source) return;
    renderFeedStatus();
    if (!feed.gotSnapshot) explainFailure(url.replace(/^\/events\/[a-z]+/, apiOf(url)));
  });
}

function apiOf(eventsUrl) {
  if (eventsUrl.startsWith("/events/fleet")) return "/api/fleet";
  if (eventsUrl.startsWith("/events/publishes")) return "/api/publishes";
  const name = new URLSearchParams(eventsUrl.split("?")[1] || "").get("name") || "";
  return "/api/pipelines/" + encodeURIComponent(name);
}

// The stream failed before its first snapshot: ask the JSON route why (a 400 names the bad
// filter; a 401 means the session ended).
async function explainFailure(apiUrl) {
  try {
    const resp = await fetch(apiUrl.replace(/([?&])name=[^&]*&?/, "$1"), {
      credentials: "same-origin",
    });
    if (resp.status === 401) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
    } else if (!resp.ok) {
      showError((await resp.text()) || "HTTP " + resp.status);
      closeFeed(); // a bad query does not get better by retrying
    }
  } catch (err) {
    /* the server is away: the feed status says stale, EventSource retries */
  }
}

function closeFeed() {
  if (feed.source) feed.source.close();
  feed.source = null;
}

function feedState() {
  if (!feed.source || feed.source.readyState !== EventSource.OPEN) {
    return [false, feed.source ? "not connected (reconnecting)" : "not connected"];
  }
  if (!feed.lastEventAt || Date.now() - feed.lastEventAt > STALE_AFTER_MS) {
    return [false, "no update for " + duration((Date.now() - feed.lastEventAt) / 1000)];
  }
  const s = feed.serverFeed;
  if (s && !s.live) {
    return [false, s.connected ? "the dashboard's bus feed is behind" : "the dashboard lost the bus"];
  }
  return [true, "live"];
}

function renderFeedStatus() {
  const el = $("#feed-status");
  const [live, why] = feedState();
  const last = feed.lastSnapshotAt ? "updated " + clock(feed.lastSnapshotAt) : "no data yet";
  el.dataset.state = live ? "live" : feed.lastSnapshotAt || feed.source ? "stale" : "connecting";
  el.innerHTML =
    '<span class="dot"></span><span><b>' + (live ? "live" : "stale") + "</b>" +
    (live ? "" : ": " + esc(why)) + ' · <span class="last" id="feed-last">' + esc(last) + "</span></span>";
  el.title = live ? "updates arrive as they happen" : "what the page shows may be out of date";
}

// --- routing --------------------------------------------------------------------------------

function route() {
  const path = location.pathname;
  if (path.startsWith("/pipelines/")) {
    return { view: "pipeline", name: decodeURIComponent(path.slice("/pipelines/".length)) };
  }
  if (path === "/publishes") return { view: "publishes" };
  return { view: "fleet" };
}

function navigate(url, replace) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

let current = null; // the view on screen: {view, name, update(params)}

function render() {
  const r = route();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === r.view);
  }
  const sel = $("#nav-pipeline");
  sel.value = r.view === "pipeline" ? r.name : "";
  showError("");
  const params = new URLSearchParams(location.search);
  if (!current || current.view !== r.view || current.name !== r.name) {
    closeFeed();
    const main = $("#view");
    main.innerHTML = "";
    current = VIEWS[r.view](main, r);
    current.view = r.view;
    current.name = r.name;
  }
  current.update(params);
}

let pipelinesAt = 0;
async function loadPipelines(atMostEveryMs) {
  if (atMostEveryMs && Date.now() - pipelinesAt < atMostEveryMs) return;
  pipelinesAt = Date.now();
  try {
    const resp = await fetch("/api/pipelines", { credentials: "same-origin" });
    if (!resp.ok) return;
    const names = (await resp.json()).pipelines || [];
    const sel = $("#nav-pipeline");
    const want = route().view === "pipeline" ? route().name : "";
    const have = Array.from(sel.options).map((o) => o.value);
    if (have.join("\n") !== ["", ...names].join("\n")) {
      sel.innerHTML =
        '<option value="">choose…</option>' +
        names.map((n) => '<option value="' + esc(n) + '">' + esc(n) + "</option>").join("");
    }
    sel.value = want;
  } catch (err) {
    /* shown again at the next try */
  }
}

// --- fleet ------------------------------------------------------------------------------------

// Each column: the EdgeRow field it sorts by, and how its filter input reads.
//   filter "select": one of `options`; "eq": exact (comma: any of); "contains"; "num": a number
//   with an optional leading operator (>, >=, <, <=, !=).
const FLEET_COLUMNS = [
  { col: "name", label: "Edge", filter: "contains" },
  { col: "tags", label: "Tags", filter: "contains" },
  { col: "pipeline_name", label: "Pipeline", filter: "eq" },
  { col: "connection", label: "Connection", filter: "select", options: ["online", "offline", "never"] },
  { col: "last_seen", label: "Last seen", filter: null },
  {
    col: "credential_state", label: "Credential", filter: "select",
    options: ["pending", "joined", "expired", "revoked"],
  },
  { col: "desired_version", label: "Desired", filter: "contains" },
  { col: "running_version", label: "Running", filter: "contains" },
  { col: "sync", label: "Sync", filter: "select", options: ["in_sync", "pending", "failed"] },
  { col: "agent_version", label: "Agent", filter: "eq" },
  { col: "rate_per_s", label: "Rate/s", filter: "num", numeric: true },
  { col: "p50_ms", label: "p50 ms", filter: "num", numeric: true },
  { col: "p95_ms", label: "p95 ms", filter: "num", numeric: true },
  { col: "errors", label: "Errors", filter: "num", numeric: true },
  { col: "backlog_rows", label: "Backlog", filter: "num", numeric: true },
  { col: "backlog_bytes", label: "Bytes", filter: "num", numeric: true },
  { col: "oldest_unsent_age_s", label: "Oldest unsent", filter: "num", numeric: true },
  { col: "last_upload_at", label: "Last upload", filter: null },
];
const SYNC_LABEL = { in_sync: "in sync", pending: "pending", failed: "failed" };
const OPS = [[">=", "ge"], ["<=", "le"], ["!=", "ne"], [">", "gt"], ["<", "lt"], ["=", "eq"]];
const PAGING = ["q", "sort", "desc", "offset", "limit"];

// The filter input's text for a column, from the URL (the reverse of filterParam).
function filterText(params, spec) {
  if (params.has(spec.col)) return params.get(spec.col);
  for (const [sym, op] of OPS) {
    const key = spec.col + "." + op;
    if (params.has(key)) return sym + params.get(key);
  }
  const contains = spec.col + ".contains";
  return params.has(contains) ? params.get(contains) : "";
}

function clearColumn(params, col) {
  for (const key of Array.from(params.keys())) {
    if (key === col || key.startsWith(col + ".")) params.delete(key);
  }
}

function setFilter(params, spec, text) {
  clearColumn(params, spec.col);
  text = text.trim();
  if (!text) return;
  if (spec.filter === "contains") {
    params.set(spec.col + ".contains", text);
    return;
  }
  if (spec.filter === "num") {
    for (const [sym, op] of OPS) {
      if (text.startsWith(sym)) {
        const value = text.slice(sym.length).trim();
        params.set(op === "eq" ? spec.col : spec.col + "." + op, value);
        return;
      }
    }
  }
  params.set(spec.col, text);
}

const COUNTERS = [
  { key: "total", label: "edges", set: {} },
  { key: "online", label: "online", set: { connection: "online" } },
  { key: "offline", label: "offline", set: { connection: "offline" } },
  { key: "never", label: "never connected", set: { connection: "never" } },
  { key: "out_of_sync", label: "out of sync", set: { sync: "pending,failed" } },
  { key: "failed", label: "failed", set: { sync: "failed" } },
  { key: "backlog_over", label: "backlog over", set: { backlog_over: "true" } },
];
const COUNTER_COLUMNS = ["connection", "sync", "backlog_over"];

function fleetView(main) {
  const head = FLEET_COLUMNS.map(
    (c) =>
      '<th data-col="' + c.col + '"' + (c.numeric ? ' class="n"' : "") + '><button type="button" class="sort" data-sort="' +
      c.col + '">' + esc(c.label) + '<span class="arrow"></span></button></th>',
  ).join("");
  const filters = FLEET_COLUMNS.map((c) => {
    if (!c.filter) return "<th></th>";
    if (c.filter === "select") {
      return (
        '<th><select data-filter="' + c.col + '" aria-label="filter ' + esc(c.label) + '"><option value="">all</option>' +
        c.options.map((o) => '<option value="' + o + '">' + esc(SYNC_LABEL[o] || o) + "</option>").join("") +
        "</select></th>"
      );
    }
    const hint = c.filter === "num" ? "e.g. >5" : c.filter === "eq" ? "exact" : "contains";
    return (
      '<th><input data-filter="' + c.col + '" placeholder="' + hint + '" aria-label="filter ' + esc(c.label) +
      '" size="4"></th>'
    );
  }).join("");
  main.innerHTML =
    '<div class="strip"><section id="counters" class="counters"></section><span id="fleet-legend" class="legend"></span></div>' +
    '<div class="toolbar">' +
    '<input id="fleet-q" type="search" placeholder="search names and tags" aria-label="search">' +
    '<button type="button" id="fleet-clear">clear filters</button>' +
    '<span class="spacer"></span>' +
    '<span id="fleet-matched"></span>' +
    '<button type="button" id="fleet-prev">‹ prev</button>' +
    '<button type="button" id="fleet-next">next ›</button>' +
    '<select id="fleet-limit" aria-label="rows per page"><option>50</option><option selected>100</option><option>250</option><option>1000</option></select>' +
    '<a id="fleet-csv" href="/api/fleet.csv" download>CSV</a>' +
    "</div>" +
    '<div class="scroll"><table id="fleet"><thead><tr class="heads">' + head + '</tr><tr class="filters">' + filters +
    "</tr></thead><tbody></tbody></table></div>" +
    '<p id="fleet-empty" class="empty" hidden>No edge matches these filters.</p>';

  const tbody = $("#fleet tbody", main);
  let params = new URLSearchParams();
  let data = null;
  const rowHtml = new Map(); // edge name -> the markup its row has now

  function push(mutate) {
    const next = new URLSearchParams(params);
    mutate(next);
    const qs = next.toString();
    navigate("/fleet" + (qs ? "?" + qs : ""));
  }

  main.addEventListener("click", (ev) => {
    const sort = ev.target.closest("[data-sort]");
    if (sort) {
      const col = sort.dataset.sort;
      const cur = (params.get("sort") || "name").replace(/^-/, "");
      const desc = (params.get("sort") || "").startsWith("-") || params.get("desc") === "true";
      push((p) => {
        p.delete("desc");
        p.delete("offset");
        p.set("sort", cur === col && !desc ? "-" + col : col);
        if (p.get("sort") === "name") p.delete("sort");
      });
      return;
    }
    const counter = ev.target.closest("[data-counter]");
    if (counter) {
      const spec = COUNTERS.find((c) => c.key === counter.dataset.counter);
      push((p) => {
        for (const col of COUNTER_COLUMNS) clearColumn(p, col);
        p.delete("offset");
        for (const [k, v] of Object.entries(spec.set)) p.set(k, v);
      });
      return;
    }
    if (ev.target.id === "fleet-clear") {
      push((p) => {
        for (const key of Array.from(p.keys())) if (key !== "sort" && key !== "limit") p.delete(key);
      });
    } else if (ev.target.id === "fleet-prev" || ev.target.id === "fleet-next") {
      const limit = Number(params.get("limit") || 100);
      const offset = Number(params.get("offset") || 0);
      const next = ev.target.id === "fleet-next" ? offset + limit : Math.max(0, offset - limit);
      push((p) => (next ? p.set("offset", String(next)) : p.delete("offset")));
    }
  });

  function onFilter(el) {
    if (el.id === "fleet-q") {
      push((p) => {
        p.delete("offset");
        el.value.trim() ? p.set("q", el.value.trim()) : p.delete("q");
      });
    } else if (el.id === "fleet-limit") {
      push((p) => {
        p.delete("offset");
        el.value === "100" ? p.delete("limit") : p.set("limit", el.value);
      });
    } else if (el.dataset.filter) {
      const spec = FLEET_COLUMNS.find((c) => c.col === el.dataset.filter);
      push((p) => {
        p.delete("offset");
        setFilter(p, spec, el.value);
      });
    }
  }
  let typing = null;
  main.addEventListener("change", (ev) => {
    clearTimeout(typing);
    onFilter(ev.target);
  });
  main.addEventListener("input", (ev) => {
    if (ev.target.tagName !== "INPUT") return;
    clearTimeout(typing);
    typing = setTimeout(() => onFilter(ev.target), 500);
  });

  function counters(c) {
    const active = COUNTERS.find((spec) => {
      const keys = Object.keys(spec.set);
      const set = COUNTER_COLUMNS.filter((col) => Array.from(params.keys()).some((k) => k === col || k.startsWith(col + ".")));
      return keys.length === set.length && keys.every((k) => params.get(k) === spec.set[k]);
    });
    $("#counters", main).innerHTML = COUNTERS.map(
      (spec) =>
        '<button type="button" class="counter c-' + spec.key + (active === spec ? " active" : "") +
        '" data-counter="' + spec.key + '" title="show ' + esc(spec.label) + '"><span class="v">' +
        num(c[spec.key]) + '</span><span class="k">' + esc(spec.label) + "</span></button>",
    ).join("");
    const threshold = "offline after " + duration(c.offline_after_s) + " without a heartbeat";
    $("#fleet-legend", main).innerHTML =
      '<span><span class="dot online"></span>online <span class="dot offline"></span>offline ' +
      '<span class="dot never"></span>never connected</span><span id="offline-threshold">' + esc(threshold) +
      "</span><span>backlog flagged over " + num(c.backlog_threshold_rows) + " rows</span>";
    $('th[data-col="connection"]', main).title = threshold;
  }

  function row(r) {
    const cells = {
      name: '<span class="name">' + esc(r.name) + "</span>",
      tags: r.tags.length ? r.tags.map((t) => '<span class="tag">' + esc(t) + "</span>").join(" ") : dash(null),
      pipeline_name: '<a href="/pipelines/' + encodeURIComponent(r.pipeline_name) + '" data-link>' + esc(r.pipeline_name) + "</a>",
      connection: '<span class="dot ' + r.connection + '"></span>' + esc(r.connection),
      last_seen: when(r.last_seen),
      credential_state: '<span class="cred ' + esc(r.credential_state) + '"' +
        (r.credential_expires_at ? ' title="expires ' + esc(absolute(r.credential_expires_at)) + '"' : "") + ">" +
        esc(r.credential_state) + "</span>",
      desired_version: version(r.desired_version, r.desired_publish_id),
      running_version: r.running_version == null ? dash(null) : version(r.running_version, r.running_publish_id),
      sync: '<span class="sync ' + r.sync + '">' + esc(SYNC_LABEL[r.sync]) + "</span>" +
        (r.sync_since ? ' <span class="sub">' + ago(r.sync_since, "") + "</span>" : "") +
        (r.sync_reason ? '<div class="why">' + esc(r.sync_reason) + "</div>" : ""), // clipped; whole in the title
      agent_version: dash(r.agent_version),
      rate_per_s: num(r.rate_per_s, r.rate_per_s == null ? null : 1),
      p50_ms: num(r.p50_ms, r.p50_ms == null ? null : 1),
      p95_ms: num(r.p95_ms, r.p95_ms == null ? null : 1),
      errors: r.errors ? '<span class="bad">' + num(r.errors) + "</span>" : num(r.errors),
      backlog_rows: r.backlog_over ? '<span class="bad" title="over the threshold">' + num(r.backlog_rows) + "</span>" : num(r.backlog_rows),
      backlog_bytes: bytes(r.backlog_bytes),
      oldest_unsent_age_s: r.oldest_unsent_at ? ago(r.oldest_unsent_at, "") : dash(null),
      last_upload_at: when(r.last_upload_at),
    };
    const tds = FLEET_COLUMNS.map((c) => {
      const title = c.col === "sync" && r.sync_reason ? ' title="' + esc(r.sync_reason) + '"' : "";
      return '<td data-col="' + c.col + '" data-value="' + esc(cellValue(r, c.col)) + '"' + title +
        (c.numeric ? ' class="n"' : "") + ">" + cells[c.col] + "</td>";
    }).join("");
    return '<tr data-edge="' + esc(r.name) + '" data-connection="' + r.connection + '" data-sync="' + r.sync +
      '" class="' + r.connection + (r.backlog_over ? " backlog-over" : "") + '">' + tds + "</tr>";
  }

  function version(name, publishId) {
    const short = name.length > 12 ? name.slice(0, 8) + "…" : name;
    return '<span class="mono" title="' + esc(name) + '">' + esc(short) + "</span>" +
      (publishId == null ? "" : ' <span class="sub">#' + esc(publishId) + "</span>");
  }

  function cellValue(r, col) {
    if (col === "oldest_unsent_age_s") return r.oldest_unsent_at || "";
    const v = r[col];
    return Array.isArray(v) ? v.join(",") : v == null ? "" : v;
  }

  function rows(list) {
    // Keyed by edge: a row whose markup did not change keeps its element (and its tooltip,
    // its selection); the others are replaced, then all are put in the snapshot's order.
    const wanted = list.map((r) => {
      const html = row(r);
      const had = rowHtml.get(r.name);
      if (had && had.html === html) return had.tr;
      const tmp = document.createElement("tbody");
      tmp.innerHTML = html;
      const tr = tmp.firstElementChild;
      rowHtml.set(r.name, { html, tr });
      return tr;
    });
    const keep = new Set(wanted);
    for (const tr of Array.from(tbody.children)) if (!keep.has(tr)) tr.remove();
    for (const name of Array.from(rowHtml.keys())) if (!keep.has(rowHtml.get(name).tr)) rowHtml.delete(name);
    let ref = tbody.firstElementChild;
    for (const tr of wanted) {
      if (tr === ref) ref = ref.nextElementSibling;
      else tbody.insertBefore(tr, ref);
    }
  }

  function draw() {
    if (!data) return;
    counters(data.counters);
    rows(data.rows);
    const q = data.query;
    const first = data.rows.length ? q.offset + 1 : 0;
    $("#fleet-matched", main).innerHTML =
      '<b>' + num(first) + "–" + num(q.offset + data.rows.length) + "</b> of <b id=\"fleet-count\">" +
      num(data.matched) + "</b> matched (" + num(data.counters.total) + " edges)";
    $("#fleet-prev", main).disabled = q.offset <= 0;
    $("#fleet-next", main).disabled = q.offset + data.rows.length >= data.matched;
    $("#fleet-empty", main).hidden = data.rows.length > 0;
    $("#fleet", main).dataset.matched = String(data.matched);
    loadPipelines(10000); // a new pipeline joins the menu
    updateAges(main);
    // when the first rows were on screen (ms since navigation): what the tests report
    if (data.rows.length && !window.edgepubFirstRender) window.edgepubFirstRender = performance.now();
  }

  function update(next) {
    params = next;
    const sort = params.get("sort") || "name";
    const col = sort.replace(/^-/, "");
    const desc = sort.startsWith("-") || params.get("desc") === "true";
    for (const th of main.querySelectorAll("th[data-col]")) {
      const on = th.dataset.col === col;
      th.classList.toggle("sorted", on);
      th.setAttribute("aria-sort", on ? (desc ? "descending" : "ascending") : "none");
      $(".arrow", th).textContent = on ? (desc ? " ▼" : " ▲") : "";
    }
    const qEl = $("#fleet-q", main);
    if (document.activeElement !== qEl) qEl.value = params.get("q") || "";
    for (const el of main.querySelectorAll("[data-filter]")) {
      if (document.activeElement === el && el.tagName === "INPUT") continue;
      el.value = filterText(params, FLEET_COLUMNS.find((c) => c.col === el.dataset.filter));
    }
    $("#fleet-limit", main).value = params.get("limit") || "100";
    const csv = new URLSearchParams(params);
    csv.delete("offset");
    csv.delete("limit");
    $("#fleet-csv", main).href = "/api/fleet.csv" + (csv.toString() ? "?" + csv : "");
    const qs = params.toString();
    if (data) draw(); // the new sort arrows and filters at once; rows follow the snapshot
    openFeed("/events/fleet" + (qs ? "?" + qs : ""), (snapshot) => {
      data = snapshot;
      draw();
    });
  }

  return { update };
}

// --- publishes ----------------------------------------------------------------------------------

const ROLLOUT = [
  ["targeted", "targeted"],
  ["running", "running"],
  ["pending", "pending"],
  ["failed", "failed"],
  ["offline_not_reached", "offline, not reached"],
  ["running_not_targeted", "still running (replaced)"],
];

function publishesView(main) {
  main.innerHTML =
    '<h1>Publishes</h1><p class="hint">Every publish, newest first. Rollout counts each edge assigned to a publish ' +
    "once: running it, pending (online, not yet running it), failed (it could not load it), or offline and not yet reached.</p>" +
    '<div class="scroll"><table id="publishes"><thead><tr><th>ID</th><th>Pipeline</th><th>Version</th><th>Status</th>' +
    "<th>Created</th><th>Replaces</th>" +
    ROLLOUT.map(([k, label]) => '<th class="n rollout" data-col="rollout-' + k + '">' + esc(label) + "</th>").join("") +
    '<th>Rollout</th></tr></thead><tbody></tbody></table></div><p id="publishes-empty" class="empty" hidden>No publish yet.</p>';
  const tbody = $("#publishes tbody", main);

  function bar(r) {
    const t = r.targeted || 0;
    if (!t) return '<span class="none">no edges</span>';
    const part = (k) => '<span class="seg ' + k + '" style="width:' + ((100 * r[k]) / t).toFixed(1) + '%"></span>';
    return '<span class="bar" title="' + esc(r.running + " of " + t + " running") + '">' +
      part("running") + part("pending") + part("failed") + part("offline_not_reached") + "</span>";
  }

  function row(p) {
    const status =
      '<span class="status ' + esc(p.status) + (p.stuck ? " stuck" : "") + '">' + esc(p.status) + "</span>" +
      ' <span class="sub">for ' + ago(p.status_since, "") + "</span>" +
      (p.stuck ? '<div class="stuck-reason" data-stuck>stuck: ' + esc(p.stuck_reason) + "</div>" : "") +
      (p.error ? '<div class="error-text" data-error>' + esc(p.error) + "</div>" : "");
    return (
      '<tr data-publish="' + p.id + '" data-status="' + esc(p.status) + '"' + (p.stuck ? ' data-stuck="true"' : "") + ">" +
      '<td data-col="id">' + p.id + "</td>" +
      '<td data-col="pipeline"><a href="/pipelines/' + encodeURIComponent(p.pipeline_name) + '" data-link>' + esc(p.pipeline_name) + "</a></td>" +
      '<td data-col="version" class="mono">' + esc(p.pipeline_version_name) + "</td>" +
      '<td data-col="status">' + status + "</td>" +
      '<td data-col="created">' + when(p.created_at) + '<div class="sub">by ' + esc(p.created_by) + "</div></td>" +
      '<td data-col="replaces">' + (p.replaces.length ? p.replaces.map((id) => "#" + id).join(", ") : dash(null)) + "</td>" +
      ROLLOUT.map(([k]) => '<td class="n rollout r-' + k + (p.rollout[k] ? " some" : "") + '" data-col="rollout-' + k + '">' + num(p.rollout[k]) + "</td>").join("") +
      '<td data-col="rollout">' + bar(p.rollout) + "</td></tr>"
    );
  }

  function update() {
    openFeed("/events/publishes", (data) => {
      tbody.innerHTML = data.rows.map(row).join("");
      $("#publishes-empty", main).hidden = data.rows.length > 0;
      updateAges(main);
      loadPipelines(2000);
    });
  }
  return { update };
}

// --- a pipeline -----------------------------------------------------------------------------------

const PRESETS = { "1h": 3600, "24h": 86400, "7d": 7 * 86400 };

function toLocalInput(ms) {
  const d = new Date(ms);
  return d.getFullYear() + "-" + two(d.getMonth() + 1) + "-" + two(d.getDate()) + "T" + two(d.getHours()) + ":" + two(d.getMinutes());
}

function pipelineView(main, r) {
  const name = r.name;
  main.innerHTML =
    '<h1>Pipeline <span class="mono" id="pipeline-name">' + esc(name) + "</span></h1>" +
    '<div class="toolbar" id="pipeline-controls">' +
    '<label>Edge <select id="edge-filter"><option value="">all edges</option></select></label>' +
    '<span class="presets">' + Object.keys(PRESETS).map((k) => '<button type="button" data-range="' + k + '">last ' + k + "</button>").join("") + "</span>" +
    '<label>From <input type="datetime-local" id="range-start"></label>' +
    '<label>To <input type="datetime-local" id="range-end"></label>' +
    '<button type="button" id="range-apply">apply</button>' +
    '<span class="spacer"></span><span id="pipeline-summary"></span>' +
    "</div>" +
    '<div class="charts"><figure class="chart" id="chart-rows"></figure><figure class="chart" id="chart-latency"></figure></div>' +
    '<h2>Latest rows</h2><div class="scroll"><table id="latest"><thead><tr><th>Time</th><th>Edge</th><th class="n">Seq</th>' +
    '<th>Version</th><th class="n">Latency ms</th><th>Inputs</th><th>Outputs</th></tr></thead><tbody></tbody></table></div>' +
    '<p id="latest-empty" class="empty" hidden>No rows in this range.</p>';

  let params = new URLSearchParams();
  let chartKey = null;

  function push(mutate) {
    const next = new URLSearchParams(params);
    mutate(next);
    const qs = next.toString();
    navigate("/pipelines/" + encodeURIComponent(name) + (qs ? "?" + qs : ""));
  }

  main.addEventListener("click", (ev) => {
    const preset = ev.target.closest("[data-range]");
    if (preset) {
      push((p) => {
        p.delete("start");
        p.delete("end");
        preset.dataset.range === "1h" ? p.delete("last") : p.set("last", preset.dataset.range);
      });
    } else if (ev.target.id === "range-apply") {
      const s = $("#range-start", main).value;
      const e = $("#range-end", main).value;
      push((p) => {
        p.delete("last");
        s ? p.set("start", new Date(s).toISOString()) : p.delete("start");
        e ? p.set("end", new Date(e).toISOString()) : p.delete("end");
      });
    }
  });
  $("#edge-filter", main).addEventListener("change", (ev) => {
    push((p) => (ev.target.value ? p.set("edge", ev.target.value) : p.delete("edge")));
  });

  // The server's query: `last=24h` (this page's own) becomes a start that many seconds ago.
  function serverQuery() {
    const q = new URLSearchParams();
    if (params.get("edge")) q.set("edge", params.get("edge"));
    const last = PRESETS[params.get("last")];
    if (params.get("start")) q.set("start", params.get("start"));
    else if (last) q.set("start", new Date(serverNow() - last * 1000).toISOString());
    if (params.get("end")) q.set("end", params.get("end"));
    return q;
  }

  async function charts(query, key) {
    if (key === chartKey) return;
    chartKey = key;
    for (const metric of ["rows", "latency"]) {
      try {
        const resp = await fetch("/api/pipelines/" + encodeURIComponent(name) + "/" + metric + ".svg?" + query, {
          credentials: "same-origin",
        });
        if (resp.ok && chartKey === key) $("#chart-" + metric, main).innerHTML = await resp.text();
      } catch (err) {
        chartKey = null; // try again at the next snapshot
      }
    }
  }

  function draw(data, query) {
    const sel = $("#edge-filter", main);
    const edges = Array.from(new Set([...(data.edges || []), ...(params.get("edge") ? [params.get("edge")] : [])])).sort();
    const want = ["", ...edges].join("\n");
    if (Array.from(sel.options).map((o) => o.value).join("\n") !== want) {
      sel.innerHTML = '<option value="">all edges</option>' + edges.map((e) => '<option value="' + esc(e) + '">' + esc(e) + "</option>").join("");
    }
    sel.value = params.get("edge") || "";
    if (!params.get("start") && !params.get("end")) {
      $("#range-start", main).value = toLocalInput(Date.parse(data.start));
      $("#range-end", main).value = toLocalInput(Date.parse(data.end));
    }
    $("#pipeline-summary", main).innerHTML =
      "<b>" + num(data.rows) + "</b> rows from " + esc(absolute(data.start)) + " to " + esc(absolute(data.end)) +
      (data.truncated ? ' <span class="bad">(truncated: narrow the range)</span>' : "");
    $("#latest tbody", main).innerHTML = data.latest
      .map(
        (l) =>
          '<tr data-seq="' + l.seq + '" data-edge="' + esc(l.edge) + '"><td>' + when(l.time) + "</td><td>" + esc(l.edge) +
          '</td><td class="n">' + l.seq + '</td><td class="mono">' + esc(l.pipeline_version) + '</td><td class="n">' +
          num(l.latency_ms, l.latency_ms == null ? null : 2) + '</td><td class="json" title="' + esc(l.inputs) + '">' +
          esc(l.inputs) + '</td><td class="json" title="' + esc(l.outputs) + '">' + esc(l.outputs) + "</td></tr>",
      )
      .join("");
    $("#latest-empty", main).hidden = data.latest.length > 0;
    updateAges(main);
    charts(query, JSON.stringify([query.toString(), data.minutes, data.start.slice(0, 16), data.end.slice(0, 16)]));
  }

  function update(next) {
    params = next;
    for (const b of main.querySelectorAll("[data-range]")) {
      const on = !params.get("start") && !params.get("end") && (params.get("last") || "1h") === b.dataset.range;
      b.classList.toggle("active", on);
    }
    if (params.get("start")) $("#range-start", main).value = toLocalInput(Date.parse(params.get("start")));
    if (params.get("end")) $("#range-end", main).value = toLocalInput(Date.parse(params.get("end")));
    const query = serverQuery();
    chartKey = null;
    const events = new URLSearchParams(query);
    events.set("name", name);
    openFeed("/events/pipeline?" + events, (data) => draw(data, query));
  }
  return { update };
}

const VIEWS = { fleet: fleetView, publishes: publishesView, pipeline: pipelineView };

// --- start --------------------------------------------------------------------------------

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-nav], a[data-link]");
  if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
  ev.preventDefault();
  navigate(a.getAttribute("href"));
});
$("#nav-pipeline").addEventListener("change", (ev) => {
  if (ev.target.value) navigate("/pipelines/" + encodeURIComponent(ev.target.value));
});
window.addEventListener("popstate", render);
setInterval(() => {
  updateAges();
  renderFeedStatus();
}, 1000);
render();
renderFeedStatus();
loadPipelines();
