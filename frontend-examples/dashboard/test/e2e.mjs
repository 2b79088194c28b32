// The dashboard in headless Chromium against a real `agentplane serve` (SQLite, fake
// GPUs): sign in as a tenant owner, start an execution through the API and see it reach
// SUCCEEDED with its steps, the cluster's GPU memory and the audit tail; then kill the
// server, start it again on the same database and port, run another execution before
// the page has reconnected, and see the page resume with it (nothing missed).
import puppeteer from 'puppeteer-core';
import { preview } from 'vite';
import { startServer, adminToken, gql, chromiumPath } from '../../../tests/node/server.mjs';

const OWNER = { email: 'owner@acme.example', password: 'dashboard-owner-password' };
const GPUS = { AGENTPLANE_FAKE_GPUS: 'H100-80GB:81920,H100-80GB:81920' };
const screenshot = process.env.SCREENSHOT_PATH;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function must(promise, what) {
  const body = await promise;
  check(!body.errors, `${what}: ${JSON.stringify(body.errors)}`);
  return body.data;
}

async function setUp(url) {
  const admin = await adminToken(url);
  const created = await must(gql(url,
    'mutation($i: CreateTenantInput!) { createTenant(input: $i) { setPasswordToken } }',
    { i: { slug: 'acme', name: 'Acme', plan: 'PRO', owner: { email: OWNER.email, displayName: 'Ada' } } },
    admin), 'createTenant');
  await must(gql(url, 'mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }',
    { i: { token: created.createTenant.setPasswordToken, password: OWNER.password } }), 'setPassword');
  const login = await must(gql(url, 'mutation($i: LoginInput!) { login(input: $i) { accessToken } }',
    { i: OWNER }), 'login');
  const token = login.login.accessToken;
  const wf = await must(gql(url,
    'mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }',
    { i: { name: 'nightly report', definition: { steps: [
      { id: 'fetch', kind: 'transform', config: { template: '{"rows": {{ input.rows }}}' } },
      { id: 'pause', kind: 'delay', dependsOn: ['fetch'], config: { ms: 300 } },
      { id: 'summarize', kind: 'transform', dependsOn: ['pause'],
        config: { template: '{"summary": "{{ steps.fetch.output.rows }} rows"}' } },
    ] } } }, token), 'createWorkflow');
  const id = wf.createWorkflow.workflow.id;
  await must(gql(url, 'mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }',
    { i: { workflowId: id } }, token), 'publishWorkflow');
  return { token, workflowId: id };
}

async function startExecution(url, token, workflowId, rows) {
  const data = await must(gql(url,
    'mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id } } }',
    { i: { workflowId, input: { rows } } }, token), 'startExecution');
  return data.startExecution.execution.id;
}

async function statusOf(page, id) {
  return page.$eval(`tr[data-execution-id="${id}"] td.status`, (td) => td.textContent).catch(() => null);
}

async function waitFor(what, f, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await f();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

let server = await startServer({ env: GPUS, dir: (await import('node:fs')).mkdtempSync('/tmp/agentplane-dashboard-') });
const port = new URL(server.url).port;
const site = await preview({
  root: new URL('..', import.meta.url).pathname,
  // The proxy reports the killed server's sockets; the page's own state is what counts.
  logLevel: 'silent',
  preview: {
    host: '127.0.0.1',
    port: 0,
    proxy: { '/graphql': { target: server.url, ws: true, changeOrigin: true } },
  },
});
const siteUrl = site.resolvedUrls.local[0];
const browser = await puppeteer.launch({
  executablePath: chromiumPath(),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  defaultViewport: { width: 1280, height: 720 },
});
const problems = [];
try {
  const { token, workflowId } = await setUp(server.url);
  const page = await browser.newPage();
  page.on('pageerror', (e) => problems.push(String(e)));
  // A long reconnect delay, so the test can act while the page is disconnected.
  await page.goto(`${siteUrl}?reconnectMs=4000`, { waitUntil: 'networkidle0' });
  await page.type('#email', OWNER.email);
  await page.type('#password', OWNER.password);
  await page.click('#sign-in-button');
  await waitFor('the live connection', () =>
    page.$eval('#connection', (e) => e.dataset.state === 'live'));

  // 1. An execution started elsewhere shows up live and reaches SUCCEEDED.
  const first = await startExecution(server.url, token, workflowId, 42);
  await waitFor('the first execution to succeed', async () => (await statusOf(page, first)) === 'SUCCEEDED');
  const steps = await page.$eval(`tr[data-execution-id="${first}"]`, (tr) => tr.children[3].textContent);
  check(steps === '3/3', `steps column: ${steps}`);
  const workflow = await page.$eval(`tr[data-execution-id="${first}"]`, (tr) => tr.children[1].textContent);
  check(workflow === 'nightly report', `workflow column: ${workflow}`);
  // The cluster panel: this server's node and its two fake GPUs.
  await waitFor('GPU memory', () =>
    page.$eval('#gpu-memory', (e) => e.textContent.includes('of 163840 MiB')));
  // The audit tail has the start.
  await waitFor('the audit tail', () =>
    page.$$eval('#audit-rows li', (lis) => lis.some((li) => li.textContent.includes('execution.started'))));
  if (screenshot) {
    for (const rows of [3, 12]) {
      const id = await startExecution(server.url, token, workflowId, rows);
      await waitFor('another execution', async () => (await statusOf(page, id)) === 'SUCCEEDED');
    }
    await page.screenshot({ path: screenshot });
  }

  // 2. The server dies. The page says so and keeps trying.
  await server.stop({ keep: true });
  await waitFor('the page to notice', () =>
    page.$eval('#connection', (e) => e.dataset.state === 'reconnecting'));
  const auditBefore = await page.$$eval('#audit-rows li', (lis) => lis.length);

  // 3. It comes back on the same database and port; an execution runs to its end
  //    before the page reconnects (its delay is 4 s). The page must still show it.
  server = await startServer({ env: GPUS, dir: server.dir, listen: `127.0.0.1:${port}` });
  const second = await startExecution(server.url, token, workflowId, 7);
  const missed = await must(gql(server.url, 'query($id: ID!) { execution(id: $id) { status } }', { id: second }, token), 'execution');
  await waitFor('the second execution to finish on the server', async () => {
    const d = await must(gql(server.url, 'query($id: ID!) { execution(id: $id) { status } }', { id: second }, token), 'execution');
    return d.execution.status === 'SUCCEEDED';
  });
  check(await statusOf(page, second) === null, 'the page saw the second execution before reconnecting?');
  await waitFor('the page to reconnect', () =>
    page.$eval('#connection', (e) => e.dataset.state === 'live'));
  await waitFor('the missed execution on the page', async () => (await statusOf(page, second)) === 'SUCCEEDED');
  const events = await page.$eval(`tr[data-execution-id="${second}"]`, (tr) => Number(tr.children[6].textContent));
  check(events >= 8, `the replay delivered ${events} events of the missed execution`);
  // The audit records written meanwhile arrived too, each once.
  const seqs = await page.$$eval('#audit-rows li', (lis) => lis.map((li) => Number(li.dataset.sequence)));
  check(seqs.length > auditBefore, 'no audit records after the restart');
  check(new Set(seqs).size === seqs.length, `duplicate audit records: ${seqs}`);
  check(problems.length === 0, `page errors: ${problems.join('; ')}`);
  void missed;
  console.log(`dashboard: live execution, GPU memory and audit tail shown; resumed after a restart with the missed execution (${events} events)`);
} finally {
  await browser.close();
  await site.close();
  await server.stop();
}
