// The page: opens WebGPU through the wasm module (pkg/, built by ../build.sh), trains on the
// controls' settings, draws the curves and the Pareto front as losses come back, runs the
// benchmark panel. Every GPU wait is an awaited promise: the main thread never blocks.
import init, { Demo, lambda_grid as lambdaGrid, method_names as methodNames } from './pkg/bloop_web.js';
import { formatNumber, plot } from './plot.js';

const COLORS = { mixed: '#1f77b4', pcgrad: '#ff7f0e', dynamic_barrier: '#2ca02c', bloop: '#d62728' };
// Epochs recorded into one submit; the losses are read back after each.
const EPOCHS_PER_SUBMIT = 5;
const $ = (id) => document.getElementById(id);

let demo;
let summary = null;
// What the browser test (and a curious visitor's console) can look at.
const status = { finished: { train: 0, sweep: 0, bench: 0 }, error: null, summary: () => summary };
window.bloopDemo = status;

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) $('status').textContent = message;
  const idle = state === 'idle';
  for (const id of ['train', 'sweep', 'bench']) $(id).disabled = !idle;
  $('stop').disabled = state !== 'training' && state !== 'benchmarking';
}

function fail(error) {
  status.error = String(error?.message ?? error);
  setState('idle', `error: ${status.error}`);
}

function noWebGpu(reason) {
  $('adapter').hidden = true;
  $('no-webgpu').hidden = false;
  $('no-webgpu-reason').textContent = reason;
  status.error = `WebGPU is not available${reason}`;
  setState('unavailable', '');
}

function table(node, header, rows) {
  node.replaceChildren();
  const line = (cells, tag) => {
    const tr = node.insertRow();
    for (const cell of cells) {
      const td = document.createElement(tag);
      td.textContent = cell;
      tr.appendChild(td);
    }
  };
  line(header, 'th');
  for (const row of rows) line(row, 'td');
}

async function showAdapter() {
  const wgpu = JSON.parse(demo.adapter());
  const adapter = await navigator.gpu.requestAdapter();
  const info = adapter?.info ?? {};
  const named = [info.vendor, info.architecture, info.device, info.description].filter((s) => s).join(' / ');
  // Chromium hides the adapter's name from wgpu; WebGPU's own description names it there.
  status.adapterName = wgpu.name || named || 'unnamed adapter';
  const details = wgpu.name && named ? ` (WebGPU: ${named})` : '';
  $('adapter').textContent = `${status.adapterName}${details}, ${wgpu.backend}; kernels: ${wgpu.reduction} reduction`;
  table($('limits'), ['limit', 'value'], Object.entries(wgpu.limits));
}

function drawCurves(lambda, epoch, curves) {
  plot($('curves'), {
    title: `main loss at lambda = ${formatNumber(lambda)}, epoch ${epoch}`,
    xLabel: 'epoch',
    yLabel: 'main loss',
    yLog: true,
    series: curves.map((c) => ({
      name: c.method,
      color: COLORS[c.method],
      points: c.main.map((v, e) => [e, v]),
    })),
  });
}

function drawSummary() {
  summary = JSON.parse(demo.summary());
  const fronts = methodNames().map((method) => ({
    name: method,
    color: COLORS[method],
    markers: true,
    points: summary.runs.filter((r) => r.method === method).map((r) => [r.best_aux, r.best_main]),
  }));
  plot($('pareto'), {
    title: `Pareto front over lambda (${summary.epochs} epochs, seed ${summary.seed})`,
    xLabel: 'aux loss at the best main loss',
    yLabel: 'best main loss',
    xLog: true,
    yLog: true,
    series: fronts.filter((f) => f.points.length > 0),
  });
  const standing = new Map(summary.bloop.map((p) => [p.lambda, p.standing]));
  table(
    $('results'),
    ['method', 'lambda', 'final main', 'final aux', 'best main', 'aux at best', "BLOOP's point"],
    summary.runs.map((r) => [
      r.method, formatNumber(r.lambda), r.final_main.toPrecision(6), r.final_aux.toPrecision(6),
      r.best_main.toPrecision(6), r.best_aux.toPrecision(6), r.method === 'bloop' ? standing.get(r.lambda) : '',
    ]),
  );
  $('standing').textContent = summary.bloop.length
    ? `BLOOP ranks first (the lowest main loss at a comparable aux loss) at ${summary.bloop_first} of ` +
      `${summary.bloop_comparable} comparable lambda points (of ${summary.bloop.length}).`
    : '';
}

// Trains at one lambda; false when stopped.
async function trainAt(method, lambda, epochs, seed, what) {
  let frame = 0;
  let latest = null;
  const progress = (epoch, json) => {
    latest = [epoch, JSON.parse(json)];
    // Draw at most once a frame, however fast the readbacks land.
    frame ||= requestAnimationFrame(() => {
      frame = 0;
      drawCurves(lambda, ...latest);
      $('status').textContent = `${what}: lambda = ${formatNumber(lambda)}, epoch ${latest[0]} of ${epochs}`;
    });
  };
  const started = performance.now();
  const result = await demo.train(method, lambda, epochs, seed, EPOCHS_PER_SUBMIT, progress);
  cancelAnimationFrame(frame);
  if (result === null) return false;
  drawCurves(lambda, epochs, JSON.parse(result));
  drawSummary();
  status.lastSeconds = (performance.now() - started) / 1e3;
  return true;
}

function settings() {
  const lambda = Number($('lambda').value);
  const epochs = Number($('epochs').value);
  const seed = Number($('seed').value);
  if (!(lambda >= 0 && Number.isFinite(lambda))) throw new Error('lambda must be a number >= 0');
  if (!Number.isInteger(epochs) || epochs < 1 || epochs > 100000) throw new Error('epochs: 1 to 100000');
  if (!Number.isInteger(seed) || seed < 0 || seed > 4294967295) throw new Error('seed: 0 to 4294967295');
  return { method: $('method').value, lambda, epochs, seed };
}

async function train() {
  try {
    const { method, lambda, epochs, seed } = settings();
    setState('training', 'starting');
    const done = await trainAt(method, lambda, epochs, seed, 'training');
    status.finished.train += done;
    setState('idle', done ? `trained ${epochs} epochs in ${status.lastSeconds.toFixed(1)} s` : 'stopped');
  } catch (e) {
    fail(e);
  }
}

async function sweep() {
  try {
    const { method, epochs, seed } = settings();
    setState('training', 'starting the sweep');
    demo.clear();
    const grid = lambdaGrid();
    const started = performance.now();
    for (const [i, lambda] of grid.entries()) {
      if (!(await trainAt(method, lambda, epochs, seed, `sweep ${i + 1} of ${grid.length}`))) {
        setState('idle', 'stopped');
        return;
      }
    }
    status.finished.sweep += 1;
    const seconds = (performance.now() - started) / 1e3;
    setState('idle', `swept ${grid.length} lambdas x ${epochs} epochs in ${seconds.toFixed(1)} s`);
  } catch (e) {
    fail(e);
  }
}

async function bench() {
  try {
    const sizes = $('sizes').value.split(/[\s,]+/).filter((s) => s).map(Number);
    if (sizes.length === 0 || sizes.some((k) => !Number.isInteger(k))) throw new Error('sizes: powers of two, e.g. 16, 18');
    setState('benchmarking', 'benchmarking');
    const rows = await demo.bench(
      sizes, Number($('steps').value), Number($('rounds').value), (line) => ($('status').textContent = line));
    if (rows === null) return setState('idle', 'stopped');
    const named = JSON.parse(rows).map((r) => ({ ...r, adapter: r.adapter || status.adapterName }));
    $('bench-json').value = JSON.stringify(named, null, 2);
    $('copy-json').disabled = false;
    table(
      $('bench-rows'),
      ['layout', 'method', 'path', 'ms per step', 'GB/s', 'of the copy kernel', 'copy GB/s', 'x pool'],
      named.map((r) => [
        r.layout, r.method, r.path, r.median_ms.toPrecision(4), r.gbps.toFixed(2),
        r.roofline_fraction.toFixed(2), r.copy_gbps.toFixed(2), r.pool_ratio.toFixed(2),
      ]),
    );
    status.finished.bench += 1;
    setState('idle', `benchmarked ${named.length} rows`);
  } catch (e) {
    fail(e);
  }
}

async function copyJson() {
  const json = $('bench-json');
  try {
    await navigator.clipboard.writeText(json.value);
  } catch {
    json.select();
    document.execCommand('copy');
  }
  $('status').textContent = 'copied the rows as JSON';
}

async function start() {
  if (!navigator.gpu) return noWebGpu(' in this browser (it has no navigator.gpu).');
  await init();
  try {
    demo = await Demo.open();
  } catch (e) {
    return noWebGpu(`: ${e.message ?? e}`);
  }
  for (const name of methodNames()) $('method').add(new Option(name, name));
  await showAdapter();
  $('train').onclick = train;
  $('sweep').onclick = sweep;
  $('stop').onclick = () => demo.stop();
  $('bench').onclick = bench;
  $('copy-json').onclick = copyJson;
  setState('idle', 'ready');
}

status.ready = start().catch(fail);
