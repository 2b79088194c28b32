// The example clients in frontend-examples/ (Node.js and Python) against a real server:
// each signs in, starts a workflow and streams its events to SUCCEEDED.
import { spawnSync } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, adminToken, gql } from './server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const OWNER = { email: 'owner@clients.example', password: 'clients-owner-password' };

async function must(p, what) {
  const body = await p;
  if (body.errors) throw new Error(`${what}: ${JSON.stringify(body.errors)}`);
  return body.data;
}

const server = await startServer();
let failed = false;
try {
  const admin = await adminToken(server.url);
  const t = await must(gql(server.url,
    'mutation($i: CreateTenantInput!) { createTenant(input: $i) { setPasswordToken } }',
    { i: { slug: 'clients', name: 'Clients', plan: 'PRO', owner: { email: OWNER.email, displayName: 'O' } } },
    admin), 'createTenant');
  await must(gql(server.url, 'mutation($i: SetPasswordInput!) { setPassword(input: $i) { ok } }',
    { i: { token: t.createTenant.setPasswordToken, password: OWNER.password } }), 'setPassword');
  const token = (await must(gql(server.url,
    'mutation($i: LoginInput!) { login(input: $i) { accessToken } }', { i: OWNER }), 'login')).login.accessToken;
  const wf = (await must(gql(server.url,
    'mutation($i: CreateWorkflowInput!) { createWorkflow(input: $i) { workflow { id } } }',
    { i: { name: 'hello', definition: { steps: [
      { id: 'greet', kind: 'transform', config: { template: '"Hello, {{ input.name }}"' } },
      { id: 'pause', kind: 'delay', dependsOn: ['greet'], config: { ms: 200 } },
    ] } } }, token), 'createWorkflow')).createWorkflow.workflow.id;
  await must(gql(server.url, 'mutation($i: WorkflowIdInput!) { publishWorkflow(input: $i) { version { version } } }',
    { i: { workflowId: wf } }, token), 'publishWorkflow');

  const env = { ...process.env, AGENTPLANE_URL: server.url, AGENTPLANE_EMAIL: OWNER.email, AGENTPLANE_PASSWORD: OWNER.password };
  for (const [name, cmd, args] of [
    ['node-client', 'node', [join(root, 'frontend-examples/node-client/run.mjs'), wf, '{"name": "Ada"}']],
    ['python-client', 'python3', [join(root, 'frontend-examples/python-client/run.py'), wf, '{"name": "Ada"}']],
  ]) {
    const out = spawnSync(cmd, args, { env, encoding: 'utf8', timeout: 60_000 });
    const text = `${out.stdout}${out.stderr}`;
    const ok = out.status === 0 && text.includes('finished SUCCEEDED') && text.includes('STATUS_CHANGED SUCCEEDED');
    console.log(`${ok ? 'ok' : 'FAIL'} ${name}${ok ? '' : `\n${text}`}`);
    failed ||= !ok;
  }
} finally {
  await server.stop();
}
process.exit(failed ? 1 : 0);
