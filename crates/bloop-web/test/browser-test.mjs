// The web demo in headless Chromium against the native example (run in CI by .ci/run):
//
//   node browser-test.mjs --native SUMMARY.json [--bench-sizes K,...] [--screenshot PATH]
//
// Serves ../www from 127.0.0.1, opens it, starts a long training and checks that its losses
// show while it runs and that the stop button ends it, runs the default sweep (every method over the lambda
// grid) for the epochs and seed of SUMMARY.json (the native example's `summary.json` from
// `cargo run --release --example quadratics -- --epochs N --seed S`), and checks that every
// run's final and best main and aux losses equal the native ones within 1e-4 relative, and
// that the page ranks BLOOP's point at each lambda exactly as the native run does (first at
// the same lambdas, beaten by the same methods elsewhere). Then runs the benchmark panel at
// the given sizes (default 2^12) and checks that its JSON parses, has the bench's fields and
// a row per method and path. Saves a screenshot of the page (default web-demo.png). Last,
// opens the page with WebGPU hidden (no navigator.gpu; no adapter) and checks that it says
// "WebGPU is not available" with the hint. Exits 1
// when a check fails, 2 when the page cannot run (no WebGPU, an error), 1 after TIMEOUT_S
// seconds (default 900).
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runInBrowser } from '../../bloop-wasm/js/browser.mjs';

const TOLERANCE = 1e-4;
const METHODS = ['mixed', 'pcgrad', 'dynamic_barrier', 'bloop'];
const PATHS = ['pool', 'per-leaf'];
// The fields of a row of the throughput bench's JSON (benches/throughput/report.rs).
const ROW_FIELDS = [
  'adapter', 'backend', 'clock', 'method', 'guard', 'dtype', 'ema_dtype', 'layout', 'leaves', 'path', 'elements',
  'bytes_per_element', 'median_ms', 'min_ms', 'max_ms', 'elements_per_s', 'gbps', 'copy_gbps', 'roofline_fraction',
  'dispatches', 'pool_ratio',
];

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const nativePath = option('--native');
if (!nativePath) {
  console.error('usage: node browser-test.mjs --native SUMMARY.json [--bench-sizes K,...] [--screenshot PATH]');
  process.exit(2);
}
const native = JSON.parse(readFileSync(nativePath, 'utf8'));
const benchSizes = option('--bench-sizes', '12');
const screenshot = option('--screenshot', 'web-demo.png');
const www = fileURLToPath(new URL('../www/', import.meta.url));

const failures = [];
const check = (ok, what) => {
  if (!ok) failures.push(what);
};
const relative = (a, b) => Math.abs(a - b) / Math.abs(b);

// Sets a control's value as a visitor would.
async function fill(page, id, value) {
  await page.$eval(`#${id}`, (input, v) => {
    input.value = v;
  }, String(value));
}

async function waitFor(page, what) {
  await page.waitForFunction(
    (what) => window.bloopDemo.finished[what] > 0 || window.bloopDemo.error !== null,
    { timeout: 0, polling: 500 }, what);
  const error = await page.evaluate(() => window.bloopDemo.error);
  if (error) throw new Error(`the page reported: ${error}`);
}

await runInBrowser(www, 900, async (page, url) => {
  await page.setViewport({ width: 1200, height: 900 });
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.state !== 'loading', { timeout: 120_000 });
  const state = await page.evaluate(() => document.body.dataset.state);
  if (state !== 'idle') throw new Error(`the page did not start: ${await page.evaluate(() => window.bloopDemo.error)}`);
  console.log(`adapter: ${await page.$eval('#adapter', (p) => p.textContent)}`);

  // A long training shows its losses while it runs (the readbacks land without waiting for the
  // end), and the stop button ends it.
  await fill(page, 'epochs', 100000);
  await page.click('#train');
  await page.waitForFunction(() => /epoch [1-9]/.test(document.getElementById('status').textContent),
    { timeout: 120_000, polling: 100 });
  const shown = await page.$eval('#status', (p) => p.textContent);
  await page.click('#stop');
  await page.waitForFunction(() => document.body.dataset.state === 'idle', { timeout: 120_000 });
  const stopped = await page.$eval('#status', (p) => p.textContent);
  check(stopped === 'stopped', `the stop button: the status says "${stopped}"`);
  console.log(`a training of 100000 epochs showed "${shown}" while it ran, then "${stopped}"`);

  // The default sweep at the native run's epochs and seed.
  await fill(page, 'epochs', native.epochs);
  await fill(page, 'seed', native.seed);
  const started = Date.now();
  await page.click('#sweep');
  await waitFor(page, 'sweep');
  console.log(`sweep: ${native.epochs} epochs x 10 lambdas x 4 methods in ${((Date.now() - started) / 1e3).toFixed(1)} s`);
  const web = await page.evaluate(() => window.bloopDemo.summary());

  check(web.runs.length === native.runs.length, `${web.runs.length} runs on the page, ${native.runs.length} natively`);
  let worst = 0;
  for (const n of native.runs) {
    const w = web.runs.find((r) => r.method === n.method && relative(r.lambda, n.lambda) < 1e-12);
    if (!w) {
      failures.push(`no run of ${n.method} at lambda ${n.lambda} on the page`);
      continue;
    }
    for (const key of ['final_main', 'final_aux', 'best_main', 'best_aux']) {
      const difference = relative(w[key], n[key]);
      worst = Math.max(worst, difference);
      check(difference <= TOLERANCE, `${n.method} lambda ${n.lambda}: ${key} ${w[key]} on the page, ${n[key]} natively`);
    }
  }
  console.log(`losses: worst relative difference from the native run ${worst.toExponential(2)} (bound ${TOLERANCE})`);

  // BLOOP's point, lambda by lambda: first where the native run ranks it first.
  check(web.bloop.length === native.bloop.length, `${web.bloop.length} BLOOP points on the page, ${native.bloop.length} natively`);
  native.bloop.forEach((n, i) => {
    const w = web.bloop[i];
    check(w && relative(w.lambda, n.lambda) < 1e-12 && w.standing === n.standing,
      `BLOOP at lambda ${n.lambda}: "${w?.standing}" on the page, "${n.standing}" natively`);
  });
  check(native.bloop_first > 0, 'the native run ranks no BLOOP point first: pick more epochs');
  check(web.bloop_first === native.bloop_first && web.bloop_comparable === native.bloop_comparable,
    `BLOOP first at ${web.bloop_first} of ${web.bloop_comparable} on the page, ` +
    `${native.bloop_first} of ${native.bloop_comparable} natively`);
  console.log(`BLOOP ranks first at ${web.bloop_first} of ${web.bloop_comparable} comparable lambdas, as natively`);

  // The benchmark panel at a small size.
  await fill(page, 'sizes', benchSizes);
  await fill(page, 'steps', 10);
  await fill(page, 'rounds', 5);
  await page.click('#bench');
  await waitFor(page, 'bench');
  const json = await page.$eval('#bench-json', (t) => t.value);
  let rows = [];
  try {
    rows = JSON.parse(json);
  } catch (e) {
    failures.push(`the benchmark's JSON does not parse: ${e.message}`);
  }
  const sizes = benchSizes.split(',').map(Number);
  for (const k of sizes) {
    for (const method of METHODS) {
      for (const path of PATHS) {
        const row = rows.find((r) => r.layout === `leaf 2^${k}` && r.method === method && r.path === path);
        check(row !== undefined, `no benchmark row for ${method} through ${path} at 2^${k}`);
        if (!row) continue;
        const missing = ROW_FIELDS.filter((f) => !(f in row));
        check(missing.length === 0, `the ${method} ${path} row lacks ${missing.join(', ')}`);
        check(row.elements === 2 ** k && row.median_ms > 0 && row.gbps > 0 && row.copy_gbps > 0 &&
          Number.isFinite(row.roofline_fraction), `the ${method} ${path} row at 2^${k}: ${JSON.stringify(row)}`);
        console.log(`bench 2^${k} ${method} ${path}: ${row.median_ms.toFixed(4)} ms per step, ` +
          `${row.gbps.toFixed(3)} GB/s, ${row.roofline_fraction.toFixed(2)} of the copy kernel's ${row.copy_gbps.toFixed(3)}`);
      }
    }
  }

  await page.screenshot({ path: screenshot, fullPage: true });

  // Without WebGPU (no navigator.gpu; an adapter request that finds none) the page says so,
  // with the reason and the hint.
  const withoutWebGpu = {
    'no navigator.gpu': () => Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }),
    'no adapter': () => {
      GPU.prototype.requestAdapter = async () => null;
    },
  };
  for (const [what, hide] of Object.entries(withoutWebGpu)) {
    const bare = await page.browser().newPage();
    await bare.evaluateOnNewDocument(hide);
    await bare.goto(url);
    await bare.waitForFunction(() => document.body.dataset.state !== 'loading', { timeout: 120_000 });
    const said = await bare.$eval('#no-webgpu', (d) => (d.hidden ? '' : d.innerText));
    // The reason is the browser's, not the native build's advice to install a Vulkan driver.
    check(said.includes('WebGPU is not available') && said.includes('--enable-unsafe-webgpu') &&
      !said.includes('Vulkan driver'), `${what}: the page says "${said}"`);
    console.log(`${what}: ${said.split('\n')[0]}`);
    await bare.close();
  }

  console.log(`screenshot: ${screenshot}`);
  for (const failure of failures) console.error(`FAILED: ${failure}`);
  if (failures.length === 0) console.log('web demo: every check passed');
  return failures.length === 0 ? 0 : 1;
});
