// ryze-events reference client: one dependency-free ES module for browsers and Node.
//
// It opens `GET /ws/<instance>?token=…` with the platform's `WebSocket` (browsers; Node 22+,
// or Node 20 with `--experimental-websocket`), reconnects with exponential backoff and full
// jitter, resumes with `since` (SPEC §5.7), hands `stream.gap` frames to the application and
// reports every close code. Documentation: docs/clients.md.
//
//   import { connect } from "./ryze-events.js";
//   const stream = connect({
//     url: "wss://events.example.com",
//     instance: "sales",
//     token: "…",
//     onEvent(frame) { console.log(frame.event, frame.data); },
//     onGap({ since }) { /* catch up over REST */ },
//     onState(state, detail) { console.log(state, detail); },
//   });
//   // later
//   stream.close();

/** Default reconnect policy (SPEC §5.6: 1 s doubling, 30 s cap, jitter). */
export const DEFAULTS = Object.freeze({
  /** First backoff ceiling, ms. */
  baseDelayMs: 1000,
  /** Largest backoff ceiling, ms. */
  maxDelayMs: 30000,
  /** A connection that stayed open this long (ms) resets the attempt counter. */
  stableAfterMs: 30000,
});

/** The event name of the gap frame (SPEC §5.7). */
export const GAP_EVENT = "stream.gap";

/**
 * A frame as the gateway sent it: `{event, data, instanceData, offset?}`.
 * `offset` is present only on resumable connections (`since`), as the last key.
 * @typedef {{event: string, data: any, instanceData?: {baseUrl?: string, instance?: string, token?: string}, offset?: string}} Frame
 */

/**
 * What `onGap` receives.
 * @typedef {object} GapInfo
 * @property {string|undefined} since The offset the client resumed from (`data.since`).
 * @property {Frame} frame The whole `stream.gap` frame.
 */

/**
 * The `detail` of each `onState` call, by state:
 * - `"connecting"`: `{attempt, since}`; `since` is `"now"`, an offset, or `null` (resume off).
 * - `"open"`: `{since}`.
 * - `"closed"`: `{code, reason, wasClean, opened, willRetry, delayMs, attempt}`; `delayMs` is
 *   the wait before the next attempt (`null` when `willRetry` is false). A refused upgrade
 *   (any HTTP status before the 101) shows as `code` 1006 with `opened: false`: browsers hide
 *   the HTTP status from scripts, so the client cannot tell a 401 from a network failure and
 *   keeps retrying with backoff.
 *   After `stream.close()` it is reported at once with code 1000 `"closed by client"`.
 * - `"stopped"`: `{reason}`, `"closed by client"` or the server's final reason
 *   (`"instance deleted"`). Emitted once; nothing happens after it.
 * @typedef {"connecting"|"open"|"closed"|"stopped"} State
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} url Gateway base URL: `wss://host`, `ws://host:8080`, or `https://host`
 *   (http(s) is turned into ws(s)); a path prefix is kept (`wss://host/events`).
 * @property {string} instance The instance name (percent-encoded into the path).
 * @property {string} [token] TokenInstance or TokenAccount, sent as `?token=` (browsers cannot
 *   set WebSocket headers).
 * @property {boolean} [resume=true] Send `since=now` first, then `since=<last offset>` on
 *   reconnects, so nothing published while disconnected is lost (SPEC §5.7).
 * @property {string} [since] With `resume`, an offset saved earlier (e.g. before a page reload)
 *   to resume from on the first connect instead of `now`.
 * @property {(frame: Frame) => void} [onEvent] Every frame except `stream.gap`.
 * @property {(info: GapInfo) => void} [onGap] The gateway no longer holds everything after
 *   `since`: catch up over REST. Frames after it follow through `onEvent`.
 * @property {(state: State, detail: object) => void} [onState] Connection state changes.
 * @property {(error: Error, data?: any) => void} [onError] A frame that is not a JSON object
 *   (`data` is the frame), an exception thrown by a callback, or by the WebSocket constructor
 *   (e.g. a browser's SecurityError for `ws:` from an `https:` page; retried like a 1006).
 *   Without it, bad frames are dropped and exceptions are rethrown asynchronously (like an
 *   event listener's).
 * @property {(code: number, reason: string) => boolean} [shouldReconnect] Override the
 *   reconnect decision (default {@link shouldReconnect}).
 * @property {number} [baseDelayMs=1000]
 * @property {number} [maxDelayMs=30000]
 * @property {number} [stableAfterMs=30000]
 * @property {typeof WebSocket} [WebSocket] Constructor to use (default `globalThis.WebSocket`).
 * @property {typeof setTimeout} [setTimeout] Injected for tests.
 * @property {typeof clearTimeout} [clearTimeout] Injected for tests.
 * @property {() => number} [random] In [0, 1); injected for tests (default `Math.random`).
 * @property {() => number} [now] Milliseconds; injected for tests (default `Date.now`).
 */

/**
 * The stream handle returned by {@link connect}.
 * @typedef {object} Stream
 * @property {() => void} close Stops for good: closes the socket (1000) and cancels any
 *   pending reconnect.
 * @property {string|null} lastOffset The last offset seen (`null` before the first one; frames
 *   carry offsets only on resumable connections). Save it to resume after a page reload
 *   (`since` option).
 * @property {State|"waiting"} state `"waiting"` between a close and the next attempt.
 * @property {number} attempt Consecutive failed attempts (drives the backoff).
 */

/**
 * The WebSocket URL of `/ws/<instance>`.
 * @param {string} base Gateway base URL (ws, wss, http or https; a path prefix is kept).
 * @param {string} instance Instance name.
 * @param {string} [token]
 * @param {string|null} [since] `"now"`, an offset, or null/undefined for none.
 * @returns {string}
 */
export function buildUrl(base, instance, token, since) {
  const u = new URL(base);
  if (u.protocol === "http:") u.protocol = "ws:";
  else if (u.protocol === "https:") u.protocol = "wss:";
  else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`ryze-events: unsupported URL scheme ${u.protocol}`);
  }
  const prefix = u.pathname.replace(/\/+$/, "");
  const params = [];
  if (token != null && token !== "") params.push(`token=${encodeURIComponent(token)}`);
  if (since != null) params.push(`since=${encodeURIComponent(since)}`);
  const query = params.length ? `?${params.join("&")}` : "";
  return `${u.protocol}//${u.host}${prefix}/ws/${encodeURIComponent(instance)}${query}`;
}

/**
 * Full-jitter backoff: a uniform delay in [0, min(max, base·2^attempt)).
 * @param {number} attempt 0 for the first retry.
 * @param {{baseDelayMs?: number, maxDelayMs?: number, random?: () => number}} [opts]
 * @returns {number} milliseconds (integer)
 */
export function backoffDelay(attempt, opts = {}) {
  const base = opts.baseDelayMs ?? DEFAULTS.baseDelayMs;
  const max = opts.maxDelayMs ?? DEFAULTS.maxDelayMs;
  const random = opts.random ?? Math.random;
  const ceiling = Math.min(max, base * 2 ** Math.min(Math.max(attempt, 0), 30));
  return Math.floor(random() * ceiling);
}

/**
 * The default reconnect decision (SPEC §5.5): everything is retried except 1008
 * `instance deleted`, which will not get better. 1001 (`server shutting down`, `rebalancing`,
 * `pong timeout`), 1006 (network loss, refused upgrade), 1011 (`internal error`) and 1008
 * `slow consumer` are retried.
 * @param {number} code
 * @param {string} reason
 * @returns {boolean}
 */
export function shouldReconnect(code, reason) {
  return !(code === 1008 && reason === "instance deleted");
}

/**
 * Opens a stream of an instance's events; reconnects until {@link Stream.close} or a close
 * that {@link shouldReconnect} refuses.
 * @param {ConnectOptions} options
 * @returns {Stream}
 */
export function connect(options) {
  const o = options ?? {};
  if (typeof o.url !== "string" || !o.url) throw new TypeError("ryze-events: url is required");
  if (typeof o.instance !== "string" || !o.instance) {
    throw new TypeError("ryze-events: instance is required");
  }
  buildUrl(o.url, o.instance, o.token, null); // validate the URL now, not on every attempt
  const WS = o.WebSocket ?? globalThis.WebSocket;
  if (typeof WS !== "function") {
    throw new TypeError(
      "ryze-events: no WebSocket constructor (Node 20 needs --experimental-websocket; or pass options.WebSocket)",
    );
  }
  const resume = o.resume !== false;
  const policy = {
    baseDelayMs: o.baseDelayMs ?? DEFAULTS.baseDelayMs,
    maxDelayMs: o.maxDelayMs ?? DEFAULTS.maxDelayMs,
    random: o.random ?? Math.random,
  };
  const stableAfterMs = o.stableAfterMs ?? DEFAULTS.stableAfterMs;
  const setT = o.setTimeout ?? ((fn, ms) => globalThis.setTimeout(fn, ms));
  const clearT = o.clearTimeout ?? ((t) => globalThis.clearTimeout(t));
  const now = o.now ?? Date.now;
  const retryDecision = o.shouldReconnect ?? shouldReconnect;

  /** @type {WebSocket|null} */
  let socket = null;
  /** `{opened, openedAt}` of `socket`. */
  let current = { opened: false, openedAt: 0 };
  let timer = null;
  let stopped = false;
  let state = "connecting";
  let attempt = 0;
  let lastOffset = resume && typeof o.since === "string" && o.since ? o.since : null;

  const fail = (err, data) => {
    if (o.onError) {
      try {
        o.onError(err, data);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    } else {
      queueMicrotask(() => {
        throw err;
      });
    }
  };
  // A frame that is not a JSON object: reported to onError if given, else dropped.
  const badFrame = (err, data) => {
    if (o.onError) call(o.onError, err, data);
  };
  const call = (fn, ...args) => {
    if (!fn) return;
    try {
      fn(...args);
    } catch (err) {
      fail(err);
    }
  };
  const setState = (next, detail) => {
    state = next;
    call(o.onState, next, detail);
  };
  const stop = (reason) => {
    if (state === "stopped") return;
    setState("stopped", { reason });
  };

  function open() {
    timer = null;
    if (stopped) return;
    const since = resume ? (lastOffset ?? "now") : null;
    setState("connecting", { attempt, since });
    if (stopped) return; // onState called close()
    let sock;
    try {
      sock = new WS(buildUrl(o.url, o.instance, o.token, since));
    } catch (err) {
      fail(err);
      closed({ code: 1006, reason: "", wasClean: false }, { opened: false, openedAt: 0 });
      return;
    }
    socket = sock;
    sock.binaryType = "arraybuffer";
    const conn = { opened: false, openedAt: 0 };
    current = conn;
    sock.onopen = () => {
      if (socket !== sock) return;
      conn.opened = true;
      conn.openedAt = now();
      setState("open", { since });
    };
    sock.onmessage = (ev) => {
      if (socket !== sock || stopped) return;
      receive(ev.data);
    };
    // Browsers give no detail on errors (not even the HTTP status of a refused upgrade) and
    // follow every error with a close event. Node 20's WebSocket (undici) fires no close event
    // after a refused upgrade, so an error before the open counts as the close (1006) here, and
    // a close event that may still follow is ignored.
    sock.onerror = () => {
      if (socket !== sock || conn.opened) return;
      socket = null;
      try {
        sock.close();
      } catch (_) {
        /* already failed */
      }
      closed({ code: 1006, reason: "", wasClean: false }, conn);
    };
    sock.onclose = (ev) => {
      if (socket !== sock) return;
      socket = null;
      closed(ev, conn);
    };
  }

  function closed(ev, conn) {
    const code = typeof ev.code === "number" ? ev.code : 1006;
    const reason = typeof ev.reason === "string" ? ev.reason : "";
    const opened = conn.opened;
    if (opened && now() - conn.openedAt >= stableAfterMs) attempt = 0;
    const retry = !stopped && retryDecision(code, reason);
    const delayMs = retry ? backoffDelay(attempt, policy) : null;
    const detail = {
      code,
      reason,
      wasClean: ev.wasClean === true,
      opened,
      willRetry: retry,
      delayMs,
      attempt,
    };
    if (!retry) {
      const byClient = stopped;
      stopped = true;
      setState("closed", detail);
      stop(byClient ? "closed by client" : reason || `closed with ${code}`);
      return;
    }
    attempt += 1;
    timer = setT(open, delayMs);
    setState("closed", detail);
    // Unless onState just called close(), wait for the timer.
    if (!stopped) state = "waiting";
  }

  function receive(data) {
    if (typeof data !== "string") {
      badFrame(new TypeError("ryze-events: unexpected binary frame"), data);
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch (err) {
      badFrame(err, data);
      return;
    }
    if (frame === null || typeof frame !== "object" || Array.isArray(frame)) {
      badFrame(new TypeError("ryze-events: frame is not a JSON object"), data);
      return;
    }
    // A delivered frame proves the connection works: the next failure starts at 1 s again.
    attempt = 0;
    if (frame.event === GAP_EVENT) {
      call(o.onGap, { since: frame.data?.since, frame });
      return;
    }
    if (typeof frame.offset === "string") {
      // Defensive: the gateway promises no duplicate at the resume seam; drop one if seen.
      if (frame.offset === lastOffset) return;
      lastOffset = frame.offset;
    }
    call(o.onEvent, frame);
  }

  const stream = {
    close() {
      if (stopped) return;
      stopped = true;
      if (timer !== null) {
        clearT(timer);
        timer = null;
      }
      if (socket) {
        // Reported now rather than on the close event, which not every platform fires (Node
        // 20 fires none for a socket closed while connecting); later events are ignored.
        const sock = socket;
        socket = null;
        try {
          sock.close(1000, "closed by client");
        } catch (_) {
          /* already closing */
        }
        closed({ code: 1000, reason: "closed by client", wasClean: true }, current);
      } else {
        stop("closed by client");
      }
    },
    get lastOffset() {
      return lastOffset;
    },
    get state() {
      return state;
    },
    get attempt() {
      return attempt;
    },
  };
  open();
  return stream;
}
