// The console's one way to talk to the server: the HTTP API, with the
// session's token, errors as ApiError, and subscriptions read as SSE over
// fetch (EventSource cannot send an Authorization header).

const TOKEN_KEY = "skald.token";

/** A non-2xx answer: `status`, the API's `code` and its `message`. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const out = { ...extra };
  const t = token();
  if (t) out.authorization = `Bearer ${t}`;
  return out;
}

async function failure(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    // not JSON: keep the status alone
  }
  return new ApiError(res.status, body?.error ?? "http_error", body?.message ?? `HTTP ${res.status}`);
}

/** One request; the parsed JSON answer, or null for 204. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

/** A query string from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The path of a stream resource, its name encoded as one segment. */
export function streamPath(name, rest = "") {
  return `/streams/${encodeURIComponent(name)}${rest}`;
}

/**
 * Follows a subscription: yields each line's object (event, caught_up,
 * checkpoint, heartbeat, fell_behind, error) until `signal` aborts or the
 * server ends it.
 */
export async function* subscribe(path, signal) {
  const res = await fetch(path, { signal, headers: headers({ accept: "text/event-stream" }) });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}
