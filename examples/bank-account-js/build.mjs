// Componentize bank-account.js against wit/entity.wit (world `entity-with-fast-paths` of
// mneme:entity@0.2.0: `entity` with the optional `decide` and `replay` exports) with ComponentizeJS.
//   node build.mjs <output.wasm>
// All of the engine's WASI features are disabled, so the component needs no WASI
// capability at run time (console.log, Math.random, Date.now and fetch are unavailable).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs <output.wasm>');
  process.exit(2);
}

const { component, imports } = await componentize({
  sourcePath: resolve(here, 'bank-account.js'),
  witPath: resolve(here, '../../wit/entity.wit'),
  worldName: 'entity-with-fast-paths',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(out, component);
console.log(`guest imports used: ${JSON.stringify(imports)}`);
