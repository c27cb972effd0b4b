// JSON API calls with the contract's errors ({"error", "code"}) as ApiError.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** `?access=` of the page, passed on to the API and WHEP (private streams). */
export function accessToken() {
  return new URLSearchParams(location.search).get('access') || null;
}

export function withQuery(url, query) {
  const u = new URL(url, location.origin);
  for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined) u.searchParams.set(k, v);
  return u.pathname + u.search;
}

/** Turns a non-2xx response into an ApiError, using the server's sentence. */
export async function errorFrom(resp) {
  let code = `http_${resp.status}`;
  let message = `the server answered ${resp.status} ${resp.statusText || ''}`.trim();
  try {
    const j = JSON.parse(await resp.text());
    if (j && typeof j.error === 'string') message = j.error;
    if (j && typeof j.code === 'string') code = j.code;
  } catch {
    // Not JSON: keep the status line.
  }
  const ra = Number(resp.headers.get('Retry-After'));
  return new ApiError(resp.status, code, message, Number.isFinite(ra) && ra > 0 ? ra : null);
}

export async function api(path, { method = 'GET', body, token, signal } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  } catch (e) {
    if (e && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Could not reach the server. Check your connection.');
  }
  if (!resp.ok) throw await errorFrom(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : null;
}

export const streamPath = (name) => `/api/v1/streams/${encodeURIComponent(name)}`;
