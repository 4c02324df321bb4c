// Opens the demo page in headless Chromium (Debian's, /usr/bin/chromium, or
// $CHROMIUM) and answers commands on stdin, one line each, for
// tests/it/browser.rs and scripts/demo:
//
//   wait <n>           -> `events <json seqs>` once the page delivered n events
//   screenshot <path>  -> `screenshot <distinct byte values in the image data>`
//   error              -> `error <text>` once the page shows an error
//
//   node e2e/browser.mjs <page url>
import { createInterface } from "node:readline";
import { inflateSync } from "node:zlib";

import { chromium } from "playwright-core";

const [url] = process.argv.slice(2);
const say = (line) => process.stdout.write(`${line}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // As this machine's closed network needs: no background calls home.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 960, height: 640 } });
if (process.env.TEST_LOG) {
  page.on("console", (message) => process.stderr.write(`[page] ${message.text()}\n`));
}
page.on("pageerror", (error) => process.stderr.write(`[page error] ${error}\n`));
await page.goto(url);
say("loaded");

for await (const line of createInterface({ input: process.stdin })) {
  const [command, argument] = line.split(" ");
  if (command === "wait") {
    const n = Number(argument);
    await page.waitForFunction((n) => (window.collabdDemo?.events.length ?? 0) >= n, n, {
      timeout: 30_000,
    });
    say(`events ${JSON.stringify(await page.evaluate(() => window.collabdDemo.events))}`);
  } else if (command === "error") {
    const shown = await page.waitForFunction(
      () => document.getElementById("error")?.textContent || undefined,
      undefined,
      { timeout: 30_000 },
    );
    say(`error ${await shown.jsonValue()}`);
  } else if (command === "screenshot") {
    const png = await page.screenshot({ path: argument });
    say(`screenshot ${distinctBytes(png)}`);
  }
}
await browser.close();

/** How many distinct byte values a PNG's image data holds: a blank page has a handful. */
function distinctBytes(png) {
  const chunks = [];
  for (let at = 8; at < png.length; ) {
    const length = png.readUInt32BE(at);
    const type = png.toString("ascii", at + 4, at + 8);
    if (type === "IDAT") chunks.push(png.subarray(at + 8, at + 8 + length));
    at += 12 + length;
  }
  return new Set(inflateSync(Buffer.concat(chunks))).size;
}
