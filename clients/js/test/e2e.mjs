// End-to-end check of the reference client against a real gateway and publisher.
//
//   node --experimental-websocket clients/js/test/e2e.mjs \
//     --gateway ws://127.0.0.1:8080 --instance sales --token <token> \
//     --publisher http://127.0.0.1:8081 --key <PUBLISHER_API_KEY> --instance-id <uuid> \
//     [--count 200] [--batch 50] [--resume|--no-resume] [--timeout-ms 20000]
//     [--control-dir DIR --expect-stop REASON] [--control-dir DIR --restart-at N [--pace-ms MS]]
//
// Every option can also come from the environment: GATEWAY_URL, INSTANCE, TOKEN, PUBLISHER_URL,
// PUBLISHER_KEY, INSTANCE_ID, COUNT, BATCH, RESUME (true/false), TIMEOUT_MS. Arguments win.
//
// It connects with the client, waits for the open, publishes COUNT `message.status` events
// `{"seq": n}` through `POST <publisher>/v1/events` (each batch must be fully `published`), and
// checks that the application saw every seq exactly once, in order, and no gap. Prints one JSON
// summary line on stdout; exits 0 on success, 1 on failure, 2 on bad usage.
//
// With `--control-dir DIR --expect-stop REASON` it then writes DIR/received and waits for the
// server to end the stream for good with that close reason (e.g. the test deletes the instance:
// `instance deleted`), checking that the client did not try to reconnect.
//
// `node --test clients/js/test/` also loads this file (every file under a `test` directory is a
// test file for Node 20's runner); without a gateway to talk to it registers one skipped test.
//
// With `--restart-at N --control-dir DIR` (resume on) it publishes continuously instead, one
// batch every `--pace-ms` (default 20) ms: once the application has seen N events it writes
// DIR/restart, and the test (tests/tests/js_client.rs) kills the gateway and starts a new one on
// the same address while the script keeps publishing. Publishing stops once the client is open
// again and at least COUNT events were published; the application must then have seen every
// published seq exactly once, in order, with no gap, and the client must have reconnected with
// `since=<an offset>`. While no gateway holds the client the publisher may answer
// `noListeners` (the frames still go to history, D37): those count as published, and a frame
// that really went nowhere shows up as a missing seq.

import { writeFileSync } from "node:fs";
import { join } from "node:path";

import { connect } from "../ryze-events.js";

const USAGE =
  "usage: node --experimental-websocket e2e.mjs --gateway URL --instance NAME --token TOKEN " +
  "--publisher URL --key KEY --instance-id ID [--count N] [--batch N] [--resume|--no-resume] [--timeout-ms MS] " +
  "[--control-dir DIR --expect-stop REASON] [--control-dir DIR --restart-at N [--pace-ms MS]]";

function options(argv, env) {
  const o = {
    gateway: env.GATEWAY_URL,
    instance: env.INSTANCE,
    token: env.TOKEN,
    publisher: env.PUBLISHER_URL,
    key: env.PUBLISHER_KEY,
    instanceId: env.INSTANCE_ID,
    count: env.COUNT ?? "200",
    batch: env.BATCH ?? "50",
    resume: env.RESUME ?? "true",
    timeoutMs: env.TIMEOUT_MS ?? "20000",
    controlDir: env.CONTROL_DIR,
    expectStop: env.EXPECT_STOP,
    restartAt: env.RESTART_AT,
    paceMs: env.PACE_MS ?? "20",
  };
  const names = {
    "--gateway": "gateway",
    "--instance": "instance",
    "--token": "token",
    "--publisher": "publisher",
    "--key": "key",
    "--instance-id": "instanceId",
    "--count": "count",
    "--batch": "batch",
    "--timeout-ms": "timeoutMs",
    "--control-dir": "controlDir",
    "--expect-stop": "expectStop",
    "--restart-at": "restartAt",
    "--pace-ms": "paceMs",
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--resume") o.resume = "true";
    else if (a === "--no-resume") o.resume = "false";
    else if (names[a] && i + 1 < argv.length) o[names[a]] = argv[++i];
    else throw new Error(`unknown or incomplete argument ${a}`);
  }
  return o;
}

const configured = (o) => o.gateway && o.instance && o.token && o.publisher && o.key && o.instanceId;

async function publish(o, from, to, historyOnlyOk = false) {
  const items = [];
  for (let seq = from; seq <= to; seq++) {
    items.push({ instanceId: o.instanceId, event: "message.status", data: { seq } });
  }
  const url = `${o.publisher.replace(/\/+$/, "")}/v1/events`;
  const resp = await fetch(url, {
    method: "POST",
    headers: { authorization: `Bearer ${o.key}`, "content-type": "application/json" },
    body: JSON.stringify(items),
  });
  const text = await resp.text();
  if (resp.status !== 202) throw new Error(`POST ${url}: ${resp.status} ${text}`);
  const counts = JSON.parse(text);
  const delivered = counts.published + (historyOnlyOk ? counts.noListeners : 0);
  if (delivered !== items.length) {
    throw new Error(`POST ${url}: ${items.length} items but ${text} (is the client connected?)`);
  }
}

function waitFor(predicate, ms, what) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const poll = setInterval(() => {
      if (predicate()) {
        clearInterval(poll);
        resolve();
      } else if (Date.now() - started > ms) {
        clearInterval(poll);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }
    }, 10);
  });
}

async function run(o) {
  const count = Number(o.count);
  const batch = Math.max(1, Number(o.batch));
  const timeoutMs = Number(o.timeoutMs);
  const resume = o.resume !== "false";
  const seqs = [];
  const gaps = [];
  const states = [];
  const offsets = [];
  const sinces = [];
  let opens = 0;
  let stopReason = null;
  // With --restart-at: events published so far, and that count when the first connection
  // closed and when the next one opened (the difference went out while the client was away).
  let published = 0;
  const away = { closedAt: null, reopenedAt: null };
  const stream = connect({
    url: o.gateway,
    instance: o.instance,
    token: o.token,
    resume,
    onEvent(frame) {
      if (frame.event === "message.status" && typeof frame.data?.seq === "number") {
        seqs.push(frame.data.seq);
        if (frame.offset !== undefined) offsets.push(frame.offset);
      }
    },
    onGap(info) {
      gaps.push(info.since);
    },
    onState(state, detail) {
      if (state === "stopped") stopReason = detail.reason;
      if (state === "connecting") sinces.push(detail.since);
      if (state === "open") opens += 1;
      if (state === "closed" && away.closedAt === null) away.closedAt = published;
      if (state === "open" && opens === 2) away.reopenedAt = published;
      states.push(state === "closed" ? `closed ${detail.code} ${detail.reason}`.trim() : state);
      process.stderr.write(`e2e: ${state} ${JSON.stringify(detail)}\n`);
    },
  });
  const restartAt = o.restartAt === undefined ? null : Number(o.restartAt);
  const summary = { resume, count, received: 0, gaps, states, ok: false };
  let total = count;
  try {
    await waitFor(() => stream.state === "open", timeoutMs, "the connection to open");
    if (restartAt === null) {
      for (let from = 1; from <= count; from += batch) {
        await publish(o, from, Math.min(count, from + batch - 1));
      }
    } else {
      if (!o.controlDir) throw new Error("--restart-at needs --control-dir");
      if (!resume) throw new Error("--restart-at needs --resume");
      const paceMs = Number(o.paceMs);
      const deadline = Date.now() + 4 * timeoutMs;
      let signalled = false;
      // Until the client is open on the new gateway and COUNT events are out.
      while (published < count || opens < 2) {
        if (Date.now() > deadline) {
          throw new Error(`gave up publishing after ${published} events: opens=${opens}, restart signalled=${signalled}`);
        }
        await publish(o, published + 1, published + batch, true);
        published += batch;
        if (!signalled && seqs.length >= restartAt) {
          writeFileSync(join(o.controlDir, "restart"), "");
          signalled = true;
        }
        await new Promise((r) => setTimeout(r, paceMs));
      }
      total = published;
      summary.count = total;
      summary.publishedWhileAway = away.reopenedAt - away.closedAt;
    }
    await waitFor(() => seqs.length >= total, timeoutMs, `${total} events (got ${seqs.length})`);
    // A little longer, so a duplicate arriving after the last seq is caught too.
    await new Promise((r) => setTimeout(r, 200));
    summary.received = seqs.length;
    const problems = [];
    const expected = Array.from({ length: total }, (_, i) => i + 1);
    if (seqs.length !== total) problems.push(`received ${seqs.length} events, expected ${total}`);
    const firstWrong = seqs.findIndex((s, i) => s !== expected[i]);
    if (firstWrong !== -1) {
      problems.push(`out of order or duplicated at index ${firstWrong}: ${seqs.slice(Math.max(0, firstWrong - 2), firstWrong + 3)}`);
    }
    if (gaps.length) problems.push(`unexpected stream.gap: ${gaps}`);
    if (new Set(offsets).size !== offsets.length) problems.push("repeated offsets");
    if (!resume && offsets.length) problems.push("offsets on a connection without since");
    summary.sinces = sinces;
    if (restartAt !== null) {
      // The first connection asks for `now`; every later one must resume from an offset.
      if (sinces[0] !== "now") problems.push(`first connection with since=${sinces[0]}`);
      if (sinces.length < 2) problems.push("never reconnected");
      if (sinces.slice(1).some((s) => typeof s !== "string" || s === "now" || !offsets.includes(s))) {
        problems.push(`a reconnect without a seen offset: ${JSON.stringify(sinces)}`);
      }
    }
    summary.offsets = offsets.length;
    if (o.expectStop && problems.length === 0) {
      if (!o.controlDir) throw new Error("--expect-stop needs --control-dir");
      const connects = states.filter((s) => s === "connecting").length;
      writeFileSync(join(o.controlDir, "received"), "");
      await waitFor(() => stream.state === "stopped", timeoutMs, `the server to end the stream (${o.expectStop})`);
      // Long enough for a wrong reconnect (first delay under 1 s) to show up.
      await new Promise((r) => setTimeout(r, 1500));
      if (stopReason !== o.expectStop) problems.push(`stopped with ${JSON.stringify(stopReason)}, expected ${JSON.stringify(o.expectStop)}`);
      if (states.filter((s) => s === "connecting").length !== connects) problems.push("reconnected after the final close");
    }
    summary.problems = problems;
    summary.ok = problems.length === 0;
  } catch (err) {
    summary.received = seqs.length;
    summary.problems = [String(err?.message ?? err)];
  } finally {
    stream.close();
  }
  await waitFor(() => stream.state === "stopped", 5000, "the stream to stop").catch(() => {});
  return summary;
}

const o = (() => {
  try {
    return options(process.argv.slice(2), process.env);
  } catch (err) {
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    process.exit(2);
  }
})();

if (!configured(o)) {
  if (process.env.NODE_TEST_CONTEXT) {
    // Loaded by `node --test test/`: nothing to talk to.
    const { test } = await import("node:test");
    test("e2e against a real gateway (run by tests/tests/js_client.rs)", { skip: "no gateway configured" }, () => {});
  } else {
    process.stderr.write(`${USAGE}\n`);
    process.exit(2);
  }
} else {
  if (typeof globalThis.WebSocket !== "function") {
    process.stderr.write("e2e: no global WebSocket; run with node --experimental-websocket (Node 20) or Node 22+\n");
    process.exit(2);
  }
  const summary = await run(o);
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  process.exit(summary.ok ? 0 : 1);
}
