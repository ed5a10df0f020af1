// What the headless-Chromium runners share: a static server on 127.0.0.1 (WebGPU needs a
// secure context, which a loopback address is) and Debian's chromium driven by puppeteer-core
// with WebGPU on. Used by chromium.mjs and by the web demo's test (crates/bloop-web/test).
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import puppeteer from 'puppeteer-core';

const TYPES = {
  '.html': 'text/html',
  '.css': 'text/css',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
};

// Serves the files below `root` on a free port of 127.0.0.1 (`/` is index.html); resolves to
// the listening server.
export async function serve(root) {
  const server = createServer(async (request, response) => {
    let path = normalize(decodeURIComponent(new URL(request.url, 'http://127.0.0.1').pathname));
    if (path.endsWith('/')) path += 'index.html';
    try {
      if (path.includes('..') || path.includes('node_modules')) throw new Error('outside the page');
      const body = await readFile(join(root, path));
      response.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' });
      response.end(body);
    } catch {
      response.writeHead(404);
      response.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

// Headless Chromium (CHROMIUM, else /usr/bin/chromium) with WebGPU on.
export function launch(options = {}) {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless=new', '--enable-unsafe-webgpu', '--no-sandbox'],
    ...options,
  });
}

// A page whose errors (console errors, uncaught exceptions) go to stderr.
export async function newPage(browser) {
  const page = await browser.newPage();
  page.on('console', (message) => {
    if (message.type() === 'error') console.error(`page: ${message.text()}`);
  });
  page.on('pageerror', (error) => console.error(`page: ${error.message}`));
  return page;
}

// Serves `root`, opens a page of headless Chromium and awaits `body(page, url)` (`url` the
// server's address, ending in '/'); then closes both and exits with the status `body`
// resolves to: 2 where it throws, 1 after TIMEOUT_S seconds (default `timeoutS`) whatever
// happens.
export async function runInBrowser(root, timeoutS, body) {
  const server = await serve(root);
  let browser;
  const stop = async (status) => {
    await browser?.close().catch(() => {});
    server.close();
    process.exit(status);
  };
  const timeout = Number(process.env.TIMEOUT_S ?? timeoutS);
  setTimeout(() => {
    console.error(`FAILED: no result after ${timeout} s`);
    stop(1);
  }, timeout * 1000).unref();
  let status;
  try {
    browser = await launch();
    status = await body(await newPage(browser), `http://127.0.0.1:${server.address().port}/`);
  } catch (e) {
    console.error(`error: ${e.message ?? e}`);
    status = 2;
  }
  await stop(status);
}
