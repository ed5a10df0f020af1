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
import { fileURLToPath } from 'node:url';
import { runInBrowser } from './browser.mjs';
import { loadCases, parseArgs, verdict } from './cases.mjs';

const options = parseArgs(process.argv.slice(2));
const cases = loadCases(options.dirs);
if (cases.names.length === 0) {
  console.error(`no *.json cases in ${options.dirs.join(', ')}`);
  process.exit(2);
}

await runInBrowser(fileURLToPath(new URL('.', import.meta.url)), 1800, async (page, url) => {
  await page.exposeFunction('bloopPrint', (line) => console.log(line));
  await page.goto(`${url}page.html`);
  await page.waitForFunction('window.bloopReady !== undefined');
  await page.evaluate('window.bloopReady');
  const counts = await page.evaluate(
    (names, texts, dtype, emaDtype, packedF16) =>
      window.runConformance(names, texts, dtype, emaDtype, packedF16).then((c) => Array.from(c)),
    cases.names, cases.texts, options.dtype, options.emaDtype, options.packedF16);
  return verdict(counts);
});
