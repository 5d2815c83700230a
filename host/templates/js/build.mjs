// Componentize {{name}}.js against wit/ (world `entity` of mneme:entity@0.2.0).
//   node build.mjs <output.wasm>
// Every WASI feature of the engine is disabled: mneme gives guests no WASI
// (console.log, Math.random, Date.now and fetch are unavailable).
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const { component } = await componentize({
  sourcePath: resolve(here, '{{name}}.js'),
  witPath: resolve(here, 'wit'),
  worldName: 'entity',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile(process.argv[2], component);
