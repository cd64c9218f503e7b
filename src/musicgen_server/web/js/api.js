// The HTTP API, as the page needs it: one place that adds the API key, turns every failure
// into plain words, and reads the server-sent event stream (through fetch, so the key can
// travel in a header instead of the URL).

const KEY_STORAGE = "musicgen.apiKey";

export class ApiError extends Error {
  constructor(status, message, fields = {}, retryAfter = null) {
    super(message);
    this.status = status;
    this.fields = fields; // field name -> message, for validation errors
    this.retryAfter = retryAfter; // seconds, for 429
  }
}

/** The server could not be reached at all (it went away, or the network did). */
export class Unreachable extends Error {}

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  const key = getKey();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function send(method, path, body, options = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = typeof body === "string" ? body : JSON.stringify(body);
  if (options.signal) init.signal = options.signal;
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new Unreachable("The server is not answering.");
  }
  if (!response.ok) throw await toError(response);
  return response;
}

export async function request(method, path, body) {
  const response = await send(method, path, body);
  if (response.status === 204) return null;
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

const FIELD_NAMES = {
  guidance_scale: "guidance", top_k: "top-k", top_p: "top-p",
};

/** FastAPI-style `detail` (a string, or a list of {loc, msg}) into one sentence plus per-field messages. */
export function parseDetail(detail) {
  const fields = {};
  if (typeof detail === "string") return { message: detail, fields };
  if (Array.isArray(detail)) {
    const parts = [];
    for (const item of detail) {
      const loc = Array.isArray(item.loc) ? item.loc.filter((p) => p !== "body") : [];
      const field = loc.length ? String(loc[loc.length - 1]) : "";
      const text = item.msg || item.message || String(item);
      if (field) fields[field] = text;
      parts.push(field ? `${FIELD_NAMES[field] || field}: ${text}` : text);
    }
    return { message: parts.join("; "), fields };
  }
  if (detail && typeof detail === "object") {
    return { message: detail.message || detail.detail || JSON.stringify(detail), fields };
  }
  return { message: "", fields };
}

async function toError(response) {
  let payload = null;
  try {
    payload = await response.json();
  } catch {
    payload = null;
  }
  const { message, fields } = parseDetail(payload && (payload.detail ?? payload.error ?? payload.message));
  for (const problem of (payload && payload.errors) || []) {
    if (problem.field && problem.field !== "body") fields[problem.field] = problem.message;
  }
  const retry = Number.parseFloat(response.headers.get("Retry-After"));
  return new ApiError(response.status, message || `${response.status} ${response.statusText}`, fields,
    Number.isFinite(retry) ? retry : null);
}

/** Plain words for any failure, for the place on the page that caused it. */
export function describe(error) {
  if (error instanceof Unreachable) return "The server is not answering. Is it still running?";
  if (error instanceof ApiError) {
    if (error.status === 429) {
      const wait = error.retryAfter != null ? ` Try again in ${Math.ceil(error.retryAfter)} s.` : " Try again shortly.";
      return `The server is busy: its queue is full.${wait}`;
    }
    if (error.status === 401) return getKey() ? "That API key was not accepted." : "This server needs an API key.";
    if (error.status === 503) return `The server cannot take this now: ${error.message}`;
    return error.message;
  }
  return String(error && error.message ? error.message : error);
}

/** Server-sent events as parsed JSON objects, until the stream ends or `signal` aborts. */
export async function* events(path, signal) {
  const response = await send("GET", path, undefined, { signal });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      const name = (block.split(/\r?\n/).find((l) => l.startsWith("event:")) || "").slice(6).trim();
      if (!data) continue;
      try {
        yield { event: name || "message", data: JSON.parse(data) };
      } catch {
        yield { event: name || "message", data };
      }
    }
  }
}

/** Audio bytes (for the waveform, and for playback when a key is needed). */
export async function fetchBytes(path) {
  const response = await send("GET", path);
  return response.arrayBuffer();
}

export function needsKeyForAudio() {
  return Boolean(getKey());
}
