// Times the embedding of ONE aligned face in headless Chromium, for two models:
//   1. face-api's recognition network (@vladmandic/face-api, a ResNet-34-like net giving 128
//      numbers from a 150×150 crop), on every tfjs backend that starts here: cpu, wasm, webgl,
//      webgpu;
//   2. our ElasticFace page (dist/), on its CPU (flex, WASM) and WebGPU backends.
// Warm-up runs are dropped; the table shows the median and the minimum of the rest, in
// milliseconds per face. Everything is served from 127.0.0.1; any other request is refused.
// Besides face-api, node_modules holds tfjs's wasm binaries and its webgpu backend (same tfjs
// version as face-api's bundle), which the bundle lacks.
//
// Environment: RUNS (timed runs, default 10), WARMUP (default 2), FACE (a 150×150 face image),
// FREXAMPLES (photos for our page), DIST (built page), CHROMIUM (browser binary), ONLY
// ("face-api" or "ours" to run one half).

import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { FLAGS as TEST_FLAGS, PHOTOS } from '../../tests/browser/chromium.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const modules = path.join(here, 'node_modules');
const data = path.resolve(root, '..', 'shared', 'data');
const FACE = path.resolve(process.env.FACE ?? path.join(data, 'lfw150', 'id0001', '0001.jpg'));
const FREXAMPLES = path.resolve(process.env.FREXAMPLES ?? path.join(data, 'frexamples'));
const DIST = path.resolve(process.env.DIST ?? path.join(root, 'dist'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const RUNS = Number(process.env.RUNS ?? 10);
const WARMUP = Number(process.env.WARMUP ?? 2);
const ONLY = process.env.ONLY ?? '';
const OUTPUT = path.join(here, 'results.json');

// The browser tests' flags, plus WebGPU on Chromium's own software adapter.
const FLAGS = [...TEST_FLAGS, '--enable-unsafe-webgpu'];

// Our page's test pair (eye marks used only when the detector does not align the face).
const PAIR = [PHOTOS.personA1, PHOTOS.personA2];

const results = [];

// ---------------------------------------------------------------------------------------------
// A static file server: URL prefixes mapped to folders (or to single files).

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.jpg': 'image/jpeg',
  '.png': 'image/png',
};

async function serve(mounts, headers = {}) {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost');
    const pathname = decodeURIComponent(url.pathname);
    // The longest matching prefix wins.
    const prefix = Object.keys(mounts)
      .filter((p) => pathname === p || pathname.startsWith(p.endsWith('/') ? p : `${p}/`))
      .sort((a, b) => b.length - a.length)[0];
    if (prefix === undefined) return response.writeHead(404).end('not found');
    const base = mounts[prefix];
    let file = path.join(base, pathname.slice(prefix.length));
    if (!file.startsWith(base)) return response.writeHead(403).end();
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    fs.readFile(file, (error, body) => {
      if (error) return response.writeHead(404).end('not found');
      response.writeHead(200, {
        'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
        ...headers,
      });
      response.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

async function launch() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'elasticface-bench-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1280, height: 1000 },
  });
  // Nothing may leave the machine: refuse (and remember) any request not to 127.0.0.1.
  const foreign = [];
  await context.route(
    (url) => !/^(http:\/\/127\.0\.0\.1[:/]|data:|blob:)/.test(url.href),
    (route) => {
      foreign.push(route.request().url());
      return route.abort();
    },
  );
  return { context, foreign };
}

function watch(page, label) {
  page.on('pageerror', (error) => console.error(`  [${label}] page error: ${error.message}`));
  page.on('console', (message) => {
    // tfjs reports a backend that fails to start as a warning.
    if (['error', 'warning'].includes(message.type())) console.error(`  [${label}] console: ${message.text()}`);
  });
}

function summarize(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  return { medianMs: median, minMs: sorted[0], runs: sorted.length };
}

// ---------------------------------------------------------------------------------------------
// 1. face-api's recognition net.

// The bench page: face-api's browser bundle (with tfjs inside) and the face, nothing else.
const FACE_API_PAGE = `<!doctype html>
<meta charset="utf-8">
<title>face-api embedding bench</title>
<img id="face" src="/face.jpg">
<script type="module">
  import * as faceapi from '/face-api/face-api.esm.js';
  window.faceapi = faceapi;
  window.benchReady = true;
</script>`;

// Runs inside the page: picks the tfjs backend, loads the recognition weights from the package's
// model/ folder, then times computeFaceDescriptor (which ends by reading the 128 numbers back, so
// GPU backends are timed to completion).
async function faceApiInPage({ backend, runs, warmup }) {
  const { faceapi } = window;
  const tf = faceapi.tf;
  // face-api's bundle holds tfjs's wasm backend but not its .wasm binaries: they come from
  // @tensorflow/tfjs-backend-wasm of the same version (4.22.0), served from node_modules.
  if (backend === 'wasm') tf.setWasmPaths('/tfjs-wasm/');
  if (backend === 'webgpu') {
    if (!navigator.gpu) throw new Error('navigator.gpu is missing');
    // The bundle has no webgpu backend. @tensorflow/tfjs-backend-webgpu's UMD file registers
    // itself with a global `tf`: hand it face-api's own tfjs (a plain copy: module namespaces
    // cannot be extended). Its ES2017 build is needed, as the ES5 one cannot subclass the
    // bundle's class-based KernelBackend ("Class constructor … cannot be invoked without 'new'").
    window.tf = { ...tf };
    await new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = '/tfjs-webgpu/tf-backend-webgpu.es2017.min.js';
      script.onload = resolve;
      script.onerror = () => reject(new Error('cannot load tf-backend-webgpu'));
      document.head.append(script);
    });
  }
  if (!(await tf.setBackend(backend))) throw new Error(`tf.setBackend('${backend}') returned false`);
  await tf.ready();
  if (tf.getBackend() !== backend) throw new Error(`tfjs runs on ${tf.getBackend()}`);
  await faceapi.nets.faceRecognitionNet.loadFromUri('/model');

  const image = document.getElementById('face');
  await image.decode();
  const samples = [];
  let descriptor;
  for (let i = 0; i < warmup + runs; i += 1) {
    const start = performance.now();
    descriptor = await faceapi.computeFaceDescriptor(image);
    const ms = performance.now() - start;
    if (i >= warmup) samples.push(ms);
  }
  // What the backend ran on, for the table's note.
  let note = '';
  if (backend === 'wasm') {
    const simd = tf.env().getBool('WASM_HAS_SIMD_SUPPORT') ? 'SIMD' : 'no SIMD';
    const threads = tf.getThreadsCount();
    note = `${simd}, ${threads} thread${threads === 1 ? '' : 's'}`;
  } else if (backend === 'webgl') {
    const gl = document.createElement('canvas').getContext('webgl2');
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    note = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    note = /swiftshader/i.test(note) ? 'WebGL2 on SwiftShader' : note;
  } else if (backend === 'webgpu') {
    const adapter = await navigator.gpu.requestAdapter();
    note = `adapter ${adapter.info.vendor} ${adapter.info.architecture}`;
  }
  return {
    samples,
    descriptorLength: descriptor.length,
    descriptorHead: Array.from(descriptor.slice(0, 4)),
    image: [image.naturalWidth, image.naturalHeight],
    tfjs: tf.version_core ?? tf.version?.['tfjs-core'],
    note,
  };
}

async function benchFaceApi(context) {
  const pkg = JSON.parse(fs.readFileSync(path.join(modules, '@vladmandic/face-api/package.json')));
  const modelDir = path.join(modules, '@vladmandic/face-api/model');
  const weights = path.join(modelDir, 'face_recognition_model.bin');
  console.log(`face-api ${pkg.version}; face ${FACE}`);
  if (!fs.existsSync(weights) || !fs.existsSync(path.join(modelDir, 'face_recognition_model-weights_manifest.json'))) {
    console.log(`face-api ${pkg.version} does not ship the recognition model weights in model/: skipped`);
    return pkg.version;
  }
  console.log(`recognition weights: ${weights} (${fs.statSync(weights).size} bytes)`);

  const pageFile = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'face-api-bench-')), 'index.html');
  fs.writeFileSync(pageFile, FACE_API_PAGE);
  const { server, origin } = await serve(
    {
      '/index.html': pageFile,
      '/face.jpg': FACE,
      '/face-api': path.join(modules, '@vladmandic/face-api/dist'),
      '/model': modelDir,
      '/tfjs-wasm': path.join(modules, '@tensorflow/tfjs-backend-wasm/dist'),
      '/tfjs-webgpu': path.join(modules, '@tensorflow/tfjs-backend-webgpu/dist'),
    },
    // Cross-origin isolation lets the wasm backend use threads (SharedArrayBuffer).
    { 'cross-origin-opener-policy': 'same-origin', 'cross-origin-embedder-policy': 'require-corp' },
  );

  for (const backend of ['cpu', 'wasm', 'webgl', 'webgpu']) {
    // A fresh page per backend: a fresh tfjs engine, nothing kept from the previous one.
    const page = await context.newPage();
    watch(page, `face-api ${backend}`);
    const entry = { model: `face-api ${pkg.version} faceRecognitionNet`, backend };
    try {
      await page.goto(`${origin}/index.html`);
      await page.waitForFunction(() => window.benchReady === true, null, { timeout: 60_000 });
      const run = await page.evaluate(faceApiInPage, { backend, runs: RUNS, warmup: WARMUP });
      Object.assign(entry, { ok: true, ...summarize(run.samples), warmup: WARMUP, ...run });
    } catch (error) {
      Object.assign(entry, { ok: false, error: String(error.message ?? error).split('\n')[0] });
    }
    results.push(entry);
    console.log(entry.ok ? `  ${backend}: ${entry.medianMs.toFixed(1)} ms` : `  ${backend}: FAILED ${entry.error}`);
    await page.close();
  }
  server.close();
  return pkg.version;
}

// ---------------------------------------------------------------------------------------------
// 2. Our page: upload the same pair again and again; every upload aligns and embeds anew.

/** Uploads `photo` into pane `index`, aligns it and returns the page's embedding time. */
async function embedOnce(page, index, photo) {
  // Remember the published pane, so that only a newer embedding counts.
  await page.evaluate((i) => {
    window.__benchPrevious = window.__elasticface?.panes?.[i] ?? null;
  }, index);
  const buffer = fs.readFileSync(path.join(FREXAMPLES, photo.file));
  await page.getByTestId(`photo-input-${index}`).setInputFiles({
    name: path.basename(photo.file),
    mimeType: 'image/jpeg',
    buffer,
  });
  let clicked = false;
  for (;;) {
    const state = await (
      await page.waitForFunction(
        ({ i, clicked }) => {
          const pane = window.__elasticface?.panes?.[i];
          if (pane && pane !== window.__benchPrevious) return { done: pane.millis };
          const error = document.querySelector(`[data-testid="error-${i}"]`)?.textContent;
          if (error) return { error };
          const status = document.querySelector(`[data-testid="status-${i}"]`)?.textContent ?? '';
          // No face found (click both eyes) or several (click the one whose eyes we know).
          if (!clicked && /eye|faces found/i.test(status)) return { click: status };
          return false;
        },
        { i: index, clicked },
        { timeout: 300_000 },
      )
    ).jsonValue();
    if (state.error) throw new Error(`pane ${index}: ${state.error}`);
    if (state.done !== undefined) return state.done;
    const canvas = page.getByTestId(`photo-canvas-${index}`);
    await canvas.scrollIntoViewIfNeeded();
    const box = await canvas.boundingBox();
    const [width, height] = photo.size;
    const eyes = /eye/i.test(state.click) ? photo.eyes : photo.eyes.slice(0, 1);
    for (const [x, y] of eyes) {
      await page.mouse.click(box.x + (x / width) * box.width, box.y + (y / height) * box.height);
    }
    clicked = true;
  }
}

async function benchOurs(context) {
  if (!fs.existsSync(path.join(DIST, 'index.html'))) {
    console.log(`our page is not built (no ${path.join(DIST, 'index.html')}): run scripts/web-build.sh; skipped`);
    results.push({ model: 'elasticface (page)', backend: '-', ok: false, skipped: true, error: 'dist/index.html missing' });
    return;
  }
  const { server, origin } = await serve({ '/': DIST });
  // `?backend=cpu` forces flex on WASM; without it the page takes WebGPU when it is there.
  for (const [backend, query] of [['cpu', '?backend=cpu'], ['webgpu', '']]) {
    const page = await context.newPage();
    watch(page, `ours ${backend}`);
    const entry = { model: 'elasticface', backend };
    try {
      await page.goto(`${origin}/${query}`);
      await page.waitForSelector('[data-testid="model-status"][data-state="ready"]', { timeout: 300_000 });
      const actual = await page.getByTestId('backend').getAttribute('data-backend');
      const label = (await page.getByTestId('backend').textContent())?.trim();
      if (actual !== backend) throw new Error(`the page runs on ${actual} (${label})`);
      const hook = await page.evaluate(() => window.__elasticface);
      const architecture = hook?.model?.card?.backbone?.architecture;
      if (architecture) entry.model = `elasticface ${architecture}`;
      // Each pair upload embeds two faces; the first WARMUP faces are dropped.
      const samples = [];
      const pairs = Math.ceil((WARMUP + RUNS) / 2);
      for (let p = 0; p < pairs; p += 1) {
        for (const [index, photo] of PAIR.entries()) samples.push(await embedOnce(page, index, photo));
      }
      const timed = samples.slice(WARMUP, WARMUP + RUNS);
      Object.assign(entry, { ok: true, ...summarize(timed), warmup: WARMUP, samples: timed, note: label });
    } catch (error) {
      Object.assign(entry, { ok: false, error: String(error.message ?? error).split('\n')[0] });
    }
    results.push(entry);
    console.log(entry.ok ? `  ours ${backend}: ${entry.medianMs.toFixed(1)} ms` : `  ours ${backend}: FAILED ${entry.error}`);
    await page.close();
  }
  server.close();
}

// ---------------------------------------------------------------------------------------------

function table(rows) {
  const head = ['model', 'backend', 'ms/face median', 'min', 'runs', 'note'];
  const body = rows.map((r) =>
    r.ok
      ? [r.model, r.backend, r.medianMs.toFixed(1), r.minMs.toFixed(1), String(r.runs), r.note ?? '']
      : [r.model, r.backend, '-', '-', '0', `${r.skipped ? 'skipped' : 'failed'}: ${r.error}`],
  );
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((row) => row[i].length)));
  const line = (row) => row.map((cell, i) => cell.padEnd(widths[i])).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n');
}

async function main() {
  const { context, foreign } = await launch();
  const probe = await context.newPage();
  const userAgent = await probe.evaluate(() => navigator.userAgent);
  await probe.close();
  const browser = userAgent.match(/Chrome\/[\d.]+/)?.[0] ?? userAgent;
  console.log(`${browser}, ${os.cpus().length} CPU cores; ${WARMUP} warm-up + ${RUNS} timed runs`);

  let faceApiVersion = null;
  if (ONLY !== 'ours') faceApiVersion = await benchFaceApi(context);
  if (ONLY !== 'face-api') await benchOurs(context);
  await context.close();

  console.log(`\n${table(results)}`);
  if (foreign.length) console.log(`refused requests beyond 127.0.0.1: ${[...new Set(foreign)].join(', ')}`);
  fs.writeFileSync(
    OUTPUT,
    JSON.stringify(
      { date: new Date().toISOString(), browser, cpus: os.cpus().length, faceApiVersion, face: FACE, flags: FLAGS, foreignRequests: foreign, results },
      null,
      2,
    ),
  );
  console.log(`results: ${OUTPUT}`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
