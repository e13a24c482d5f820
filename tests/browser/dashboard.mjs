// Drives Debian's Chromium through the kbridge dashboard for
// tests/dashboard.rs.   usage: node dashboard.mjs URL OUTDIR
//
// 1. Opens URL and waits (up to 90 s) until every chart of the running
//    roles holds real data (canvas drawn, and rates that are not all zero
//    where traffic must show), then prints {"ready": …} on stdout.
// 2. Waits for one line on stdin (the test stops the traffic and lets the
//    figures settle), refreshes, saves a laptop and a phone screenshot into
//    OUTDIR, clicks the suspend button of subscription $SUSPEND (when set)
//    and waits for its row to say so, prints what the page showed as one
//    JSON line, and exits 0.
// Any failure (Chromium cannot start, the page never draws) exits 1 with
// the reason on stderr.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, outdir] = process.argv.slice(2);
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// Without the background-networking flags Chromium keeps calling out to
// Google's hosts, which a closed network refuses.
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--disable-dev-shm-usage"];

// Charts that must show non-zero rates while traffic flows, and charts
// that must merely hold series with values (gauges may sit at 0).
const NONZERO = ["chart-minutes", "chart-outcomes", "chart-ingest", "chart-collect",
  "chart-subscriptions"];
const PRESENT = ["chart-fill", "chart-lag"];

function fail(why) {
  console.error(`dashboard test: ${why}`);
  process.exit(1);
}

let browser;
try {
  browser = await chromium.launch({ executablePath, args, timeout: 60_000 });
} catch (e) {
  fail(`Chromium (${executablePath}) did not start: ${e.message}`);
}
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1500 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("response", (r) => r.status() >= 400 && errors.push(`HTTP ${r.status()} for ${r.url()}`));
  await page.goto(url, { waitUntil: "load" });
  try {
    await page.waitForFunction(([nonzero, present]) => {
      const d = window.kbridgeDashboard;
      if (!d || !d.charts) return false;
      const drawn = (id) => {
        const c = d.charts[id];
        const canvas = document.querySelector(`#${id} canvas`);
        return c && c.series > 0 && c.points > 0 && canvas && canvas.width > 0;
      };
      return nonzero.every((id) => drawn(id) && d.charts[id].nonzero > 0)
        && present.every(drawn)
        && d.values.length > 0
        && Object.keys(d.tiles).length >= 9;
    }, [NONZERO, PRESENT], { timeout: 90_000, polling: 500 });
  } catch (e) {
    const shown = await page.evaluate(() => JSON.stringify(window.kbridgeDashboard));
    await page.screenshot({ path: `${outdir}/dashboard-not-ready.png`, fullPage: true });
    fail(`the charts never drew real data: ${e.message}; shown: ${shown}; page errors: ${errors.join(" | ")}`);
  }
  if (errors.length) fail(`the page logged errors: ${errors.join(" | ")}`);
  const ready = await page.evaluate(() => window.kbridgeDashboard.charts);
  console.log(JSON.stringify({ ready }));

  const lines = createInterface({ input: process.stdin });
  for await (const _ of lines) break;

  await page.evaluate(() => window.kbridgeRefresh());
  const shown = await page.evaluate(() => {
    const d = window.kbridgeDashboard;
    const tiles = {};
    for (const t of document.querySelectorAll(".tile")) {
      tiles[t.dataset.metric] = { value: d.tiles[t.dataset.metric], text: t.querySelector(".value").textContent };
    }
    const values = [...document.querySelectorAll("#values li[data-value]")].map((li) =>
      [li.dataset.value, Number(li.dataset.count), li.querySelector(".count").textContent,
        li.querySelector(".name").textContent]);
    const subscriptions = {};
    for (const tr of document.querySelectorAll("#subscriptions tr[data-subscription]")) {
      const row = { state: tr.querySelector(".state").textContent };
      for (const td of tr.querySelectorAll("td[data-column]")) row[td.dataset.column] = td.textContent;
      subscriptions[tr.dataset.subscription] = { text: row, value: d.subscriptions[tr.dataset.subscription] };
    }
    return {
      tiles,
      values,
      subscriptions,
      topic: document.getElementById("topic").value,
      topics: d.topics,
      charts: d.charts,
      hidden: [...document.querySelectorAll(".card[hidden]")].length,
      // A hostile value must show as text, never run or become markup.
      injected: window.__injected ?? null,
      images: document.querySelectorAll("img").length,
    };
  });
  await page.screenshot({ path: `${outdir}/dashboard.png`, fullPage: true });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => window.dispatchEvent(new Event("resize")));
  await page.screenshot({ path: `${outdir}/dashboard-phone.png`, fullPage: true });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  shown.phone_overflow_px = overflow;
  // 3. The suspend button of the subscription named in SUSPEND: its row must
  // say so once the page refreshed.
  const name = process.env.SUSPEND;
  if (name) {
    await page.setViewportSize({ width: 1280, height: 1500 });
    await page.click(`#subscriptions tr[data-subscription="${name}"] button`);
    await page.waitForFunction((n) => {
      const td = document.querySelector(`#subscriptions tr[data-subscription="${n}"] .state`);
      return td && td.textContent === "suspended";
    }, name, { timeout: 20_000 });
    shown.suspended_by_button = name;
  }
  if (errors.length) fail(`the page logged errors: ${errors.join(" | ")}`);
  console.log(JSON.stringify(shown));
} finally {
  await browser.close();
}
