// Unit tests of the reference client with a fake WebSocket and fake timers (no network).
// Run: node --test clients/js/test/

import { test, beforeEach } from "node:test";
import assert from "node:assert/strict";

import { backoffDelay, buildUrl, connect, DEFAULTS, shouldReconnect } from "../ryze-events.js";
import { FakeTimers, FakeWebSocket, seededRandom } from "./fake-websocket.js";

const frame = (seq, offset) => ({
  event: "message.status",
  data: { seq },
  instanceData: { baseUrl: "https://api.example.com", instance: "sales", token: "t" },
  ...(offset === undefined ? {} : { offset }),
});
const gap = (since) => ({
  event: "stream.gap",
  data: { since },
  instanceData: { baseUrl: "https://api.example.com", instance: "sales", token: "t" },
});
const flush = () => new Promise((resolve) => setImmediate(resolve));

/** A client on fakes; `log` records every callback. */
function harness(extra = {}) {
  const timers = new FakeTimers();
  let clock = 0;
  const log = { events: [], gaps: [], states: [], errors: [] };
  const stream = connect({
    url: "wss://gw.example.com",
    instance: "sales",
    token: "tok",
    WebSocket: FakeWebSocket,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
    now: () => clock,
    onEvent: (f) => log.events.push(f),
    onGap: (g) => log.gaps.push(g),
    onState: (s, d) => log.states.push([s, d]),
    onError: (e) => log.errors.push(e),
    ...extra,
  });
  return { stream, timers, log, advance: (ms) => (clock += ms) };
}

const closes = (log) => log.states.filter(([s]) => s === "closed").map(([, d]) => d);

beforeEach(() => FakeWebSocket.reset());

test("buildUrl percent-encodes the instance, token and since, keeps a path prefix", () => {
  assert.equal(buildUrl("wss://h", "sales", "tok"), "wss://h/ws/sales?token=tok");
  assert.equal(
    buildUrl("https://h:8443/events/", "Loja Centro/ç?#", "a&b=c+d", "1733512345678-0"),
    "wss://h:8443/events/ws/Loja%20Centro%2F%C3%A7%3F%23?token=a%26b%3Dc%2Bd&since=1733512345678-0",
  );
  assert.equal(buildUrl("http://127.0.0.1:8080", "x", "t", "now"), "ws://127.0.0.1:8080/ws/x?token=t&since=now");
  assert.equal(buildUrl("ws://h", "x", undefined, null), "ws://h/ws/x");
  assert.throws(() => buildUrl("ftp://h", "x", "t"), TypeError);
});

test("connect validates its options", () => {
  assert.throws(() => connect({ instance: "x", WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => connect({ url: "wss://h", WebSocket: FakeWebSocket }), TypeError);
  assert.throws(() => connect({ url: "not a url", instance: "x", WebSocket: FakeWebSocket }), TypeError);
});

test("resume: since=now first, since=<last offset> on reconnects", () => {
  const { stream, timers } = harness({ instance: "Loja Centro" });
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/Loja%20Centro?token=tok&since=now");
  // A reconnect before any offset was seen still asks for now.
  FakeWebSocket.last.fail();
  timers.runAll();
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/Loja%20Centro?token=tok&since=now");
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(1, "1733512345678-0"));
  FakeWebSocket.last.message(frame(2, "1733512345678-1"));
  assert.equal(stream.lastOffset, "1733512345678-1");
  FakeWebSocket.last.serverClose(1001, "server shutting down");
  timers.runAll();
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/Loja%20Centro?token=tok&since=1733512345678-1");
  stream.close();
});

test("resume: a saved offset is used on the first connect", () => {
  harness({ since: "42-7" });
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/sales?token=tok&since=42-7");
});

test("resume: false sends no since, ever", () => {
  const { timers, stream } = harness({ resume: false, since: "42-7" });
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/sales?token=tok");
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(1));
  FakeWebSocket.last.serverClose(1006, "", false);
  timers.runAll();
  assert.equal(FakeWebSocket.last.url, "wss://gw.example.com/ws/sales?token=tok");
  assert.equal(stream.lastOffset, null);
});

test("backoffDelay: full jitter between 0 and min(30 s, 1 s·2^attempt)", () => {
  const ceilings = [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000];
  ceilings.forEach((ceiling, attempt) => {
    assert.equal(backoffDelay(attempt, { random: () => 0 }), 0);
    assert.equal(backoffDelay(attempt, { random: () => 0.999999 }), ceiling - 1);
    assert.equal(backoffDelay(attempt, { random: () => 0.5 }), ceiling / 2);
  });
  assert.equal(backoffDelay(10_000, { random: () => 0.999999 }), DEFAULTS.maxDelayMs - 1);
  // Seeded: every delay in range, and spread out (not all at the ceiling or at zero).
  const random = seededRandom(17);
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(30000, 1000 * 2 ** attempt);
    const delays = Array.from({ length: 200 }, () => backoffDelay(attempt, { random }));
    assert.ok(delays.every((d) => Number.isInteger(d) && d >= 0 && d < ceiling), `attempt ${attempt}`);
    const mean = delays.reduce((a, b) => a + b, 0) / delays.length;
    assert.ok(mean > ceiling * 0.35 && mean < ceiling * 0.65, `attempt ${attempt}: mean ${mean} of ${ceiling}`);
  }
});

test("reconnect delays grow 1, 2, 4 … 30 s (random 0.5 gives half the ceiling) and stay capped", () => {
  const { timers, log, stream } = harness();
  const seen = [];
  for (let i = 0; i < 8; i++) {
    FakeWebSocket.last.fail();
    assert.deepEqual(timers.delays.length, 1);
    seen.push(timers.delays[0]);
    assert.equal(stream.state, "waiting");
    timers.runAll();
    assert.equal(stream.state, "connecting");
  }
  assert.deepEqual(seen, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
  assert.equal(stream.attempt, 8);
  const last = closes(log).at(-1);
  assert.deepEqual(last, { code: 1006, reason: "", wasClean: false, opened: false, willRetry: true, delayMs: 15000, attempt: 7 });
});

test("seeded random and injected timers: every scheduled delay is within its bound", () => {
  const random = seededRandom(4242);
  const { timers } = harness({ random });
  for (let attempt = 0; attempt < 20; attempt++) {
    FakeWebSocket.last.fail();
    const [delay] = timers.delays;
    assert.ok(delay >= 0 && delay < Math.min(30000, 1000 * 2 ** attempt), `attempt ${attempt}: ${delay}`);
    timers.runAll();
  }
});

test("the attempt counter resets after a frame or a long-enough open connection", () => {
  const { timers, stream, advance } = harness();
  for (let i = 0; i < 4; i++) {
    FakeWebSocket.last.fail();
    timers.runAll();
  }
  assert.equal(stream.attempt, 4);
  // Open but short-lived, no frame: still backing off.
  FakeWebSocket.last.open();
  advance(1000);
  FakeWebSocket.last.serverClose(1011, "internal error");
  assert.deepEqual(timers.delays, [8000]);
  timers.runAll();
  // A frame resets it.
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(1));
  assert.equal(stream.attempt, 0);
  FakeWebSocket.last.serverClose(1001, "rebalancing");
  assert.deepEqual(timers.delays, [500]);
  timers.runAll();
  for (let i = 0; i < 3; i++) {
    FakeWebSocket.last.fail();
    timers.runAll();
  }
  // Open for the stable period without frames: reset too.
  FakeWebSocket.last.open();
  advance(DEFAULTS.stableAfterMs);
  FakeWebSocket.last.serverClose(1006, "", false);
  assert.deepEqual(timers.delays, [500]);
});

test("retried close codes: 1001, 1006, 1011 and 1008 slow consumer", () => {
  for (const [code, reason] of [
    [1001, "server shutting down"],
    [1001, "rebalancing"],
    [1006, ""],
    [1011, "internal error"],
    [1008, "slow consumer"],
  ]) {
    assert.equal(shouldReconnect(code, reason), true, `${code} ${reason}`);
    FakeWebSocket.reset();
    const { timers, log } = harness();
    FakeWebSocket.last.open();
    FakeWebSocket.last.serverClose(code, reason);
    const [detail] = closes(log);
    assert.equal(detail.code, code);
    assert.equal(detail.reason, reason);
    assert.equal(detail.willRetry, true);
    assert.equal(timers.delays.length, 1);
    timers.runAll();
    assert.equal(FakeWebSocket.instances.length, 2, `${code} ${reason} reconnects`);
  }
});

test("1008 instance deleted: surfaced, no reconnect", () => {
  const { timers, log, stream } = harness();
  FakeWebSocket.last.open();
  FakeWebSocket.last.serverClose(1008, "instance deleted");
  assert.deepEqual(closes(log), [
    { code: 1008, reason: "instance deleted", wasClean: true, opened: true, willRetry: false, delayMs: null, attempt: 0 },
  ]);
  assert.deepEqual(log.states.at(-1), ["stopped", { reason: "instance deleted" }]);
  assert.equal(stream.state, "stopped");
  assert.equal(timers.pending.size, 0);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("close(): closes the socket with 1000, no reconnect", async () => {
  const { timers, log, stream } = harness();
  const sock = FakeWebSocket.last;
  sock.open();
  stream.close();
  assert.deepEqual(sock.closedByClient, { code: 1000, reason: "closed by client" });
  assert.deepEqual(closes(log).at(-1), {
    code: 1000, reason: "closed by client", wasClean: true, opened: true, willRetry: false, delayMs: null, attempt: 0,
  });
  await flush(); // the socket's own close event changes nothing
  assert.equal(closes(log).length, 1);
  assert.deepEqual(log.states.at(-1), ["stopped", { reason: "closed by client" }]);
  assert.equal(timers.pending.size, 0);
  assert.equal(FakeWebSocket.instances.length, 1);
  stream.close(); // idempotent
  assert.equal(log.states.filter(([s]) => s === "stopped").length, 1);
});

test("close() while waiting to reconnect cancels the timer", () => {
  const { timers, log, stream } = harness();
  FakeWebSocket.last.fail();
  assert.equal(timers.pending.size, 1);
  stream.close();
  assert.equal(timers.pending.size, 0);
  assert.deepEqual(log.states.at(-1), ["stopped", { reason: "closed by client" }]);
  assert.equal(FakeWebSocket.instances.length, 1);
});

test("close() from inside onState('closed') stops the pending reconnect", () => {
  const timers = new FakeTimers();
  let stream;
  stream = connect({
    url: "ws://h",
    instance: "x",
    WebSocket: FakeWebSocket,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    onState: (s) => {
      if (s === "closed") stream.close();
    },
  });
  FakeWebSocket.last.fail();
  assert.equal(timers.pending.size, 0);
  assert.equal(stream.state, "stopped");
});

test("Node 20: an error before the open with no close event after it still reconnects, once", () => {
  const { timers, log } = harness();
  const sock = FakeWebSocket.last;
  sock.onerror({ type: "error" }); // undici after a non-101 answer: no close event follows
  assert.equal(closes(log).length, 1);
  assert.equal(closes(log)[0].code, 1006);
  assert.equal(closes(log)[0].opened, false);
  assert.equal(timers.pending.size, 1);
  sock.serverClose(1006, "", false); // a browser's close event, if one comes, changes nothing
  assert.equal(closes(log).length, 1);
  assert.equal(timers.pending.size, 1);
  timers.runAll();
  assert.equal(FakeWebSocket.instances.length, 2);
});

test("an error after the open waits for the close event", () => {
  const { timers, log } = harness();
  FakeWebSocket.last.open();
  FakeWebSocket.last.onerror({ type: "error" });
  assert.equal(closes(log).length, 0);
  FakeWebSocket.last.serverClose(1006, "", false);
  assert.equal(closes(log).length, 1);
  assert.equal(timers.pending.size, 1);
});

test("close() while connecting reports the close at once", () => {
  const { log, stream } = harness();
  stream.close();
  assert.deepEqual(FakeWebSocket.last.closedByClient, { code: 1000, reason: "closed by client" });
  assert.deepEqual(log.states.map(([s]) => s), ["connecting", "closed", "stopped"]);
  assert.equal(closes(log)[0].opened, false);
});

test("a refused upgrade (error, then close 1006 before open) is retried", () => {
  const { timers, log } = harness();
  FakeWebSocket.last.fail();
  const [detail] = closes(log);
  assert.equal(detail.code, 1006);
  assert.equal(detail.opened, false);
  assert.equal(detail.willRetry, true);
  timers.runAll();
  assert.equal(FakeWebSocket.instances.length, 2);
});

test("stream.gap goes to onGap, not onEvent; later frames go to onEvent", () => {
  const { log, stream } = harness({ since: "5-0" });
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(gap("5-0"));
  FakeWebSocket.last.message(frame(9, "9-0"));
  assert.equal(log.gaps.length, 1);
  assert.equal(log.gaps[0].since, "5-0");
  assert.equal(log.gaps[0].frame.event, "stream.gap");
  assert.deepEqual(log.events.map((f) => f.data.seq), [9]);
  assert.equal(stream.lastOffset, "9-0");
});

test("dedupe: a frame repeating the last offset is dropped; frames without offset pass", () => {
  const { log, stream, timers } = harness();
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(1, "1-0"));
  FakeWebSocket.last.message(frame(2, "2-0"));
  FakeWebSocket.last.serverClose(1001, "server shutting down");
  timers.runAll();
  // The resumed connection (since=2-0) repeats 2-0 at the seam: dropped.
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(2, "2-0"));
  FakeWebSocket.last.message(frame(3, "3-0"));
  FakeWebSocket.last.message(frame(3, "3-0"));
  FakeWebSocket.last.message(frame(4));
  FakeWebSocket.last.message(frame(4));
  assert.deepEqual(log.events.map((f) => f.data.seq), [1, 2, 3, 4, 4]);
  assert.equal(stream.lastOffset, "3-0");
});

test("frames parse as JSON; bad frames reach onError and are skipped; binary frames too", () => {
  const { log } = harness();
  const sock = FakeWebSocket.last;
  sock.open();
  sock.message("not json");
  sock.message("[1,2]");
  sock.binary(new ArrayBuffer(3));
  sock.message(frame(1, "1-0"));
  assert.equal(log.errors.length, 3);
  assert.deepEqual(log.events, [frame(1, "1-0")]);
  assert.equal(sock.binaryType, "arraybuffer");
});

test("without onError, bad frames are dropped silently", async () => {
  const { log } = harness({ onError: undefined });
  FakeWebSocket.last.open();
  FakeWebSocket.last.message("not json");
  FakeWebSocket.last.message(frame(1, "1-0"));
  await flush(); // nothing thrown asynchronously (it would fail this test)
  assert.deepEqual(log.events, [frame(1, "1-0")]);
});

test("an exception in onEvent does not stop the stream", () => {
  const errors = [];
  const { stream } = harness({
    onEvent: () => {
      throw new Error("app bug");
    },
    onError: (e) => errors.push(e.message),
  });
  FakeWebSocket.last.open();
  FakeWebSocket.last.message(frame(1, "1-0"));
  FakeWebSocket.last.message(frame(2, "2-0"));
  assert.deepEqual(errors, ["app bug", "app bug"]);
  assert.equal(stream.lastOffset, "2-0");
  assert.equal(stream.state, "open");
});

test("events from a replaced socket are ignored", () => {
  const { log, timers } = harness();
  const first = FakeWebSocket.last;
  first.open();
  first.serverClose(1001, "rebalancing");
  timers.runAll();
  first.message(frame(1, "1-0")); // late event of the old socket
  assert.deepEqual(log.events, []);
});

test("states: connecting → open → closed → connecting", () => {
  const { log, timers } = harness();
  FakeWebSocket.last.open();
  FakeWebSocket.last.serverClose(1001, "server shutting down");
  timers.runAll();
  assert.deepEqual(
    log.states.map(([s]) => s),
    ["connecting", "open", "closed", "connecting"],
  );
  assert.deepEqual(log.states[0][1], { attempt: 0, since: "now" });
  assert.deepEqual(log.states[1][1], { since: "now" });
  assert.deepEqual(log.states[3][1], { attempt: 1, since: "now" });
});

test("without a WebSocket constructor, connect says how to get one", () => {
  const saved = globalThis.WebSocket;
  try {
    globalThis.WebSocket = undefined;
    assert.throws(() => connect({ url: "ws://h", instance: "x" }), /experimental-websocket/);
  } finally {
    globalThis.WebSocket = saved;
  }
});
