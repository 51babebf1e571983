// The live event console (`GET /console`) in a real browser: headless Debian chromium driven by
// playwright-core. Run by `tests/tests/console.rs`, which starts a publisher and a gateway
// (Redis history on) and provides:
//
//   GATEWAY_URL   http://127.0.0.1:PORT (serves /console and /ws)
//   INSTANCE      instance name           TOKEN        its token (must never appear on screen)
//   INGEST_URL    the publisher's /v1/events    INGEST_KEY   PUBLISHER_API_KEY
//   INSTANCE_ID   instance uuid           SCREENSHOT   where to save the PNG
//   CONTROL_DIR   (optional) enables the resume test: this script writes `connected` there once
//                 the page showed seq 1 and 2; the Rust side SIGTERMs the gateway, publishes
//                 seq 3, 4 and 5 while none runs, starts a new one on the same port and writes
//                 `restarted`.
//   CHROMIUM      (optional) browser path, default /usr/bin/chromium
//
// Manual run against `make run`: GATEWAY_URL=http://127.0.0.1:8080 INSTANCE=demo TOKEN=...
// INGEST_URL=http://127.0.0.1:8080/v1/events INGEST_KEY=demo-publisher-key INSTANCE_ID=...
// SCREENSHOT=../../artifacts/console.png node --test console.test.mjs

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { chromium } from 'playwright-core';

const REQUIRED = ['GATEWAY_URL', 'INSTANCE', 'TOKEN', 'INGEST_URL', 'INGEST_KEY', 'INSTANCE_ID', 'SCREENSHOT'];
const missing = REQUIRED.filter((k) => !process.env[k]);
const env = Object.fromEntries(REQUIRED.map((k) => [k, process.env[k] ?? '']));
const CONTROL_DIR = process.env.CONTROL_DIR;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Upper bound for anything awaited in the page. */
const WAIT = 20_000;

const skipAll = missing.length ? `set ${missing.join(', ')}` : false;

let userDataDir;
let context;
let page;
const pageErrors = [];
const cspViolations = [];

before(async () => {
  if (skipAll) return;
  userDataDir = await mkdtemp(join(tmpdir(), 'ryze-console-chromium-'));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1200, height: 820 },
    colorScheme: 'light',
  });
  context.setDefaultTimeout(WAIT);
  page = context.pages()[0] ?? await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy/i.test(m.text())) cspViolations.push(m.text());
  });
});

after(async () => {
  await context?.close();
  if (userDataDir) await rm(userDataDir, { recursive: true, force: true });
});

/** POST one event through the ingest endpoint; asserts it was published to a listener. */
async function publish(event, data) {
  const resp = await fetch(env.INGEST_URL, {
    method: 'POST',
    headers: { authorization: `Bearer ${env.INGEST_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ instanceId: env.INSTANCE_ID, event, data }),
  });
  const body = await resp.text();
  assert.equal(resp.status, 202, `ingest answered ${resp.status}: ${body}`);
  assert.equal(JSON.parse(body).published, 1, `ingest did not publish ${event}: ${body}`);
}

const frameCount = () => page.locator('#frames > li').count();
const waitFrames = (n) => page.waitForFunction((n) => document.querySelectorAll('#frames > li').length === n, n);

/** Every place the token could leak: rendered text, markup, address bar, storage. */
async function assertTokenNowhere(when) {
  const leaks = await page.evaluate((token) => {
    const found = [];
    if (document.body.innerText.includes(token)) found.push('visible text');
    if (document.documentElement.outerHTML.includes(token)) found.push('markup');
    if (document.body.textContent.includes(token)) found.push('text content (incl. collapsed)');
    if (location.href.includes(token)) found.push('address bar');
    if (localStorage.length || sessionStorage.length) found.push('web storage');
    if (document.cookie) found.push('cookies');
    return found;
  }, env.TOKEN);
  assert.deepEqual(leaks, [], `the token leaked ${when}`);
}

const SAMPLES = [
  ['message.exchange', {
    id: 'wamid.console.1',
    message: {
      id: 'wamid.console.1', direction: 'incoming', timestamp: '2026-04-28T10:30:00Z',
      chat: { jid: '5511999990000@s.whatsapp.net', name: 'Ana', type: 'private' },
      sender: { jid: '5511999990000@s.whatsapp.net', name: 'Ana' },
      content: { text: 'Hello from the console test' },
    },
  }],
  ['message.status', { id: 'wamid.console.1', status: 'read' }],
  ['call.update', { id: 'call.console.1', status: 'offer', from: '5511999990000@s.whatsapp.net' }],
  ['group.flow', { id: 'group.console.1', action: 'joined', participants: ['5511988880000@s.whatsapp.net'] }],
];

test('published events appear live with their type badges and the token redacted',
  { skip: skipAll }, async () => {
    const resp = await page.goto(`${env.GATEWAY_URL}/console`);
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()['content-security-policy'] ?? '', /form-action 'none'/);
    await assert.doesNotReject(page.getByRole('heading', { name: 'ryze-events console' }).waitFor());

    // Keyboard only: type into the labelled fields, submit with Enter.
    await page.getByLabel('Instance name').fill(env.INSTANCE);
    await page.getByLabel('Token (instance or account)').fill(env.TOKEN);
    await page.getByLabel('Token (instance or account)').press('Enter');
    await page.locator('#status[data-state="open"]').waitFor();
    assert.match(await page.locator('#status').innerText(), new RegExp(`Connected to "${env.INSTANCE}"`));

    for (const [event, data] of SAMPLES) await publish(event, data);
    await waitFrames(SAMPLES.length);

    // Newest first, one badge per frame with the frame's event type.
    const badges = await page.locator('#frames > li summary .badge').allInnerTexts();
    assert.deepEqual(badges, SAMPLES.map(([e]) => e).reverse());
    for (const [event] of SAMPLES) {
      const counter = page.locator(`#counts li[data-type="${event}"] .n`);
      assert.equal(await counter.innerText(), '1', `counter of ${event}`);
    }

    // Expand every frame: pretty JSON, instanceData intact except the masked token.
    for (const summary of await page.locator('#frames > li summary').all()) await summary.click();
    const texts = await page.locator('#frames > li pre').allInnerTexts();
    for (const [i, text] of texts.entries()) {
      const shown = JSON.parse(text);
      const [event, data] = SAMPLES[SAMPLES.length - 1 - i];
      assert.equal(shown.event, event);
      assert.deepEqual(shown.data, data);
      assert.equal(shown.instanceData.instance, env.INSTANCE);
      assert.equal(shown.instanceData.token, '••••');
      assert.match(text, /\n {2}"data": \{/, 'pretty-printed');
    }
    await assertTokenNowhere('after four frames');

    // Filter by type, then back to all.
    await page.getByLabel('Event type', { exact: true }).selectOption('call.update');
    assert.deepEqual(await page.locator('#frames > li:not([hidden]) .badge').allInnerTexts(), ['call.update']);
    await page.getByLabel('Event type', { exact: true }).selectOption('');
    assert.equal(await page.locator('#frames > li:not([hidden])').count(), SAMPLES.length);

    // Pause holds new frames; resume shows them.
    await page.getByRole('button', { name: 'Pause' }).click();
    await publish('label.update', { id: 'label.console.1', labels: ['vip'] });
    await page.getByRole('button', { name: 'Resume (1 held)' }).waitFor();
    assert.equal(await frameCount(), SAMPLES.length);
    await page.getByRole('button', { name: /^Resume/ }).click();
    await waitFrames(SAMPLES.length + 1);
    assert.equal(await page.locator('#frames > li').first().getAttribute('data-type'), 'label.update');

    // Clear empties list and counters.
    await page.getByRole('button', { name: 'Clear' }).click();
    assert.equal(await frameCount(), 0);
    assert.equal(await page.locator('#counts li').count(), 0);

    // A tidy state for the screenshot: the sample frames again, the newest message expanded.
    for (const [event, data] of [...SAMPLES].reverse()) await publish(event, data);
    await publish('instance.state', { state: 'connected' });
    await waitFrames(SAMPLES.length + 1);
    await page.locator('#frames > li[data-type="message.exchange"] summary').first().click();
    await assertTokenNowhere('before the screenshot');
    await mkdir(dirname(env.SCREENSHOT), { recursive: true });
    await page.screenshot({ path: env.SCREENSHOT, fullPage: true });

    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
    assert.deepEqual(cspViolations, [], 'CSP violations');
  });

/** Polls for a file the Rust side writes. */
async function waitForFile(path, timeout) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try { await access(path); return; } catch { /* not yet */ }
    if (Date.now() > deadline) throw new Error(`${path} did not appear within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The seqs and offsets of the `message.status` frames on screen, oldest first. */
async function shownSeqs() {
  return page.evaluate(() => [...document.querySelectorAll('#frames > li.frame[data-type="message.status"]')]
    .reverse()
    .map((li) => ({ seq: JSON.parse(li.querySelector('pre').textContent).data.seq, offset: li.dataset.offset })));
}

/** `a-b` offsets compared as the pair of numbers they are. */
const offsetKey = (o) => o.split('-').map((n) => BigInt(n));
const isBefore = (a, b) => {
  const [x, y] = [offsetKey(a), offsetKey(b)];
  return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]);
};

test('the page shows the 1001 close, resumes when the gateway is back and shows nothing twice',
  { skip: skipAll || (!CONTROL_DIR && 'set CONTROL_DIR (driven by tests/tests/console.rs)') }, async () => {
    await page.locator('#status[data-state="open"]').waitFor();
    await page.getByRole('button', { name: 'Clear' }).click();
    await publish('message.status', { seq: 1 });
    await publish('message.status', { seq: 2 });
    await waitFrames(2);
    await writeFile(join(CONTROL_DIR, 'connected'), '');

    // The Rust side sends SIGTERM: the gateway drains its connections with 1001.
    await page.locator('#last-close[data-code="1001"]').waitFor();
    assert.match(await page.locator('#last-close').innerText(), /Last close: 1001 server shutting down/);
    await page.locator('#log li', { hasText: /closed 1001 server shutting down; retry 1 in \d\.\d s/ }).waitFor();

    // Seq 3-5 are published while no gateway runs; a new gateway on the same port: the
    // backoff finds it and the page resumes after seq 2's offset.
    await waitForFile(join(CONTROL_DIR, 'restarted'), 45_000);
    await page.locator('#status[data-state="open"]').waitFor({ timeout: 45_000 });
    assert.equal(await page.locator('#log li', { hasText: 'connected to' }).count(), 2);
    const [, second] = await shownSeqs();
    await page.locator('#log li', { hasText: `(resumed after ${second.offset})` }).waitFor();
    await waitFrames(5);

    await publish('message.status', { seq: 6 });
    await waitFrames(6);
    const shown = await shownSeqs();
    assert.deepEqual(shown.map((f) => f.seq), [1, 2, 3, 4, 5, 6], 'every seq once, in order');
    for (let i = 1; i < shown.length; i++) {
      assert.ok(isBefore(shown[i - 1].offset, shown[i].offset), `offsets increase: ${JSON.stringify(shown)}`);
    }
    assert.equal(await page.locator('#frames > li.gap').count(), 0, 'no gap: history held seq 3-5');
    await assertTokenNowhere('after the reconnect');
    await page.screenshot({ path: env.SCREENSHOT.replace(/(\.png)?$/, '-reconnect.png'), fullPage: true });
    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  });

test('an offset the gateway does not hold shows the stream.gap line, then the retained frames',
  { skip: skipAll || (!CONTROL_DIR && 'set CONTROL_DIR (checks the resume test\'s frames)') }, async () => {
    if (page.url() === 'about:blank') await page.goto(`${env.GATEWAY_URL}/console`);
    await page.getByRole('button', { name: 'Disconnect' }).click();
    await page.locator('#status[data-state="idle"]').waitFor();
    await page.getByRole('button', { name: 'Clear' }).click();
    await page.getByLabel('Instance name').fill(env.INSTANCE);
    await page.getByLabel('Token (instance or account)').fill(env.TOKEN);
    // A well-formed offset this instance's stream never issued: everything after it is lost.
    await page.getByLabel('Resume from offset (optional)').fill('1-0');
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
    await page.locator('#status[data-state="open"]').waitFor();
    await page.locator('#log li', { hasText: '(resumed after 1-0)' }).waitFor();

    const gap = page.locator('#frames > li.gap');
    await gap.waitFor();
    assert.equal(await gap.count(), 1);
    assert.equal(await gap.getAttribute('data-since'), '1-0');
    assert.equal(await gap.locator('.badge').innerText(), 'stream.gap');
    assert.match(await gap.innerText(), /Events missed: the gateway no longer holds the frames after offset 1-0/);
    assert.equal(await page.locator('#log li', { hasText: 'stream.gap: frames after offset 1-0' }).count(), 1);

    // The retained frames follow the gap, in order: once seq 6 (the newest) is on screen, all
    // are. Newest first, so the gap is the oldest line.
    await page.waitForFunction(() => /"seq": 6\b/.test(document.querySelector('#frames > li.frame pre')?.textContent ?? ''));
    assert.equal(await page.locator('#frames > li').last().getAttribute('class'), 'gap');
    const seqs = (await shownSeqs()).map((f) => f.seq);
    assert.deepEqual(seqs.slice(-6), [1, 2, 3, 4, 5, 6], 'the retained frames after the gap, once each');

    // The gap stays visible whatever the filter.
    await page.getByLabel('Event type', { exact: true }).selectOption('call.update');
    assert.equal(await gap.isVisible(), true);
    await page.getByLabel('Event type', { exact: true }).selectOption('');
    await page.getByLabel('Resume from offset (optional)').fill('');
    await assertTokenNowhere('after a gap');
    assert.deepEqual(pageErrors, [], 'uncaught errors in the page');
  });

test('a refused upgrade shows as close 1006 with the hint, and Disconnect stops retrying',
  { skip: skipAll }, async () => {
    if (page.url() === 'about:blank') await page.goto(`${env.GATEWAY_URL}/console`);
    await page.getByRole('button', { name: 'Disconnect' }).click();
    await page.locator('#status[data-state="idle"]').waitFor();
    assert.equal(await page.locator('#hint1006').isVisible(), false);

    // A wrong token: the gateway answers 401, which the browser reports only as 1006.
    await page.getByLabel('Token (instance or account)').fill('not-a-valid-token');
    await page.getByRole('button', { name: 'Connect', exact: true }).click();
    await page.locator('#last-close[data-code="1006"]').waitFor();
    await page.locator('#hint1006').waitFor({ state: 'visible' });
    assert.match(await page.locator('#last-close').innerText(), /1006 .*\(never opened\)/);
    // Full jitter may pick a delay near 0, so the line can be gone before it is read: wait for
    // it (every refused attempt shows it again, with a longer delay each time).
    await page.locator('#status', { hasText: /Closed 1006\. Reconnecting in \d+\.\d s \(attempt \d+\)/ }).waitFor();

    await page.getByRole('button', { name: 'Disconnect' }).click();
    await page.locator('#status[data-state="idle"]').waitFor();
    assert.equal(await page.getByRole('button', { name: 'Disconnect' }).isDisabled(), true);
    await assertTokenNowhere('after a refused connect');
  });
