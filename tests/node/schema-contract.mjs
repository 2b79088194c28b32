// The schema contract: `schema.graphql` against the last released schema
// (`schema.baseline.graphql`). A breaking change fails unless the field or value was
// deprecated in the baseline first (deprecate, release, then remove). Dangerous changes
// are listed; safe ones are counted.
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSchema } from 'graphql';
import { diff, CriticalityLevel } from '@graphql-inspector/core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const [basePath, nextPath] = process.argv.slice(2).length === 2
  ? process.argv.slice(2)
  : [join(root, 'schema.baseline.graphql'), join(root, 'schema.graphql')];
const base = buildSchema(readFileSync(basePath, 'utf8'));
const next = buildSchema(readFileSync(nextPath, 'utf8'));

/** Whether the baseline deprecated what a breaking change removes. */
function deprecatedInBase(change) {
  const path = change.path || '';
  const [typeName, member] = path.split('.');
  const type = base.getType(typeName);
  if (!type || !member) return false;
  if (typeof type.getFields === 'function') {
    const field = type.getFields()[member];
    return Boolean(field && field.deprecationReason);
  }
  if (typeof type.getValue === 'function') {
    const value = type.getValue(member);
    return Boolean(value && value.deprecationReason);
  }
  return false;
}

const changes = await diff(base, next);
const breaking = changes.filter((c) => c.criticality.level === CriticalityLevel.Breaking);
const refused = breaking.filter((c) => !deprecatedInBase(c));
const dangerous = changes.filter((c) => c.criticality.level === CriticalityLevel.Dangerous);
for (const c of dangerous) console.log(`dangerous: ${c.message}`);
for (const c of breaking.filter(deprecatedInBase)) console.log(`removed after deprecation: ${c.message}`);
for (const c of refused) console.log(`BREAKING: ${c.message}`);
console.log(`schema contract: ${changes.length} changes against ${basePath.replace(root + '/', '')}, `
  + `${refused.length} breaking without deprecation, ${dangerous.length} dangerous`);
process.exit(refused.length ? 1 : 0);
