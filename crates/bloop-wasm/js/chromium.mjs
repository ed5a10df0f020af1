// The golden cases in headless Chromium's WebGPU (Dawn; SwiftShader on a machine without a
// GPU), through bloop's wasm32 build.
//
//   node chromium.mjs [--dtype f32|f16|bf16] [--ema-dtype f32|f16|bf16] [--native-f16] DIR...
//
// Serves this folder from 127.0.0.1 (WebGPU needs a secure context, which a loopback address
// is), opens page.html with puppeteer-core in the installed Chromium (CHROMIUM, else
// /usr/bin/chromium), and prints what the page prints: the adapter and the table of the native
// `conformance` example. Exit status as node.mjs. The server and the browser stop when the run
// ends, or after TIMEOUT_S seconds (default 1800) whatever happens.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';
import { loadCases, parseArgs, verdict } from './cases.mjs';

const options = parseArgs(process.argv.slice(2));
const cases = loadCases(options.dirs);
if (cases.names.length === 0) {
  console.error(`no *.json cases in ${options.dirs.join(', ')}`);
  process.exit(2);
}

const root = fileURLToPath(new URL('.', import.meta.url));
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm' };
const server = createServer(async (request, response) => {
  const path = normalize(decodeURIComponent(new URL(request.url, 'http://127.0.0.1').pathname));
  try {
    if (path.includes('..') || path.includes('node_modules')) throw new Error('outside the page');
    const body = await readFile(join(root, path));
    response.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' });
    response.end(body);
  } catch {
    response.writeHead(404);
    response.end();
  }
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));

let browser;
const stop = async (status) => {
  await browser?.close().catch(() => {});
  server.close();
  process.exit(status);
};
const timeout = Number(process.env.TIMEOUT_S ?? 1800);
setTimeout(() => {
  console.error(`FAILED: no result after ${timeout} s`);
  stop(1);
}, timeout * 1000).unref();

let status;
try {
  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless=new', '--enable-unsafe-webgpu', '--no-sandbox'],
  });
  const page = await browser.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') console.error(`page: ${message.text()}`);
  });
  page.on('pageerror', (error) => console.error(`page: ${error.message}`));
  await page.exposeFunction('bloopPrint', (line) => console.log(line));
  await page.goto(`http://127.0.0.1:${server.address().port}/page.html`);
  await page.waitForFunction('window.bloopReady !== undefined');
  await page.evaluate('window.bloopReady');
  const counts = await page.evaluate(
    (names, texts, dtype, emaDtype, packedF16) =>
      window.runConformance(names, texts, dtype, emaDtype, packedF16).then((c) => Array.from(c)),
    cases.names, cases.texts, options.dtype, options.emaDtype, options.packedF16);
  status = verdict(counts);
} catch (e) {
  console.error(`error: ${e.message ?? e}`);
  status = 2;
}
await stop(status);
