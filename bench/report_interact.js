// Interaction timings of a review page in headless Chromium (load, scroll, filter, jump, zoom).
// Uses puppeteer-core (DevTools protocol); not a project dependency and not run by `make bench`:
//   mkdir -p /tmp/pp && cd /tmp/pp && npm install puppeteer-core@23
//   NODE_PATH=/tmp/pp/node_modules node bench/report_interact.js build/report-scale/report-auto.html [CLUSTER_ID]
const puppeteer = require("puppeteer-core");
const path = require("path");

const frames = (p) => p.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));

(async () => {
  const page = "file://" + path.resolve(process.argv[2]);
  const cid = process.argv[3] || null;
  const browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
  const p = await browser.newPage();
  const errors = [];
  p.on("pageerror", (e) => errors.push(String(e)));
  await p.setViewport({ width: 1280, height: 900 });
  const out = {};
  let t = Date.now();
  await p.goto(page, { waitUntil: "load" });
  await frames(p);
  out.load_to_first_frame_ms = Date.now() - t;
  out.page_timings = await p.evaluate(() => document.documentElement.dataset.timings);
  const H = await p.evaluate(() => document.documentElement.scrollHeight);
  const steps = [];
  for (let y = 3000; y < Math.min(H, 63000); y += 3000) {
    t = Date.now();
    await p.evaluate((y) => window.scrollTo(0, y), y);
    await frames(p);
    steps.push(Date.now() - t);
  }
  steps.sort((a, b) => a - b);
  out.scroll_3000px_step_ms = { median: steps[steps.length >> 1], max: steps[steps.length - 1], steps: steps.length };
  out.page_height_px = H;
  out.tiles_after_scroll = await p.evaluate(() => document.querySelectorAll("main .t").length);
  await p.evaluate(() => window.scrollTo(0, 0));
  t = Date.now();
  await p.evaluate(() => { const q = document.getElementById("q"); q.value = "bush"; q.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" })); });
  await frames(p);
  out.filter_ms = Date.now() - t;
  out.filter_status = await p.evaluate(() => document.getElementById("status").textContent);
  await p.evaluate(() => { const q = document.getElementById("q"); q.value = ""; q.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" })); });
  const target = cid || (await p.evaluate(() => { const s = document.querySelectorAll("section.cl"); return s[Math.floor(s.length * 0.6)].dataset.cid; }));
  t = Date.now();
  await p.evaluate((c) => { document.getElementById("jump").value = c; document.getElementById("jumpform").requestSubmit(); }, target);
  await frames(p);
  out.jump_ms = Date.now() - t;
  out.jump_target_top_px = await p.evaluate((c) => document.getElementById("c-" + c).getBoundingClientRect().top, target);
  t = Date.now();
  await p.evaluate(() => { const z = document.getElementById("zoom"); z.value = "2"; z.dispatchEvent(new Event("change")); });
  await frames(p);
  out.zoom_2x_ms = Date.now() - t;
  out.jump_target_top_after_zoom_px = await p.evaluate((c) => document.getElementById("c-" + c).getBoundingClientRect().top, target);
  out.js_heap_mb = Math.round((await p.metrics()).JSHeapUsedSize / 1e6);
  out.errors = errors;
  console.log(JSON.stringify(out, null, 1));
  await browser.close();
})();
