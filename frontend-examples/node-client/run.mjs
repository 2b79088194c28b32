// Sign in, start a published workflow, and stream its events until it ends.
//
//   AGENTPLANE_URL=http://127.0.0.1:8000 AGENTPLANE_EMAIL=… AGENTPLANE_PASSWORD=… \
//     node run.mjs WORKFLOW_ID '{"name": "Ada"}'
//
// (or AGENTPLANE_TOKEN=<access token or API key> instead of e-mail and password).
// Exits 0 when the execution SUCCEEDED, 1 when it ended otherwise.
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const base = process.env.AGENTPLANE_URL || 'http://127.0.0.1:8000';
const [workflowId, inputJson = '{}'] = process.argv.slice(2);
if (!workflowId) {
  console.error('usage: node run.mjs WORKFLOW_ID [INPUT_JSON]');
  process.exit(2);
}

async function gql(query, variables, token) {
  const res = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors) {
    const e = body.errors[0];
    throw new Error(`${e.extensions?.code ?? 'ERROR'}: ${e.message}`);
  }
  return body.data;
}

let token = process.env.AGENTPLANE_TOKEN;
if (!token) {
  const data = await gql(
    'mutation($i: LoginInput!) { login(input: $i) { accessToken } }',
    { i: { email: process.env.AGENTPLANE_EMAIL, password: process.env.AGENTPLANE_PASSWORD } },
  );
  token = data.login.accessToken;
}

const started = await gql(
  'mutation($i: StartExecutionInput!) { startExecution(input: $i) { execution { id status } } }',
  { i: { workflowId, input: JSON.parse(inputJson) } },
  token,
);
const id = started.startExecution.execution.id;
console.log(`started ${id}`);

const client = createClient({
  url: `${base.replace(/^http/, 'ws')}/graphql/ws`,
  webSocketImpl: WebSocket,
  connectionParams: { Authorization: `Bearer ${token}` },
});
let final;
await new Promise((resolve, reject) => {
  client.subscribe(
    {
      query: `subscription($id: ID!) {
        executionUpdated(id: $id) { sequence kind status stepId stepStatus error }
      }`,
      variables: { id },
    },
    {
      next: ({ data, errors }) => {
        if (errors) return reject(new Error(errors.map((e) => e.message).join('; ')));
        const u = data.executionUpdated;
        const step = u.stepId ? ` ${u.stepId}=${u.stepStatus}` : '';
        console.log(`#${u.sequence} ${u.kind} ${u.status}${step}${u.error ? ` (${u.error})` : ''}`);
        final = u.status;
      },
      error: reject,
      complete: resolve, // the server completes the stream after the terminal event
    },
  );
});
await client.dispose();
console.log(`finished ${final}`);
process.exit(final === 'SUCCEEDED' ? 0 : 1);
