// The Skald console: a hash router and one render function per page. Every
// value from the server goes into the page as text (never as HTML).

import { api, ApiError, query, setToken, streamPath, subscribe } from "./api.js";

const main = document.getElementById("main");
const notice = document.getElementById("notice");

/** What the current token may do (everything with access control off). */
const who = { auth: false, name: null, role: "admin", prefixes: null };
const can = {
  serverAdmin: () => !who.auth || (who.role === "admin" && !who.prefixes),
  catalog: () => who.role === "admin",
  adminStream: () => who.role === "admin",
};

/** Set when a message must outlive the navigation that follows it. */
let carryNotice = false;

/** Work a page started (timers, subscriptions), stopped when it is left. */
let pageAbort = new AbortController();

// ---- DOM helpers -----------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = new Intl.NumberFormat("en");
const num = (n) => (n === null || n === undefined ? "–" : fmt.format(n));

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return h("time", { datetime: iso, title: iso }, d.toLocaleString());
}

function say(message, kind = "info") {
  notice.className = `notice ${kind}`;
  notice.textContent = message;
}

function clearNotice() {
  notice.className = "notice";
  notice.textContent = "";
}

/** Shows an error: 401 asks for a token again, 403 says what the token lacks. */
function showError(err) {
  if (err instanceof ApiError && err.status === 401) {
    setToken(null);
    askToken("The server did not accept the token; sign in again.");
    return;
  }
  if (err instanceof ApiError && err.status === 403) {
    say(`Not allowed for token "${who.name}" (${who.role}): ${err.message}`, "error");
    return;
  }
  if (err?.name === "AbortError") return;
  const code = err instanceof ApiError ? ` (${err.status} ${err.code})` : "";
  say(`${err.message}${code}`, "error");
}

function page(title, ...content) {
  main.replaceChildren(h("h1", { id: "page-title", tabindex: "-1" }, title), ...content);
}

function definitionList(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function labelled(id, label, input) {
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input);
}

function pretty(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

function streamLink(name) {
  return h("a", { href: `#/streams/${encodeURIComponent(name)}` }, name);
}

// ---- Sign in -----------------------------------------------------------------

const dialog = document.getElementById("login");
const loginForm = document.getElementById("login-form");
const loginError = document.getElementById("login-error");
let signedIn = null;

function askToken(message = "") {
  loginError.textContent = message;
  if (!dialog.open) dialog.showModal();
  document.getElementById("login-token").focus();
  return new Promise((resolve) => {
    signedIn = resolve;
  });
}

loginForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("login-token");
  setToken(input.value.trim());
  try {
    await loadWho();
    input.value = "";
    dialog.close();
    signedIn?.();
    route();
  } catch (err) {
    setToken(null);
    loginError.textContent =
      err instanceof ApiError && err.status === 401
        ? "That token is not known to this server."
        : err.message;
  }
});

async function loadWho() {
  const info = await api("/info");
  who.auth = info.auth;
  who.version = info.version;
  who.name = info.caller?.name ?? null;
  who.role = info.caller?.role ?? "admin";
  who.prefixes = info.caller?.stream_prefixes ?? null;
  const badge = document.getElementById("who");
  badge.replaceChildren();
  if (who.auth) {
    const scope = who.prefixes ? ` · ${who.prefixes.join(", ")}` : "";
    badge.append(
      h("span", {}, `${who.name} (${who.role}${scope})`),
      h("button", { type: "button", class: "link", onclick: signOut }, "Sign out"),
    );
  }
  for (const el of document.querySelectorAll('[data-needs="server-admin"]')) {
    el.hidden = !can.serverAdmin();
  }
  return info;
}

function signOut() {
  setToken(null);
  location.hash = "#/";
  askToken();
}

// ---- Dashboard ---------------------------------------------------------------

function chart(history) {
  const w = 600;
  const hgt = 120;
  const peak = Math.max(1, ...history);
  const step = w / Math.max(1, history.length - 1);
  const points = history
    .map((v, i) => `${(i * step).toFixed(1)},${(hgt - (v / peak) * (hgt - 10)).toFixed(1)}`)
    .join(" ");
  const svgNs = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNs, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const last = history.length ? history[history.length - 1] : 0;
  svg.setAttribute(
    "aria-label",
    `Appended events per second over the last 10 minutes: peak ${peak.toFixed(1)}, now ${last.toFixed(1)}`,
  );
  const line = document.createElementNS(svgNs, "polyline");
  line.setAttribute("points", points);
  line.setAttribute("class", "line");
  svg.append(line);
  return h(
    "figure",
    { class: "chart-box" },
    svg,
    h(
      "figcaption",
      {},
      h("span", {}, "10 min ago"),
      h("span", {}, `peak ${num(Math.round(peak))} events/s`),
      h("span", {}, "now"),
    ),
  );
}

async function dashboard(signal) {
  const body = h("div", { id: "dashboard" });
  page("Dashboard", body);
  const refresh = async () => {
    if (!can.serverAdmin()) {
      const info = await api("/info", { signal });
      body.replaceChildren(
        definitionList([
          ["Head position", num(info.head_position)],
          ["Server version", info.version],
        ]),
        h("p", {}, "Server statistics need an admin token that is not limited to stream prefixes."),
      );
      return;
    }
    const s = await api("/admin/stats", { signal });
    const card = (label, value, id) =>
      h("div", { class: "card" }, h("div", { class: "card-label" }, label), h("div", { class: "card-value", id }, value));
    body.replaceChildren(
      h(
        "div",
        { class: "cards" },
        card("Head position", num(s.head_position), "head-position"),
        card("Events", num(s.event_count), "event-count"),
        card("Streams (estimate)", num(s.stream_count_estimate), "stream-count"),
        card("Disk", bytes(s.disk_bytes), "disk-bytes"),
        card("Appends / s (1 min)", s.append_rate_per_sec_1m.toFixed(1), "append-rate"),
        card("Live subscriptions", num(s.live_subscriptions), "live-subscriptions"),
      ),
      h("h2", {}, "Append rate"),
      chart(s.append_history ?? []),
      h("h2", {}, "Server"),
      definitionList([
        ["Open connections", num(s.open_connections)],
        ["Long-polls waiting", num(s.long_polls_waiting)],
        ["Writer queue", `${num(s.writer_queue_requests)} requests, ${num(s.writer_queue_kib)} KiB`],
        ["Reads / s (1 min)", s.read_rate_per_sec_1m.toFixed(1)],
        ["Removed by scavenging", num(s.events_removed_by_scavenging)],
        ["Running scavenge", s.scavenge ? `${s.scavenge.phase} (${s.scavenge.id})` : "none"],
        ["Memtables", bytes(s.rocksdb.memtable_bytes)],
        ["Pending compaction", bytes(s.rocksdb.pending_compaction_bytes)],
      ]),
    );
  };
  await refresh();
  every(2000, refresh, signal);
}

/** Runs `fn` every `ms` until `signal` aborts; errors are shown, not fatal. */
function every(ms, fn, signal) {
  const timer = setInterval(() => fn().catch(showError), ms);
  signal.addEventListener("abort", () => clearInterval(timer));
}

// ---- Streams -------------------------------------------------------------------

async function streams(params, signal) {
  const prefix = params.get("prefix") ?? "";
  const after = params.get("after") ?? "";
  const search = h("input", { type: "search", name: "prefix", value: prefix, autocomplete: "off" });
  const open = h("input", { type: "text", name: "stream", autocomplete: "off" });
  const forms = h(
    "div",
    { class: "forms" },
    can.catalog()
      ? h(
          "form",
          {
            role: "search",
            class: "inline",
            onsubmit: (e) => {
              e.preventDefault();
              location.hash = `#/streams${query({ prefix: search.value })}`;
            },
          },
          labelled("stream-prefix", "Stream name prefix", search),
          h("button", { type: "submit" }, "Search"),
        )
      : null,
    h(
      "form",
      {
        class: "inline",
        onsubmit: (e) => {
          e.preventDefault();
          if (open.value) location.hash = `#/streams/${encodeURIComponent(open.value)}`;
        },
      },
      labelled("stream-open", "Open a stream by name", open),
      h("button", { type: "submit" }, "Open"),
    ),
  );
  if (!can.catalog()) {
    page("Streams", forms, h("p", {}, "Listing streams needs an admin token."));
    return;
  }
  const result = await api(`/admin/streams${query({ prefix, after, limit: 50 })}`, { signal });
  const rows = result.streams.map((s) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, streamLink(s.stream)),
      h("td", { class: "n" }, num(s.event_count)),
      h("td", { class: "n" }, num(s.last_revision)),
      h("td", { class: "n wide" }, bytes(s.bytes)),
      h("td", { class: "wide" }, when(s.last_appended_at)),
      h("td", {}, s.tombstoned ? "tombstoned" : s.deleted ? "deleted" : "live"),
    ),
  );
  const table = h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { id: "stream-table" },
      h("caption", {}, prefix ? `Streams starting with "${prefix}"` : "All streams, in name order"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Stream"),
          h("th", { scope: "col", class: "n" }, "Events"),
          h("th", { scope: "col", class: "n" }, "Last revision"),
          h("th", { scope: "col", class: "n wide" }, "Size"),
          h("th", { scope: "col", class: "wide" }, "Last append"),
          h("th", { scope: "col" }, "State"),
        ),
      ),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 6 }, "No streams."))),
    ),
  );
  const pager = h(
    "div",
    { class: "pager" },
    after ? h("a", { href: `#/streams${query({ prefix })}` }, "First page") : null,
    result.next_after
      ? h("a", { href: `#/streams${query({ prefix, after: result.next_after })}` }, "Next page")
      : null,
  );
  page("Streams", forms, table, pager);
}

// ---- One stream -------------------------------------------------------------------

function eventCard(e, showStream) {
  return h(
    "details",
    { class: "event", "data-position": e.position },
    h(
      "summary",
      {},
      showStream ? h("span", { class: "stream" }, e.stream) : null,
      h("span", { class: "rev" }, `#${e.revision}`),
      h("span", { class: "type" }, e.type),
      h("span", { class: "pos" }, `position ${num(e.position)}`),
      h("span", { class: "at" }, when(e.recorded_at)),
    ),
    h(
      "div",
      { class: "event-body" },
      definitionList([
        ["Id", e.id],
        ["Stream", streamLink(e.stream)],
      ]),
      h("h3", {}, "Data"),
      pretty(e.data),
      h("h3", {}, "Metadata"),
      e.metadata === null || e.metadata === undefined ? h("p", {}, "none") : pretty(e.metadata),
    ),
  );
}

/**
 * A newest-first list of events with "Older events" paging and a "Follow live"
 * toggle. `load(from)` reads one backward page; `live(after)` is the
 * subscription path for events after the newest one shown.
 */
function eventList({ load, live, showStream, signal }) {
  const list = h("div", { class: "events", id: "events", "aria-live": "off" });
  const status = h("p", { class: "muted", role: "status" });
  const more = h("button", { type: "button", hidden: true }, "Older events");
  const follow = h("input", { type: "checkbox", id: "follow-live" });
  let newest = null;
  let next = null;
  let liveAbort = null;

  const addOlder = (events) => list.append(...events.map((e) => eventCard(e, showStream)));
  const page = async (from) => {
    const r = await load(from, signal);
    if (r.events.length && newest === null) newest = r.events[0];
    addOlder(r.events);
    next = r.next;
    more.hidden = next === null || next === undefined;
    if (!list.childElementCount) status.textContent = "No events.";
    return r;
  };
  more.addEventListener("click", () => page(next).catch(showError));

  const stopLive = () => {
    liveAbort?.abort();
    liveAbort = null;
  };
  follow.addEventListener("change", async () => {
    if (!follow.checked) {
      stopLive();
      status.textContent = "";
      return;
    }
    liveAbort = new AbortController();
    const abort = liveAbort;
    signal.addEventListener("abort", () => abort.abort());
    status.textContent = "Following live…";
    try {
      for await (const line of subscribe(live(newest), abort.signal)) {
        if (line.type === "event") {
          newest = line.event;
          list.prepend(eventCard(line.event, showStream));
          if (status.textContent === "No events.") status.textContent = "Following live…";
        } else if (line.type === "caught_up") {
          status.textContent = "Following live: up to date.";
        } else if (line.type === "error") {
          status.textContent = `The subscription ended: ${line.message}`;
          follow.checked = false;
        }
      }
    } catch (err) {
      if (err?.name !== "AbortError") {
        follow.checked = false;
        showError(err);
      }
    }
  });

  const box = h(
    "section",
    { "aria-labelledby": "events-title" },
    h(
      "div",
      { class: "section-head" },
      h("h2", { id: "events-title" }, "Events, newest first"),
      h("div", { class: "toggle" }, follow, h("label", { for: "follow-live" }, "Follow live")),
    ),
    status,
    list,
    more,
  );
  return { box, start: () => page(undefined) };
}

async function streamPage(name, signal) {
  const sections = [];
  const meta = await api(streamPath(name, "/metadata"), { signal }).catch((err) => {
    if (err instanceof ApiError && err.status === 410) return null;
    throw err;
  });
  if (can.adminStream()) {
    const info = await api(`/admin/streams/${encodeURIComponent(name)}`, { signal }).catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    });
    if (info) {
      sections.push(
        h(
          "section",
          { "aria-labelledby": "stats-title" },
          h("h2", { id: "stats-title" }, "Stream"),
          definitionList([
            ["Events", num(info.event_count)],
            ["Revisions", `${num(info.first_revision)} – ${num(info.last_revision)}`],
            ["Size", bytes(info.bytes)],
            ["Created", when(info.created_at)],
            ["Last append", when(info.last_appended_at)],
            ["State", info.tombstoned ? "tombstoned" : info.deleted ? "deleted" : "live"],
          ]),
        ),
      );
    }
  }
  if (meta) sections.push(metadataSection(name, meta));
  if (can.adminStream()) sections.push(deleteSection(name));
  const events = eventList({
    showStream: false,
    signal,
    load: async (from, s) => {
      const r = await api(streamPath(name, query({ direction: "backward", limit: 20, from })), { signal: s });
      return { events: r.events, next: r.next_revision };
    },
    live: (newest) =>
      `/subscriptions/streams/${encodeURIComponent(name)}${query({ from: newest ? newest.revision + 1 : "end" })}`,
  });
  page(name, ...sections, events.box);
  await events.start().catch((err) => {
    if (err instanceof ApiError && (err.status === 404 || err.status === 410)) {
      events.box.querySelector('[role="status"]').textContent = err.message;
      return;
    }
    throw err;
  });
}

function metadataSection(name, meta) {
  const limits = [
    ["max_count", "Keep at most this many events"],
    ["max_age_secs", "Keep events younger than (seconds)"],
    ["truncate_before", "Hide revisions below"],
  ];
  const children = [
    h("h2", { id: "meta-title" }, "Limits and metadata"),
    definitionList([
      ["Max count", num(meta.max_count)],
      ["Max age (s)", num(meta.max_age_secs)],
      ["Truncate before", num(meta.truncate_before)],
    ]),
    h("h3", {}, "Custom metadata"),
    meta.custom === null ? h("p", {}, "none") : pretty(meta.custom),
  ];
  if (can.adminStream()) {
    const inputs = Object.fromEntries(
      limits.map(([key]) => [key, h("input", { type: "number", min: key === "max_count" ? 1 : 0, value: meta[key] ?? "" })]),
    );
    children.push(
      h(
        "form",
        {
          id: "limits-form",
          onsubmit: async (e) => {
            e.preventDefault();
            const body = { custom: meta.custom };
            for (const [key] of limits) {
              const v = inputs[key].value;
              body[key] = v === "" ? null : Number(v);
            }
            try {
              await api(streamPath(name, "/metadata"), { method: "PUT", body });
              say(`Saved the limits of ${name}.`);
              route();
            } catch (err) {
              showError(err);
            }
          },
        },
        h("h3", {}, "Edit limits"),
        h("div", { class: "inline" }, limits.map(([key, label]) => labelled(`limit-${key}`, label, inputs[key]))),
        h("p", { class: "muted" }, "Leave a field empty to remove that limit."),
        h("button", { type: "submit" }, "Save limits"),
      ),
    );
  }
  return h("section", { "aria-labelledby": "meta-title" }, children);
}

function deleteSection(name) {
  const confirm = h("input", { type: "text", autocomplete: "off" });
  const hard = h("input", { type: "checkbox", id: "delete-hard" });
  const button = h("button", { type: "submit", class: "danger", disabled: true }, "Delete stream");
  confirm.addEventListener("input", () => {
    button.disabled = confirm.value !== name;
  });
  return h(
    "section",
    { "aria-labelledby": "delete-title", class: "danger-zone" },
    h("h2", { id: "delete-title" }, "Delete"),
    h(
      "form",
      {
        id: "delete-form",
        onsubmit: async (e) => {
          e.preventDefault();
          if (confirm.value !== name) return;
          try {
            await api(streamPath(name, query({ hard: hard.checked ? "true" : "" })), { method: "DELETE" });
            carryNotice = true;
            say(`Deleted ${name}${hard.checked ? " for good (tombstone)" : ""}.`);
            location.hash = "#/streams";
          } catch (err) {
            showError(err);
          }
        },
      },
      h(
        "p",
        {},
        "A soft delete hides the stream's events; appending again continues its revisions. " +
          "A hard delete (tombstone) makes the name unusable forever.",
      ),
      h("div", { class: "toggle" }, hard, h("label", { for: "delete-hard" }, "Hard delete (tombstone)")),
      labelled("delete-confirm", `Type "${name}" to confirm`, confirm),
      button,
    ),
  );
}

// ---- $all -----------------------------------------------------------------------

async function allPage(params, signal) {
  const streamPrefix = params.get("stream_prefix") ?? "";
  const typePrefix = params.get("type_prefix") ?? "";
  const sp = h("input", { type: "text", value: streamPrefix, autocomplete: "off" });
  const tp = h("input", { type: "text", value: typePrefix, autocomplete: "off" });
  const filters = h(
    "form",
    {
      class: "inline",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        location.hash = `#/all${query({ stream_prefix: sp.value, type_prefix: tp.value })}`;
      },
    },
    labelled("filter-stream", "Stream prefix", sp),
    labelled("filter-type", "Type prefix", tp),
    h("button", { type: "submit" }, "Filter"),
  );
  let head = null;
  const events = eventList({
    showStream: true,
    signal,
    load: async (from, s) => {
      const r = await api(
        `/all${query({ direction: "backward", limit: 20, from, stream_prefix: streamPrefix, type_prefix: typePrefix })}`,
        { signal: s },
      );
      if (head === null) head = r.head_position;
      return { events: r.events, next: r.next_position };
    },
    live: (newest) => {
      const after = Math.max(newest?.position ?? -1, head ?? -1);
      return `/subscriptions/all${query({
        from: after + 1,
        stream_prefix: streamPrefix,
        type_prefix: typePrefix,
      })}`;
    },
  });
  page("$all", filters, events.box);
  await events.start();
}

// ---- Scavenge and verify ----------------------------------------------------------

const JOBS = [
  { kind: "scavenge", many: "scavenges", title: "Scavenge", dryRun: true },
  { kind: "verify", many: "verifies", title: "Verify", dryRun: false },
];

function jobProgress(job, eventCount) {
  if (job.phase === "compacting" && job.compaction_ranges) {
    return [job.compaction_ranges_done ?? 0, job.compaction_ranges, "compaction ranges"];
  }
  const done = job.events_scanned ?? job.events_checked;
  if (done !== undefined && eventCount) return [Math.min(done, eventCount), eventCount, "events"];
  return null;
}

function jobCounters(job) {
  const keys = [
    "streams_scanned",
    "events_scanned",
    "events_removed",
    "bytes_reclaimed",
    "events_checked",
    "index_entries_checked",
    "problems_found",
  ];
  return keys.filter((k) => job[k] !== undefined && job[k] !== null).map((k) => [k.replaceAll("_", " "), num(job[k])]);
}

async function jobsPage(signal) {
  if (!can.serverAdmin()) {
    page("Scavenge & verify", h("p", {}, "Scavenge and verify need an admin token not limited to stream prefixes."));
    return;
  }
  const panels = JOBS.map((spec) => {
    const current = h("div", { class: "job-current", id: `${spec.kind}-current` });
    const history = h("div", { class: "scroll", id: `${spec.kind}-history` });
    const dry = h("input", { type: "checkbox", checked: spec.dryRun });
    const start = h(
      "form",
      {
        class: "inline",
        onsubmit: async (e) => {
          e.preventDefault();
          try {
            const q = spec.dryRun ? query({ dry_run: dry.checked ? "true" : "" }) : "";
            const started = await api(`/admin/${spec.kind}${q}`, { method: "POST" });
            say(`${spec.title} ${started.id} started.`);
            await refresh();
          } catch (err) {
            showError(err);
          }
        },
      },
      spec.dryRun ? h("div", { class: "toggle" }, dry, h("label", { for: `${spec.kind}-dry` }, "Dry run")) : null,
      h("button", { type: "submit", id: `${spec.kind}-start` }, `Start ${spec.title.toLowerCase()}`),
    );
    dry.id = `${spec.kind}-dry`;
    const section = h(
      "section",
      { "aria-labelledby": `${spec.kind}-title` },
      h("h2", { id: `${spec.kind}-title` }, spec.title),
      start,
      current,
      h("h3", {}, "History"),
      history,
    );
    return { spec, section, current, history };
  });

  const refresh = async () => {
    const stats = await api("/admin/stats", { signal });
    for (const p of panels) {
      const list = (await api(`/admin/${p.spec.many}`, { signal }))[p.spec.many];
      const running = list.find((j) => j.result === "running");
      if (running) {
        const progress = jobProgress(running, stats.event_count);
        const bar = h("progress", {
          id: `${p.spec.kind}-progress`,
          "aria-label": `${p.spec.title} progress`,
          max: progress ? progress[1] : null,
          value: progress ? progress[0] : null,
        });
        p.current.replaceChildren(
          h("p", {}, `Running: ${running.id}, phase ${running.phase}${running.dry_run ? " (dry run)" : ""}`),
          bar,
          progress ? h("p", { class: "muted" }, `${num(progress[0])} of ${num(progress[1])} ${progress[2]}`) : null,
          definitionList(jobCounters(running)),
          h(
            "button",
            {
              type: "button",
              class: "danger",
              onclick: async () => {
                try {
                  await api(`/admin/${p.spec.kind}/${encodeURIComponent(running.id)}`, { method: "DELETE" });
                  say(`Asked ${p.spec.kind} ${running.id} to stop.`);
                  await refresh();
                } catch (err) {
                  showError(err);
                }
              },
            },
            "Cancel",
          ),
        );
      } else {
        p.current.replaceChildren(h("p", { class: "muted" }, `No ${p.spec.kind} is running.`));
      }
      const rows = list.map((j) =>
        h(
          "tr",
          { "data-result": j.result },
          h("td", {}, when(j.started_at)),
          h("td", {}, j.result + (j.dry_run ? " (dry run)" : "")),
          h("td", {}, j.phase),
          h("td", { class: "wide" }, jobCounters(j).map(([k, v]) => `${k}: ${v}`).join(", ")),
          h("td", {}, j.error ?? ""),
        ),
      );
      p.history.replaceChildren(
        h(
          "table",
          {},
          h("caption", {}, `The last ${p.spec.many}, newest first`),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Started", "Result", "Phase", "Counters", "Error"].map((c) =>
                h("th", { scope: "col", class: c === "Counters" ? "wide" : null }, c),
              ),
            ),
          ),
          h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: 5 }, "None yet."))),
        ),
      );
    }
  };
  page("Scavenge & verify", ...panels.map((p) => p.section));
  await refresh();
  every(1000, refresh, signal);
}

// ---- Router --------------------------------------------------------------------------

async function route() {
  pageAbort.abort();
  pageAbort = new AbortController();
  const signal = pageAbort.signal;
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs = ""] = raw.split("?");
  const params = new URLSearchParams(qs);
  const parts = path.split("/").filter(Boolean);
  const section = parts[0] ?? "dashboard";
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (section === "dashboard") await dashboard(signal);
    else if (section === "streams" && parts.length > 1) await streamPage(decodeURIComponent(parts.slice(1).join("/")), signal);
    else if (section === "streams") await streams(params, signal);
    else if (section === "all") await allPage(params, signal);
    else if (section === "jobs") await jobsPage(signal);
    else page("Not found", h("p", {}, "There is no such page."), h("a", { href: "#/" }, "To the dashboard"));
    document.title = `${document.getElementById("page-title")?.textContent ?? "Skald"} · Skald console`;
  } catch (err) {
    showError(err);
  }
}

let lastHash = location.hash;
window.addEventListener("hashchange", () => {
  // A new page clears the last page's message, unless the message is about
  // the move itself (a delete that returns to the list).
  if (location.hash !== lastHash && !carryNotice) clearNotice();
  carryNotice = false;
  lastHash = location.hash;
  route().then(() => document.getElementById("page-title")?.focus());
});

async function boot() {
  try {
    await loadWho();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      setToken(null);
      await askToken();
      return;
    }
    showError(err);
    return;
  }
  await route();
}

boot();
