// Drives the `clip serve` search page in headless Chromium as a person would: opens `/`,
// types a query into the search box, submits, waits for the thumbnail grid and saves a
// screenshot. Fails on any console error, page exception or failed request, on an error
// shown in the page, and when fewer than MIN thumbnails with scores are shown and loaded.
//
// usage: node scripts/serve_screenshot.mjs URL QUERY OUT.png [MIN]
//   PLAYWRIGHT_DIR  folder whose node_modules holds playwright-core (default /tmp/shot-node)
//   CHROMIUM        the browser (default /usr/bin/chromium, Debian's package)
import { createRequire } from 'node:module';
import path from 'node:path';

const [url, query, out, minArg] = process.argv.slice(2);
if (!url || !query || !out) {
  console.error('usage: node serve_screenshot.mjs URL QUERY OUT.png [MIN]');
  process.exit(2);
}
const min = Number(minArg ?? 12);
// playwright-core is installed outside the repository, so it is loaded from there.
const require = createRequire(path.join(process.env.PLAYWRIGHT_DIR ?? '/tmp/shot-node', 'package.json'));
const { chromium } = require('playwright-core');

const problems = [];
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // Root (CI containers) cannot use Chromium's sandbox.
  args: process.getuid?.() === 0 ? ['--no-sandbox'] : [],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('console', m => m.type() === 'error' && problems.push(`console: ${m.text()} (${m.location().url})`));
  page.on('pageerror', e => problems.push(`exception: ${e.message}`));
  page.on('requestfailed', r => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', r => r.status() >= 400 && problems.push(`HTTP ${r.status()}: ${r.url()}`));

  await page.goto(url, { waitUntil: 'networkidle' });
  // The index list has arrived: the select has its options.
  await page.waitForFunction(() => document.querySelectorAll('#index option').length > 0);
  await page.locator('#text').pressSequentially(query, { delay: 30 });
  await page.keyboard.press('Enter');

  // Enough thumbnails, each with a score, and those shown (not lazy below the fold) loaded.
  await page.waitForFunction(
    n => {
      const figs = [...document.querySelectorAll('#grid figure')];
      const good = figs.filter(f => {
        const img = f.querySelector('img');
        const score = f.querySelector('.score')?.textContent ?? '';
        return img && img.complete && img.naturalWidth > 0 && /^-?\d+\.\d{4} $/.test(score);
      });
      return good.length >= n;
    },
    min,
    { timeout: 30_000 },
  ).catch(() => {
    throw new Error(`fewer than ${min} thumbnails with scores loaded within 30 s`);
  });
  const status = (await page.locator('#status').textContent()).trim();
  if (status) problems.push(`page shows: ${status}`);
  const shown = await page.locator('#grid figure').count();
  const scores = await page.locator('#grid .score').allTextContents();
  await page.screenshot({ path: out });
  console.log(`${shown} results for ${JSON.stringify(query)}; scores ${scores.slice(0, 3).join('')}…; screenshot ${out}`);
} catch (e) {
  problems.push(`${e.message.split('\n')[0]}`);
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(`the page in Chromium:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
