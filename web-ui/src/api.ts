// The admin API, with the token from this tab's session storage.

const TOKEN_KEY = 'kcpgate.adminToken';

export function token(): string {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

export function setToken(value: string): void {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export function authHeaders(): Record<string, string> {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

/** A field the API named as wrong. */
export interface FieldError {
  field: string;
  message: string;
}

/** An error answer (RFC 9457 problem details) or a failed request. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly fields: FieldError[] = [],
  ) {
    super(message);
  }
}

/** Called when the API says the token is missing or wrong. */
let onUnauthorized: () => void = () => {};
export function whenUnauthorized(handler: () => void): void {
  onUnauthorized = handler;
}

/** Calls the API and returns its JSON, or throws an {@link ApiError} with the API's own words. */
export async function call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      signal,
      headers: { ...authHeaders(), ...(body === undefined ? {} : { 'Content-Type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, `the gateway did not answer (${(e as Error).message}): is it running?`);
  }
  if (response.status === 401) onUnauthorized();
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    let fields: FieldError[] = [];
    try {
      const problem = await response.json();
      detail = problem.detail ?? detail;
      fields = Array.isArray(problem.errors) ? problem.errors : [];
    } catch {
      // not problem+json: the status says it
    }
    throw new ApiError(response.status, detail, fields);
  }
  if (response.status === 204) return undefined as T;
  return (await response.json()) as T;
}

export const get = <T>(path: string, signal?: AbortSignal) => call<T>('GET', path, undefined, signal);
