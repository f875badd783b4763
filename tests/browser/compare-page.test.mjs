// Browser tests of the compare-two-photos page: serves dist/ from a local static server, drives
// the system's Chromium with playwright-core, and checks what a user would see: two photos of one
// person and of two people with their faces found by the page's detector, a group photo whose
// faces the user chooses between, a faceless image and a hand-marked face on the manual eye-click
// path, the largest press photos, an undecodable file, a 6000×4000 photo, one run on WebGPU, and
// that the page makes no request beyond its own files, and none at all once loaded.
// The score the page shows is held to the cosine of embeddings computed natively (the `reference`
// example) from the very crops the page made.
//
// Environment: DIST (built page), REFERENCE (native reference binary), FREXAMPLES (photos),
// ARTIFACTS (screenshots and report), CHROMIUM (browser binary).

import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { FLAGS, PHOTOS } from './chromium.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..');
const DIST = path.resolve(process.env.DIST ?? path.join(root, 'dist'));
const REFERENCE = process.env.REFERENCE ?? path.join(root, 'target', 'debug', 'examples', 'reference');
const FREXAMPLES = process.env.FREXAMPLES ?? path.resolve(root, '..', 'shared', 'data', 'frexamples');
const ARTIFACTS = path.resolve(process.env.ARTIFACTS ?? path.join(here, 'artifacts'));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

// The page's CPU path is the same code as the native reference on the same backend (flex), so
// only float summation order differs; WebGPU (SwiftShader here) reorders more.
const TOLERANCE = { cpu: 1e-4, webgpu: 2e-3 };

const report = { tests: [], timings: {}, requests: [] };

// ---------------------------------------------------------------------------------------------
// A static server for dist/.

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.css': 'text/css',
  '.safetensors': 'application/octet-stream',
};

async function serve(folder) {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://localhost');
    let file = path.join(folder, decodeURIComponent(url.pathname));
    if (!file.startsWith(folder)) {
      response.writeHead(403).end();
      return;
    }
    if (fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
    fs.readFile(file, (error, body) => {
      if (error) {
        response.writeHead(404).end('not found');
        return;
      }
      response.writeHead(200, {
        'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      });
      response.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

// ---------------------------------------------------------------------------------------------
// Helpers.

// Requests a page made after its model was ready: there must be none (photos, crops and
// models picked by the user are all handled inside the page).
const lateRequests = [];

async function openPage(context, origin, query, requests) {
  const page = await context.newPage();
  let loaded = false;
  page.on('request', (request) => {
    requests.push(request.url());
    if (loaded && !/^(data|blob):/.test(request.url())) lateRequests.push(request.url());
  });
  page.on('pageerror', (error) => console.error(`  page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') console.error(`  console: ${message.text()}`);
  });
  const start = Date.now();
  await page.goto(`${origin}/${query}`);
  await page.waitForSelector('[data-testid="model-status"][data-state="ready"]', { timeout: 180_000 });
  loaded = true;
  return { page, readyMs: Date.now() - start };
}

async function upload(page, index, name, buffer, mimeType = 'image/jpeg') {
  await page.getByTestId(`photo-input-${index}`).setInputFiles({ name, mimeType, buffer });
}

async function uploadPhoto(page, index, photo) {
  const buffer = fs.readFileSync(path.join(FREXAMPLES, photo.file));
  await upload(page, index, path.basename(photo.file), buffer);
  await page.waitForSelector(`[data-testid="photo-size-${index}"]:has-text("×")`, { timeout: 120_000 });
}

/** Waits until the pane is done reading, decoding and looking for faces; returns the boxes. */
async function detected(page, index) {
  await page.waitForFunction(
    (i) => {
      const status = document.querySelector(`[data-testid="status-${i}"]`)?.textContent ?? '';
      return !/Reading|Decoding|Looking for faces/.test(status);
    },
    index,
    { timeout: 120_000 },
  );
  const faces = await page.getByTestId(`photo-canvas-${index}`).getAttribute('data-faces');
  return JSON.parse(faces || '[]');
}

/** Clicks a point given in the working image's pixels (the canvas's own size). */
async function clickCanvas(page, index, [x, y]) {
  const canvas = page.getByTestId(`photo-canvas-${index}`);
  await canvas.scrollIntoViewIfNeeded();
  const box = await canvas.boundingBox();
  const size = await canvas.evaluate((c) => [c.width, c.height]);
  await page.mouse.click(box.x + (x / size[0]) * box.width, box.y + (y / size[1]) * box.height);
}

/** Clicks the two eyes of `photo` (given in the file's pixels) on the pane's canvas. */
async function clickEyes(page, index, photo) {
  const canvas = page.getByTestId(`photo-canvas-${index}`);
  await canvas.scrollIntoViewIfNeeded();
  const box = await canvas.boundingBox();
  const [width, height] = photo.size;
  for (const [x, y] of photo.eyes) {
    await page.mouse.click(box.x + (x / width) * box.width, box.y + (y / height) * box.height);
  }
  await page.waitForSelector(`[data-testid="crop-${index}"]`, { timeout: 60_000 });
}

/** Aligns a pane's face: by the detector when it found one, else by the eye clicks. */
async function alignFace(page, index, photo) {
  await detected(page, index);
  const status = await page.getByTestId(`status-${index}`).textContent();
  if (/eye/i.test(status ?? '')) await clickEyes(page, index, photo);
  await page.waitForSelector(`[data-testid="crop-${index}"]`, { timeout: 60_000 });
}

async function result(page) {
  await page.waitForSelector('[data-testid="verdict"]', { timeout: 180_000 });
  return page.evaluate(() => {
    const hook = window.__elasticface;
    return {
      shown: document.querySelector('[data-testid="score"]').textContent,
      score: Number(document.querySelector('[data-testid="score"]').dataset.score),
      verdict: document.querySelector('[data-testid="verdict"]').dataset.verdict,
      verdictText: document.querySelector('[data-testid="verdict"]').textContent,
      explanation: document.querySelector('[data-testid="explanation"]').textContent,
      crops: [0, 1].map((i) => document.querySelector(`[data-testid="crop-${i}"]`).src),
      hook,
    };
  });
}

/** Recomputes the crops' embeddings natively and holds the page's numbers to them. */
function checkAgainstNative(shown, label, tolerance) {
  const crops = shown.crops.map((url, i) => {
    const file = path.join(ARTIFACTS, `${label}-crop-${i}.png`);
    fs.writeFileSync(file, Buffer.from(url.replace(/^data:image\/png;base64,/, ''), 'base64'));
    return file;
  });
  const model = path.join(DIST, 'model', 'model.safetensors');
  const run = spawnSync(REFERENCE, ['embed', model, ...crops], { encoding: 'utf8' });
  assert.equal(run.status, 0, `reference failed: ${run.stderr}`);
  const native = JSON.parse(run.stdout);

  assert.ok(
    Math.abs(shown.score - native.score) <= tolerance,
    `page score ${shown.score} vs native ${native.score} (tolerance ${tolerance})`,
  );
  let worst = 0;
  shown.hook.panes.forEach((pane, i) => {
    pane.embedding.forEach((value, j) => {
      worst = Math.max(worst, Math.abs(value - native.embeddings[i][j]));
    });
  });
  assert.ok(worst <= tolerance * 10, `embeddings differ by up to ${worst}`);
  assert.equal(shown.shown, shown.score.toFixed(3), 'the score shown is the computed one');

  // The verdict is the card's threshold applied to that score.
  const card = shown.hook.model.card;
  if (card.threshold != null) {
    const line = 1 - card.threshold / 2;
    assert.equal(shown.verdict, shown.score >= line ? 'same' : 'different');
  }
  return { native: native.score, worstEmbeddingDifference: worst };
}

// Below this held-out accuracy a model gets single pairs wrong often enough that asserting its
// verdict on one pair would test the model rather than the page. Under it, the verdict is only
// held to the score and the threshold (checkAgainstNative), and the report says so.
const VERDICT_BAR = 0.95;

function isTrained(hook) {
  return !/untrained/i.test(hook.model.card.trained_with ?? '');
}

/** Whether the model in use is good enough for its verdict on one pair to be asserted. */
function verdictAsserted(hook) {
  return isTrained(hook) && (hook.model.card.accuracy ?? 0) >= VERDICT_BAR;
}

async function test(name, body) {
  const start = Date.now();
  try {
    const details = await body();
    report.tests.push({ name, ok: true, ms: Date.now() - start, ...details });
    console.log(`ok   ${name} (${Date.now() - start} ms)`);
  } catch (error) {
    report.tests.push({ name, ok: false, ms: Date.now() - start, error: String(error) });
    console.log(`FAIL ${name}\n     ${String(error.stack ?? error).split('\n').join('\n     ')}`);
  }
}

async function launch(extraFlags) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'elasticface-chromium-'));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...FLAGS, ...extraFlags],
    viewport: { width: 1280, height: 1000 },
  });
}

// ---------------------------------------------------------------------------------------------
// The scenarios.

async function main() {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  assert.ok(fs.existsSync(path.join(DIST, 'index.html')), `no built page in ${DIST}`);
  const { server, origin } = await serve(DIST);
  const requests = [];

  const context = await launch([]);
  const { page, readyMs } = await openPage(context, origin, '?backend=cpu', requests);
  report.timings.loadToModelReadyMs = readyMs;

  await test('the page loads, names its backend and model', async () => {
    const backend = await page.getByTestId('backend').getAttribute('data-backend');
    assert.equal(backend, 'cpu');
    const status = await page.getByTestId('model-status').textContent();
    assert.match(status, /mobilefacenet|iresnet/);
    await page.screenshot({ path: path.join(ARTIFACTS, '01-loaded.png'), fullPage: true });
    return { status };
  });

  await test('an undecodable file gets a clear message', async () => {
    await upload(page, 0, 'broken.jpg', Buffer.from('this is not a photo'));
    const error = page.getByTestId('error-0');
    await error.waitFor({ state: 'visible', timeout: 30_000 });
    const text = await error.textContent();
    assert.match(text, /broken\.jpg cannot be used/);
    await page.screenshot({ path: path.join(ARTIFACTS, '02-undecodable.png'), fullPage: true });
    return { message: text };
  });

  await test('two photos of one person: faces found, crops, score and verdict', async () => {
    await uploadPhoto(page, 0, PHOTOS.personA1);
    await uploadPhoto(page, 1, PHOTOS.personA2);
    await page.screenshot({ path: path.join(ARTIFACTS, '03-photos-loaded.png'), fullPage: true });
    const found = [await detected(page, 0), await detected(page, 1)];
    assert.deepEqual(found.map((f) => f.length), [1, 1], 'one face found in each portrait');
    await alignFace(page, 0, PHOTOS.personA1);
    await alignFace(page, 1, PHOTOS.personA2);
    const shown = await result(page);
    await page.screenshot({ path: path.join(ARTIFACTS, '04-same-person.png'), fullPage: true });
    const check = checkAgainstNative(shown, 'same', TOLERANCE.cpu);
    report.timings.cpuEmbeddingMs = shown.hook.panes.map((p) => p.millis);
    const asserted = verdictAsserted(shown.hook);
    if (asserted) assert.equal(shown.verdict, 'same');
    return { score: shown.score, verdict: shown.verdict, expected: 'same', asserted, ...check };
  });

  await test('two different people: another score and the verdict', async () => {
    await uploadPhoto(page, 1, PHOTOS.personB1);
    await alignFace(page, 1, PHOTOS.personB1);
    const shown = await result(page);
    await page.screenshot({ path: path.join(ARTIFACTS, '05-different-people.png'), fullPage: true });
    const check = checkAgainstNative(shown, 'different', TOLERANCE.cpu);
    const asserted = verdictAsserted(shown.hook);
    if (asserted) assert.equal(shown.verdict, 'different');
    return { score: shown.score, verdict: shown.verdict, expected: 'different', asserted, ...check };
  });

  await test('a photo of several people: every face is boxed and the clicked one is compared', async () => {
    const buffer = fs.readFileSync(path.join(FREXAMPLES, 'multi_face', 'two_people.jpg'));
    await upload(page, 1, 'two_people.jpg', buffer);
    const faces = await detected(page, 1);
    assert.ok(faces.length >= 2, `${faces.length} faces found`);
    const status = await page.getByTestId('status-1').textContent();
    assert.match(status, /faces found: click the one/);
    // Choose the second face: its box turns green and its crop is compared.
    const [left, top, right, bottom] = faces[1];
    await clickCanvas(page, 1, [(left + right) / 2, (top + bottom) / 2]);
    await page.waitForSelector('[data-testid="crop-1"]', { timeout: 60_000 });
    const shown = await result(page);
    await page.screenshot({ path: path.join(ARTIFACTS, '06-several-people.png'), fullPage: true });
    const check = checkAgainstNative(shown, 'several', TOLERANCE.cpu);
    return { faces: faces.length, score: shown.score, ...check };
  });

  await test('a photo with no face takes the manual path: two clicks on the eyes', async () => {
    // A smooth gradient with no face in it, drawn in the browser.
    const base64 = await page.evaluate(async () => {
      const canvas = new OffscreenCanvas(800, 600);
      const context = canvas.getContext('2d');
      const gradient = context.createLinearGradient(0, 0, 800, 600);
      gradient.addColorStop(0, '#2b4c7e');
      gradient.addColorStop(1, '#e0c9a6');
      context.fillStyle = gradient;
      context.fillRect(0, 0, 800, 600);
      const blob = await canvas.convertToBlob({ type: 'image/png' });
      const out = new Uint8Array(await blob.arrayBuffer());
      let binary = '';
      for (let i = 0; i < out.length; i += 0x8000) binary += String.fromCharCode(...out.subarray(i, i + 0x8000));
      return btoa(binary);
    });
    await upload(page, 1, 'no-face.png', Buffer.from(base64, 'base64'), 'image/png');
    await page.waitForSelector('[data-testid="photo-size-1"]:has-text("800×600")', { timeout: 60_000 });
    const faces = await detected(page, 1);
    assert.equal(faces.length, 0);
    const status = await page.getByTestId('status-1').textContent();
    assert.match(status, /No face was found\. Click the centre of each eye/);
    await page.screenshot({ path: path.join(ARTIFACTS, '07-no-face.png'), fullPage: true });
    await clickCanvas(page, 1, [360, 280]);
    assert.match(await page.getByTestId('status-1').textContent(), /other eye/);
    await clickCanvas(page, 1, [440, 280]);
    await page.waitForSelector('[data-testid="crop-1"]', { timeout: 60_000 });
    const shown = await result(page);
    await page.screenshot({ path: path.join(ARTIFACTS, '08-no-face-marked.png'), fullPage: true });
    const check = checkAgainstNative(shown, 'manual', TOLERANCE.cpu);
    return { score: shown.score, ...check };
  });

  await test('the eyes can be marked by hand on a photo whose face was found', async () => {
    await uploadPhoto(page, 1, PHOTOS.personA2);
    await detected(page, 1);
    await page.waitForSelector('[data-testid="crop-1"]', { timeout: 60_000 });
    const detectedCrop = await page.getByTestId('crop-1').getAttribute('src');
    await page.getByTestId('manual-1').click();
    await clickEyes(page, 1, PHOTOS.personA2);
    await page.waitForFunction(
      (before) => document.querySelector('[data-testid="crop-1"]')?.src !== before,
      detectedCrop,
      { timeout: 60_000 },
    );
    const shown = await result(page);
    const check = checkAgainstNative(shown, 'marked', TOLERANCE.cpu);
    const asserted = verdictAsserted(shown.hook);
    if (asserted) assert.equal(shown.verdict, 'same');
    return { score: shown.score, verdict: shown.verdict, expected: 'same', asserted, ...check };
  });

  await test('the largest press photos: faces found, page responsive', async () => {
    const folder = path.join(FREXAMPLES, '..', 'photos');
    const largest = fs
      .readdirSync(folder)
      .filter((name) => name.endsWith('.jpg'))
      .map((name) => ({ name, bytes: fs.statSync(path.join(folder, name)).size }))
      .sort((a, b) => b.bytes - a.bytes)
      .slice(0, 3);
    const seen = [];
    for (const { name, bytes } of largest) {
      const start = Date.now();
      await upload(page, 1, name, fs.readFileSync(path.join(folder, name)));
      await page.waitForSelector(`[data-testid="photo-size-1"]:has-text("${name}")`, { timeout: 120_000 });
      const faces = await detected(page, 1);
      assert.ok(faces.length >= 1, `${name}: no face found`);
      seen.push({ name, bytes, faces: faces.length, ms: Date.now() - start });
    }
    await page.screenshot({ path: path.join(ARTIFACTS, '09-press-photo.png'), fullPage: true });
    return { photos: seen };
  });

  await test('a model file from the picker replaces the built-in one; a bad one is refused', async () => {
    const before = await result(page);
    await page.getByTestId('model-input').setInputFiles({
      name: 'not-a-model.safetensors',
      mimeType: 'application/octet-stream',
      buffer: Buffer.from('nothing of the sort'),
    });
    await page.waitForSelector('[data-testid="model-error"]:has-text("not-a-model.safetensors was not loaded")');
    const model = fs.readFileSync(path.join(DIST, 'model', 'model.safetensors'));
    await page.getByTestId('model-input').setInputFiles({
      name: 'my-model.safetensors',
      mimeType: 'application/octet-stream',
      buffer: model,
    });
    await page.waitForSelector('[data-testid="model-status"]:has-text("my-model.safetensors")');
    await page.waitForFunction(() => window.__elasticface?.model?.version === 2 && window.__elasticface.score !== null);
    const after = await result(page);
    // The same weights give the same score, recomputed with the new model.
    assert.ok(Math.abs(after.score - before.score) < 1e-6, `${after.score} vs ${before.score}`);
    return { score: after.score };
  });

  await test('a 6000×4000 photo is shrunk and used without hanging the page', async () => {
    const photo = PHOTOS.personA1;
    const source = fs.readFileSync(path.join(FREXAMPLES, photo.file)).toString('base64');
    // Draw the portrait into a 6000×4000 JPEG inside the browser (no image library needed).
    const huge = await page.evaluate(async (base64) => {
      const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
      const bitmap = await createImageBitmap(new Blob([bytes], { type: 'image/jpeg' }));
      const canvas = new OffscreenCanvas(6000, 4000);
      const context = canvas.getContext('2d');
      context.fillStyle = '#7a8699';
      context.fillRect(0, 0, 6000, 4000);
      const scale = 4000 / bitmap.height;
      const left = (6000 - bitmap.width * scale) / 2;
      context.drawImage(bitmap, left, 0, bitmap.width * scale, 4000);
      const blob = await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.92 });
      const out = new Uint8Array(await blob.arrayBuffer());
      let binary = '';
      for (let i = 0; i < out.length; i += 0x8000) binary += String.fromCharCode(...out.subarray(i, i + 0x8000));
      return { base64: btoa(binary), scale, left };
    }, source);
    const buffer = Buffer.from(huge.base64, 'base64');
    const eyes = photo.eyes.map(([x, y]) => [huge.left + x * huge.scale, y * huge.scale]);
    const big = { file: 'huge.jpg', size: [6000, 4000], eyes };

    const start = Date.now();
    await upload(page, 0, 'huge.jpg', buffer);
    await page.waitForSelector('[data-testid="photo-size-0"]:has-text("6000×4000")', { timeout: 120_000 });
    const decodeMs = Date.now() - start;
    // The page answers promptly once the photo is in.
    const ping = Date.now();
    await page.evaluate(() => 1);
    const answerMs = Date.now() - ping;
    assert.ok(answerMs < 1000, `the page took ${answerMs} ms to answer`);
    const width = await page.getByTestId('photo-canvas-0').evaluate((c) => c.width);
    assert.ok(width <= 1600, `working image is ${width} pixels wide`);
    await alignFace(page, 0, big);
    const shown = await result(page);
    await page.screenshot({ path: path.join(ARTIFACTS, '10-huge-photo.png'), fullPage: true });
    report.timings.hugePhotoDecodeMs = decodeMs;
    return { bytes: buffer.length, decodeMs, workingWidth: width, score: shown.score };
  });

  await context.close();

  await test('WebGPU: the same pair on the GPU backend matches the native score', async () => {
    const gpuContext = await launch(['--enable-unsafe-webgpu']);
    try {
      const { page: gpuPage, readyMs: gpuReady } = await openPage(gpuContext, origin, '', requests);
      report.timings.webgpuLoadToModelReadyMs = gpuReady;
      const backend = await gpuPage.getByTestId('backend').getAttribute('data-backend');
      const label = await gpuPage.getByTestId('backend').textContent();
      assert.equal(backend, 'webgpu', `the page ran on: ${label}`);
      await uploadPhoto(gpuPage, 0, PHOTOS.personA1);
      await uploadPhoto(gpuPage, 1, PHOTOS.personA2);
      await alignFace(gpuPage, 0, PHOTOS.personA1);
      await alignFace(gpuPage, 1, PHOTOS.personA2);
      const shown = await result(gpuPage);
      await gpuPage.screenshot({ path: path.join(ARTIFACTS, '11-webgpu.png'), fullPage: true });
      const check = checkAgainstNative(shown, 'webgpu', TOLERANCE.webgpu);
      report.timings.webgpuEmbeddingMs = shown.hook.panes.map((p) => p.millis);
      return { score: shown.score, backend: label, ...check };
    } finally {
      await gpuContext.close();
    }
  });

  await test('no request leaves the page: only its own files, and nothing after loading', async () => {
    report.requests = [...new Set(requests)];
    const foreign = requests.filter((url) => !url.startsWith(origin) && !/^(data|blob):/.test(url));
    assert.deepEqual(foreign, []);
    assert.deepEqual(lateRequests, [], 'requests after the page had loaded');
    return { distinct: report.requests.length };
  });

  server.close();
  fs.writeFileSync(path.join(ARTIFACTS, 'report.json'), JSON.stringify(report, null, 2));
  const failed = report.tests.filter((t) => !t.ok).length;
  console.log(`${report.tests.length - failed} passed, ${failed} failed; artifacts in ${ARTIFACTS}`);
  process.exit(failed ? 1 : 0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
