// The GraphQL-over-HTTP conformance audit (npm `graphql-http`, `auditServer`) against a
// live server: every MUST and every SHOULD passes; any warning or error fails.
import { auditServer } from 'graphql-http';
import { startServer } from './server.mjs';

const server = await startServer();
let failed = 0;
try {
  const results = await auditServer({ url: `${server.url}/graphql` });
  for (const r of results) {
    if (r.status === 'ok') continue;
    const level = r.status === 'notice' ? 'notice' : 'FAIL';
    if (r.status !== 'notice') failed += 1;
    console.log(`${level} [${r.status}] ${r.name}\n    ${r.reason}`);
  }
  const ok = results.filter((r) => r.status === 'ok').length;
  console.log(`graphql-http audit: ${ok}/${results.length} ok, ${failed} warnings or errors`);
} finally {
  await server.stop();
}
process.exit(failed ? 1 : 0);
