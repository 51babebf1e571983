// The reference client (clients/js/ryze-events.js) in headless Debian chromium across a gateway
// crash: the counterpart of clients/js/test/e2e.mjs --restart-at, which runs it in Node. Run by
// `tests/tests/js_client.rs`, which starts a publisher and a gateway (console on, so the gateway
// serves the page the client runs in and the client itself) and provides:
//
//   GATEWAY_URL   http://127.0.0.1:PORT          INSTANCE     instance name   TOKEN  its token
//   INGEST_URL    the publisher's /v1/events     INGEST_KEY   PUBLISHER_API_KEY
//   INSTANCE_ID   instance uuid                  CONTROL_DIR  hand-over files (below)
//   COUNT         events to publish at least     RESTART_AT   events seen before the crash
//   CHROMIUM      (optional) browser path, default /usr/bin/chromium
//
// The page is the gateway's own /console (same origin, so the Origin check passes and the module
// loads under its CSP); the test imports /console/ryze-events.js into it and connects with
// resume on. This script publishes `message.status` {seq} in batches every 20 ms; once the
// application has seen RESTART_AT events it writes CONTROL_DIR/restart, and the Rust side kills
// the gateway (SIGKILL) and starts a new one on the same address while publishing goes on.
// Publishing stops once the client is open again and COUNT events are out; the application must
// then have seen every seq exactly once, in order, with no stream.gap, and must have reconnected
// with `since=<an offset it saw>`.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const REQUIRED = ['GATEWAY_URL', 'INSTANCE', 'TOKEN', 'INGEST_URL', 'INGEST_KEY', 'INSTANCE_ID',
  'CONTROL_DIR'];
const missing = REQUIRED.filter((k) => !process.env[k]);
const env = Object.fromEntries(REQUIRED.map((k) => [k, process.env[k] ?? '']));
const COUNT = Number(process.env.COUNT ?? 300);
const RESTART_AT = Number(process.env.RESTART_AT ?? 100);
const BATCH = 4;
const PACE_MS = 20;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Upper bound for anything awaited. */
const WAIT = 45_000;

/** Publishes seqs [from, to]; while no gateway holds the client they go to history only. */
async function publish(from, to) {
  const items = [];
  for (let seq = from; seq <= to; seq++) {
    items.push({ instanceId: env.INSTANCE_ID, event: 'message.status', data: { seq } });
  }
  const resp = await fetch(env.INGEST_URL, {
    method: 'POST',
    headers: { authorization: `Bearer ${env.INGEST_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(items),
  });
  const body = await resp.text();
  assert.equal(resp.status, 202, `ingest answered ${resp.status}: ${body}`);
  const counts = JSON.parse(body);
  assert.equal(counts.published + counts.noListeners, items.length, `not all published: ${body}`);
}

async function exists(path) {
  try { await access(path); return true; } catch { return false; }
}

test('the reference client in chromium loses nothing across a gateway kill -9',
  { skip: missing.length ? `set ${missing.join(', ')}` : false }, async () => {
    const userDataDir = await mkdtemp(join(tmpdir(), 'ryze-client-chromium-'));
    const context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    try {
      context.setDefaultTimeout(WAIT);
      const page = context.pages()[0] ?? await context.newPage();
      const pageErrors = [];
      page.on('pageerror', (e) => pageErrors.push(String(e)));
      const resp = await page.goto(`${env.GATEWAY_URL}/console`);
      assert.equal(resp.status(), 200);

      // The application: every seq it is handed, every gap, every state and `since` used.
      await page.evaluate(async ({ instance, token }) => {
        const { connect } = await import('/console/ryze-events.js');
        const app = { seqs: [], offsets: [], gaps: [], states: [], sinces: [], opens: 0 };
        window.app = app;
        window.stream = connect({
          url: location.origin,
          instance,
          token,
          onEvent(frame) {
            app.seqs.push(frame.data.seq);
            app.offsets.push(frame.offset);
          },
          onGap(info) { app.gaps.push(info.since); },
          onState(state, detail) {
            if (state === 'connecting') app.sinces.push(detail.since);
            if (state === 'open') app.opens += 1;
            app.states.push(state === 'closed' ? `closed ${detail.code}` : state);
          },
        });
      }, { instance: env.INSTANCE, token: env.TOKEN });
      const app = () => page.evaluate(() => ({ ...window.app, seen: window.app.seqs.length }));
      await page.waitForFunction(() => window.app.opens === 1);

      let published = 0;
      let signalled = false;
      const deadline = Date.now() + 4 * WAIT;
      for (;;) {
        const now = await app();
        if (published >= COUNT && now.opens >= 2) break;
        assert.ok(Date.now() < deadline, `gave up after ${published} events: ${JSON.stringify(now.states)}`);
        await publish(published + 1, published + BATCH);
        published += BATCH;
        if (!signalled && now.seen >= RESTART_AT) {
          await writeFile(join(env.CONTROL_DIR, 'restart'), '');
          signalled = true;
        }
        await new Promise((r) => setTimeout(r, PACE_MS));
      }
      assert.ok(await exists(join(env.CONTROL_DIR, 'restart')), 'the restart was signalled');
      await page.waitForFunction((n) => window.app.seqs.length >= n, published);
      // A little longer, so a duplicate arriving after the last seq is caught too.
      await new Promise((r) => setTimeout(r, 200));
      const seen = await app();
      await page.evaluate(() => window.stream.close());

      const expected = Array.from({ length: published }, (_, i) => i + 1);
      assert.deepEqual(seen.seqs, expected, 'every seq once, in order');
      assert.deepEqual(seen.gaps, [], 'no stream.gap: history held everything');
      assert.equal(new Set(seen.offsets).size, seen.offsets.length, 'no offset twice');
      assert.ok(seen.states.includes('closed 1006'), `the client saw the crash: ${seen.states}`);
      assert.equal(seen.sinces[0], 'now');
      assert.ok(seen.sinces.length >= 2, 'reconnected');
      for (const since of seen.sinces.slice(1)) {
        assert.ok(seen.offsets.includes(since), `resumed from an offset it saw: ${since}`);
      }
      assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
      process.stdout.write(`${JSON.stringify({ ok: true, published, states: seen.states, sinces: seen.sinces.length })}\n`);
    } finally {
      await context.close();
      await rm(userDataDir, { recursive: true, force: true });
    }
  });
