// Starts the real `agentplane serve` on a fresh SQLite file and a free loopback port, for
// checks that drive it with outside tools. The binary is $AGENTPLANE_BIN, else the debug
// build (`cargo build` first).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ADMIN_EMAIL = 'admin@agentplane.local';
export const ADMIN_PASSWORD = 'node-checks-admin-password';

export function binary() {
  const bin = process.env.AGENTPLANE_BIN || join(root, 'target', 'debug', 'agentplane');
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: run \`cargo build\` (or set AGENTPLANE_BIN)`);
  }
  return bin;
}

/** Starts a server; resolves to { url, stop(), output() } once it listens. */
export async function startServer({ args = [], env = {}, dir, listen = '127.0.0.1:0' } = {}) {
  const work = dir || mkdtempSync(join(tmpdir(), 'agentplane-node-'));
  let out = '';
  const child = spawn(binary(), ['serve', '--listen', listen, ...args], {
    cwd: work,
    env: {
      ...process.env,
      DATABASE_URL: `sqlite://${join(work, 'agentplane.db')}`,
      AGENTPLANE_BOOTSTRAP_ADMIN_PASSWORD: ADMIN_PASSWORD,
      AGENTPLANE_LOG_FORMAT: 'json',
      RUST_LOG: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { out += d; });
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start within 30 s:\n${out}`)), 30_000);
    const check = () => {
      const m = out.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    };
    child.stdout.on('data', check);
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`server exited ${code}:\n${out}`)); });
  });
  return {
    url,
    dir: work,
    output: () => out,
    async stop({ keep = false } = {}) {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
      if (!keep && !dir) rmSync(work, { recursive: true, force: true });
    },
  };
}

/** POSTs one GraphQL operation; returns the parsed body. */
export async function gql(url, query, variables = {}, token) {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query, variables }),
  });
  return res.json();
}

export async function adminToken(url) {
  const body = await gql(url,
    'mutation($i: LoginInput!) { login(input: $i) { accessToken } }',
    { i: { email: ADMIN_EMAIL, password: ADMIN_PASSWORD } });
  const token = body?.data?.login?.accessToken;
  if (!token) throw new Error(`login failed: ${JSON.stringify(body)}`);
  return token;
}

/** Debian's Chromium (never a downloaded browser). */
export function chromiumPath() {
  for (const p of [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (p && existsSync(p)) return p;
  }
  throw new Error('Chromium not found: apt-get install chromium (or set CHROMIUM_PATH)');
}
