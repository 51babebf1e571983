// A stand-in for the platform WebSocket, driven by the tests: no network.

export class FakeWebSocket {
  /** Every socket created, in order. */
  static instances = [];

  static reset() {
    FakeWebSocket.instances = [];
  }

  /** The most recent socket. */
  static get last() {
    return FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
  }

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.binaryType = "blob";
    this.closedByClient = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeWebSocket.instances.push(this);
  }

  /** Client side: what the code under test calls. */
  close(code = 1005, reason = "") {
    if (this.readyState >= 2) return;
    this.closedByClient = { code, reason };
    this.readyState = 2;
    // Real sockets report the close asynchronously.
    queueMicrotask(() => this.serverClose(code, reason, true));
  }

  send() {
    throw new Error("the client must not send");
  }

  // Server side: what the tests call.
  open() {
    this.readyState = 1;
    this.onopen?.({ type: "open" });
  }

  message(data) {
    this.onmessage?.({ type: "message", data: typeof data === "string" ? data : JSON.stringify(data) });
  }

  binary(bytes) {
    this.onmessage?.({ type: "message", data: bytes });
  }

  serverClose(code, reason = "", wasClean = true) {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ type: "close", code, reason, wasClean });
  }

  /** A refused upgrade or a network failure, as browsers report it. */
  fail() {
    this.onerror?.({ type: "error" });
    this.serverClose(1006, "", false);
  }
}

/** Timers under the test's control: nothing fires until `run`. */
export class FakeTimers {
  constructor() {
    this.pending = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.pending.set(id, { fn, ms });
      return id;
    };
    this.clearTimeout = (id) => {
      this.pending.delete(id);
    };
  }

  /** Delays of the pending timers. */
  get delays() {
    return [...this.pending.values()].map((t) => t.ms);
  }

  /** Fires every pending timer (not those they schedule). */
  runAll() {
    const due = [...this.pending.entries()];
    this.pending.clear();
    for (const [, t] of due) t.fn();
  }
}

/** A deterministic random in [0, 1) (mulberry32). */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
