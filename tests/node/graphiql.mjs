// GraphiQL in headless Chromium, as a newcomer uses it: the page loads the schema (the
// standard introspection query passes the default limits), a token typed into the
// Headers pane authenticates both HTTP requests and the websocket's `connection_init`,
// and a subscription streams events. Without a token the same subscription is refused.
import puppeteer from 'puppeteer-core';
import { startServer, adminToken, chromiumPath } from './server.mjs';

const SUBSCRIPTION = 'subscription { heartbeat(intervalSeconds: 1) { at uptimeSeconds } }';
const shots = process.env.SCREENSHOT_DIR;

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function editorText(page, scope) {
  return page.evaluate((scope) => {
    const el = document.querySelector(`${scope} .CodeMirror`);
    return el ? el.CodeMirror.getValue() : null;
  }, scope);
}

async function openGraphiql(browser, url) {
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.goto(`${url}/graphql`, { waitUntil: 'networkidle0' });
  await page.waitForSelector('.graphiql-query-editor .CodeMirror', { timeout: 20_000 });
  // The schema arrived: the docs explorer lists the root types.
  await page.click('button[aria-label="Show Documentation Explorer"]');
  await page.waitForFunction(
    () => document.body.innerText.includes('Root Types') ||
      document.querySelector('.graphiql-doc-explorer-error'),
    { timeout: 20_000 });
  const error = await page.$eval('body', (b) => b.innerText.includes('Error fetching schema'));
  check(!error, 'GraphiQL could not fetch the schema');
  check(problems.length === 0, `page errors: ${problems.join('; ')}`);
  return page;
}

async function setQuery(page, text) {
  await page.evaluate((text) => {
    document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror.setValue(text);
  }, text);
  // GraphiQL parses the document after an edit (debounced); run only once it has.
  await new Promise((r) => setTimeout(r, 1000));
}

async function typeHeaders(page, text) {
  const [button] = await page.$$('xpath/.//button[normalize-space()="Headers"]');
  check(button, 'no Headers tab in GraphiQL');
  await button.click();
  const editor = '.graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror';
  await page.waitForSelector(editor, { visible: true });
  await page.click(editor);
  await page.keyboard.type(text, { delay: 5 });
  const typed = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), editor);
  check(JSON.parse(typed).Authorization, `the Headers pane holds ${typed}`);
}

async function run(page) {
  await page.click('.graphiql-execute-button');
}

async function waitForResponse(page, predicate, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  let last = null;
  while (Date.now() < deadline) {
    last = await editorText(page, '.graphiql-response');
    if (last && predicate(last)) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`response pane never matched; last:\n${last}`);
}

const server = await startServer();
const browser = await puppeteer.launch({
  executablePath: chromiumPath(),
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
try {
  const token = await adminToken(server.url);

  // 1. A signed-in query over HTTP with the Headers pane.
  let page = await openGraphiql(browser, server.url);
  await typeHeaders(page, `{"Authorization": "Bearer ${token}"}`);
  await setQuery(page, '{ me { email } }');
  await run(page);
  await waitForResponse(page, (t) => t.includes('admin@agentplane.local'));

  // 2. The same token reaches the websocket: the subscription streams beats.
  await setQuery(page, SUBSCRIPTION);
  await run(page);
  const first = await waitForResponse(page, (t) => t.includes('"heartbeat"'));
  const firstAt = JSON.parse(first).data.heartbeat.at;
  await waitForResponse(page, (t) => t.includes('"heartbeat"') && JSON.parse(t).data.heartbeat.at !== firstAt);
  const auth = await page.evaluate(() => window.agentplaneSocketAuthorization());
  check(auth === `Bearer ${token}`, `the socket authenticated with ${auth}`);
  if (shots) await page.screenshot({ path: `${shots}/graphiql-subscription.png` });
  await run(page); // stops the subscription
  await page.close();

  // 3. Control: without a token the subscription is refused (the socket closes 4401).
  page = await openGraphiql(browser, server.url);
  await setQuery(page, SUBSCRIPTION);
  await run(page);
  const refused = await waitForResponse(page, (t) => /4401|unauthenticated|Authorization/i.test(t));
  check(!refused.includes('"at"'), `an anonymous subscription streamed: ${refused}`);
  await page.close();
  console.log('graphiql: schema loads, Headers pane authenticates HTTP and websocket, anonymous subscription refused');
} finally {
  await browser.close();
  await server.stop();
}
