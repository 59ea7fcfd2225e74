// The operator console in headless Chromium against a fresh sandbox server: paste the key,
// create a Gupshup onboarding and see it reach LIVE on the page, create a Whapi one and see its
// QR code render as an image. Screenshots go to --shots (CI artifacts under target/).
//
//   node console-check.mjs --base-url http://127.0.0.1:50051 --api-key KEY --shots DIR [--chromium PATH]
// Exit status 0 when every check passed.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import puppeteer from 'puppeteer-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, v, i, a) => (i % 2 ? pairs : [...pairs, [a[i].replace(/^--/, ''), a[i + 1]]]), []),
);
const chromium = args.chromium || '/usr/bin/chromium';
const TIMEOUT = 90_000;

async function main() {
  mkdirSync(args.shots, { recursive: true });
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    // No sandbox: CI runs as root in a container, where Chromium's sandbox cannot start.
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const errors = [];
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    page.on('response', (r) => { if (r.status() >= 400) errors.push(`HTTP ${r.status()} from ${r.url()}`); });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    // (Failed requests are reported above with their URL; the console repeats them without.)
    page.on('console', (m) => {
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(`console: ${m.text()}`);
    });
    await page.goto(`${args['base-url']}/`, { waitUntil: 'load' });

    await page.type('#key', args['api-key']);
    await page.click('#save');
    await page.waitForFunction(() => document.querySelector('#who').textContent.includes('providers'), { timeout: TIMEOUT });
    console.log('key accepted:', await page.$eval('#who', (e) => e.textContent));

    // Gupshup: created from the page, watched live until LIVE.
    await page.click('input[name=kind][value=gupshup]');
    await page.click('#create');
    await page.waitForFunction(() => document.querySelector('#d-state').dataset.state === 'ONBOARDING_STATE_LIVE',
      { timeout: TIMEOUT });
    const name = await page.$eval('#d-name', (e) => e.textContent);
    const events = await page.$eval('#events', (e) => e.textContent);
    console.log(`${name} LIVE on the page; ${events.trim().split('\n').length} events`);
    await page.click('#refresh');
    await page.waitForFunction((n) => [...document.querySelectorAll('#list tr')].some((r) => r.dataset.name === n),
      { timeout: TIMEOUT }, name);
    await page.screenshot({ path: join(args.shots, 'console-gupshup-live.png'), fullPage: true });

    // Whapi: the QR code as an image (the simulator scans it a few seconds later).
    await page.click('input[name=kind][value=whapi]');
    await page.click('#create');
    // Polled often: the image shows only until the simulator's scan (3 s after the fetch).
    const rendered = await page.waitForFunction(() => {
      const img = document.querySelector('#qr img');
      return img && img.complete && img.naturalWidth > 0 ? `${img.naturalWidth}x${img.naturalHeight}` : false;
    }, { timeout: TIMEOUT, polling: 50 });
    await page.screenshot({ path: join(args.shots, 'console-whapi-qr.png'), fullPage: true });
    console.log(`Whapi QR rendered (${await rendered.jsonValue()})`);
    await page.waitForFunction(() => document.querySelector('#d-state').dataset.state === 'ONBOARDING_STATE_LIVE',
      { timeout: TIMEOUT });
    console.log('Whapi onboarding LIVE after the scan');
    const shown = await page.$eval('#error', (e) => e.textContent);
    if (shown) errors.push(`the page shows an error: ${shown}`);
  } finally {
    await browser.close();
  }
  if (errors.length) {
    console.error(errors.join('\n'));
    return 1;
  }
  return 0;
}

main().then((code) => process.exit(code), (e) => { console.error(e.stack || e); process.exit(1); });
