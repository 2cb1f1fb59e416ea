// Open a page in headless Chromium (SwiftShader WebGL, no GPU), wait until it has rendered,
// and save a screenshot. Used by bench/viewer_check.py; see its docstring.
//
//   node screenshot.mjs URL OUT.png [WIDTH HEIGHT TIMEOUT_MS]
//
// "Rendered" means the page says so, then two screenshots in a row are byte-identical (the
// viewer has stopped loading and sorting): window.__viewerReady === true (our Babylon.js
// page, tools/viewer/babylon.html) or window.captureFrame defined (the SuperSplat viewer
// defines it on its first frame; open it with ?noui&noanim&webgl). On timeout the last
// screenshot is kept and the exit status is 3; a page that sets window.__viewerError exits
// with 4. Page errors and console messages go to stderr.
import { writeFileSync } from 'node:fs';
import puppeteer from 'puppeteer-core';

const [url, out, width = '640', height = '640', timeout = '90000'] = process.argv.slice(2);
if (!url || !out) {
    console.error('usage: node screenshot.mjs URL OUT.png [WIDTH HEIGHT TIMEOUT_MS]');
    process.exit(2);
}
const FLAGS = [
    '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--no-sandbox', '--headless',
    '--disable-background-networking', '--disable-component-update', '--no-first-run',
    '--ignore-gpu-blocklist', '--disable-dev-shm-usage'
];
const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    defaultViewport: { width: Number(width), height: Number(height) }
});
let status = 3;
try {
    const page = await browser.newPage();
    page.on('console', (m) => console.error(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console.error(`pageerror: ${e.message}`));
    await page.goto(url, { waitUntil: 'load', timeout: Number(timeout) });
    const deadline = Date.now() + Number(timeout);
    let previous = null;
    let shot = null;
    await new Promise((r) => setTimeout(r, 2000));
    while (Date.now() < deadline) {
        const ready = await page
            .evaluate(() => window.__viewerReady === true || typeof window.captureFrame === 'function')
            .catch(() => false);
        const failed = await page.evaluate(() => window.__viewerError || null).catch(() => null);
        if (failed) {
            console.error(`viewer error: ${failed}`);
            status = 4;
            break;
        }
        shot = await page.screenshot({ type: 'png' });
        if (ready && previous && Buffer.compare(previous, shot) === 0) {
            status = 0;
            break;
        }
        previous = ready ? shot : null;
        await new Promise((r) => setTimeout(r, 1500));
    }
    if (shot) writeFileSync(out, shot);
} finally {
    await browser.close();
}
process.exit(status);
