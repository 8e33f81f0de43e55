// Browser test of Skald's web console, in headless Chromium driven by
// playwright-core. Run by tests/it/console.rs against a real server that it
// started with access control on and seeded; it passes:
//   SKALD_URL            the server's base URL
//   SKALD_ADMIN_TOKEN    an admin token
//   SKALD_READER_TOKEN   a reader token limited to streams starting with "order-"
//   SCREENSHOT_DIR       where the screenshots go
//   CHROMIUM             the browser (default /usr/bin/chromium)
// Every wait is on a condition in the page, bounded by a timeout. Exits 1 with
// the failed step's message on the first failure.

import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const AXE_SOURCE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const base = process.env.SKALD_URL;
const adminToken = process.env.SKALD_ADMIN_TOKEN;
const readerToken = process.env.SKALD_READER_TOKEN;
const shots = process.env.SCREENSHOT_DIR;
const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
if (!base || !adminToken || !readerToken || !shots) {
  throw new Error("SKALD_URL, SKALD_ADMIN_TOKEN, SKALD_READER_TOKEN and SCREENSHOT_DIR are required");
}
mkdirSync(shots, { recursive: true });

const WAIT = { timeout: 15000 };
const LAPTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

function step(name) {
  console.log(`step: ${name}`);
}

/** A call to the API from the test itself (not through the page). */
async function call(method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminToken}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

async function append(stream, type, data) {
  const r = await call("POST", `/streams/${encodeURIComponent(stream)}`, { events: [{ type, data }] });
  check(r.status === 201, `append to ${stream}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Opens a page that records script errors and CSP violations. */
async function openPage(browser, viewport) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("console", (msg) => {
    // Chromium logs every 4xx answer as a console error; the tests cause
    // 401s and 403s on purpose. Anything else is a problem.
    if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  return { context, page, problems };
}

async function signIn(page, secret) {
  await page.locator("#login").waitFor({ state: "visible", ...WAIT });
  await page.fill("#login-token", secret);
  await page.click('#login button[type="submit"]');
  await page.locator("#login").waitFor({ state: "hidden", ...WAIT });
}

async function go(page, hash) {
  await page.evaluate((h) => {
    location.hash = h;
  }, hash);
}

/** `go`, then waits until the new page has replaced the old one's heading
 *  (two pages may both hold what a caller waits for, such as `.event`). */
async function goFresh(page, hash) {
  await page.evaluate(() => document.getElementById("page-title")?.setAttribute("data-left", ""));
  await go(page, hash);
  await page.waitForFunction(() => {
    const title = document.getElementById("page-title");
    return title !== null && !title.hasAttribute("data-left");
  }, null, WAIT);
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

/** axe-core on the page as it is now; fails on serious or critical violations. */
async function accessible(page, name) {
  await page.evaluate(AXE_SOURCE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { runOnly: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  const bad = result.filter((v) => v.impact === "serious" || v.impact === "critical");
  console.log(`axe ${name}: ${result.length} violations, ${bad.length} serious or critical`);
  check(bad.length === 0, `accessibility of ${name}: ${JSON.stringify(bad)}`);
}

async function textOf(page, selector) {
  return (await page.locator(selector).first().textContent({ ...WAIT })) ?? "";
}

const browser = await chromium.launch({
  executablePath,
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

try {
  // ---- Sign-in, and what a limited reader sees ---------------------------------
  step("the console asks for a token, refuses an unknown one");
  const laptop = await openPage(browser, LAPTOP);
  const page = laptop.page;
  const landing = await page.goto(`${base}/`);
  check(landing.url().endsWith("/ui/"), `/ redirects to /ui/ (at ${landing.url()})`);
  await page.locator("#login").waitFor({ state: "visible", ...WAIT });
  await shot(page, "sign-in-laptop");
  await accessible(page, "sign-in");
  await page.fill("#login-token", "not-a-token");
  await page.click('#login button[type="submit"]');
  await page.waitForFunction(() => document.getElementById("login-error").textContent.includes("not known"), null, WAIT);

  step("a prefix-limited reader sees no admin actions and a clear 403");
  await page.fill("#login-token", readerToken);
  await page.click('#login button[type="submit"]');
  await page.locator("#login").waitFor({ state: "hidden", ...WAIT });
  check((await textOf(page, "#who")).includes("reader"), "the header names the reader token");
  check(await page.locator('[data-nav="jobs"]').isHidden(), "no scavenge page for a reader");
  await page.waitForFunction(() => document.getElementById("main").textContent.includes("need an admin token"), null, WAIT);
  await go(page, "#/streams");
  await page.waitForFunction(() => document.getElementById("main").textContent.includes("Listing streams needs an admin token"), null, WAIT);
  check((await page.locator("#stream-prefix").count()) === 0, "no catalog search for a reader");
  await go(page, "#/streams/order-1");
  await page.locator(".event").first().waitFor(WAIT);
  check((await page.locator("#delete-form").count()) === 0, "no delete form for a reader");
  check((await page.locator("#limits-form").count()) === 0, "no limits form for a reader");
  await go(page, "#/streams/secret-1");
  await page.waitForFunction(() => document.getElementById("notice").textContent.includes("Not allowed"), null, WAIT);
  check((await textOf(page, "#notice")).includes("order-"), "the 403 says which prefixes the token has");
  await shot(page, "forbidden-laptop");

  step("the navigation works by keyboard");
  await page.focus('[data-nav="all"]');
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.getElementById("page-title")?.textContent === "$all", null, WAIT);
  // Focus moves to the new page's heading once the page has loaded.
  await page.waitForFunction(() => document.activeElement?.id === "page-title", null, WAIT);

  step("sign out, sign in as admin");
  await page.click("#who button");
  await signIn(page, adminToken);
  check((await textOf(page, "#who")).includes("admin"), "the header names the admin token");

  // ---- Dashboard ------------------------------------------------------------------------
  step("dashboard: head, counts, disk, rate chart, live subscriptions");
  await go(page, "#/");
  const stats = (await call("GET", "/admin/stats")).body;
  await page.waitForFunction(
    (head) => document.getElementById("head-position")?.textContent === new Intl.NumberFormat("en").format(head),
    stats.head_position,
    WAIT,
  );
  check((await textOf(page, "#event-count")) !== "–", "event count shown");
  check((await textOf(page, "#disk-bytes")).match(/[0-9.]+ (B|KiB|MiB|GiB)/), "disk size shown");
  const chartLabel = await page.locator("svg.chart").getAttribute("aria-label");
  check(chartLabel && chartLabel.includes("peak"), `the rate chart is labelled (${chartLabel})`);
  check(Number((await textOf(page, "#append-rate")).replace(/,/g, "")) > 0, "a non-zero append rate after seeding");
  await shot(page, "dashboard-laptop");
  await accessible(page, "dashboard");

  // ---- Streams --------------------------------------------------------------------------
  step("streams: search by prefix");
  await go(page, "#/streams");
  await page.locator("#stream-prefix").waitFor(WAIT);
  // By keyboard only: type into the field and press Enter.
  await page.focus("#stream-prefix");
  await page.keyboard.type("order-");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => document.querySelector("#stream-table caption")?.textContent.includes("order-"), null, WAIT);
  const names = await page.locator("#stream-table tbody th").allTextContents();
  check(names.length >= 3 && names.every((n) => n.startsWith("order-")), `only order- streams listed: ${names}`);
  await shot(page, "streams-laptop");
  await accessible(page, "streams");

  step("stream view: open an event, pretty-printed");
  await page.click('#stream-table a[href="#/streams/order-2"]');
  await page.locator(".event").first().waitFor(WAIT);
  const first = page.locator(".event").first();
  check((await first.locator(".rev").textContent()) === "#2", "newest first: revision 2 on top");
  // By keyboard: focus the event's summary and press Enter to unfold it.
  await first.locator("summary").focus();
  await page.keyboard.press("Enter");
  await first.locator("pre.json").first().waitFor({ state: "visible", ...WAIT });
  const data = await first.locator("pre.json").first().textContent();
  check(data.includes('"sku": "A-2"'), `the event's data, pretty-printed: ${data}`);
  await shot(page, "stream-laptop");
  await accessible(page, "stream");

  step("stream view: follow live sees a new append");
  await page.check("#follow-live");
  await page.waitForFunction(() => document.querySelector("#events")?.previousElementSibling?.textContent.includes("up to date"), null, WAIT);
  await append("order-2", "LiveEvent", { n: 42 });
  await page.waitForFunction(() => document.querySelector(".event .type")?.textContent === "LiveEvent", null, WAIT);
  check((await page.locator(".event").first().locator(".rev").textContent()) === "#3", "the live event is revision 3, on top");
  await page.uncheck("#follow-live");

  step("stream view: edit limits");
  await go(page, "#/streams/order-3");
  // The view of order-2 has a limits form too: wait for order-3's.
  await page.waitForFunction(() => document.getElementById("page-title")?.textContent === "order-3", null, WAIT);
  await page.locator("#limits-form").waitFor(WAIT);
  await page.fill("#limit-max_count", "1");
  await page.click('#limits-form button[type="submit"]');
  await page.waitForFunction(() => document.getElementById("notice").textContent.includes("Saved the limits"), null, WAIT);
  const meta = await call("GET", "/streams/order-3/metadata");
  check(meta.body.max_count === 1, `max_count saved: ${JSON.stringify(meta.body)}`);

  step("stream view: delete needs the name typed");
  await page.locator("#delete-form").waitFor(WAIT);
  const del = page.locator('#delete-form button[type="submit"]');
  check(await del.isDisabled(), "delete is disabled before confirming");
  await page.fill("#delete-confirm", "order-");
  check(await del.isDisabled(), "delete stays disabled for a wrong name");
  await page.fill("#delete-confirm", "order-3");
  check(await del.isEnabled(), "delete is enabled once the name is typed");
  await del.click();
  await page.waitForFunction(() => document.getElementById("notice").textContent.includes("Deleted order-3"), null, WAIT);
  check((await call("GET", "/streams/order-3")).status === 404, "order-3 is deleted");

  // ---- $all -------------------------------------------------------------------------------
  step("$all: type filter and follow live");
  await go(page, "#/all?type_prefix=Item");
  await page.locator(".event").first().waitFor(WAIT);
  const types = await page.locator(".event .type").allTextContents();
  check(types.length > 0 && types.every((t) => t.startsWith("Item")), `only Item* types: ${types}`);
  await page.check("#follow-live");
  await page.waitForFunction(() => document.querySelector("#events")?.previousElementSibling?.textContent.includes("up to date"), null, WAIT);
  await append("order-4", "OtherLive", { n: 1 });
  await append("order-4", "ItemLive", { n: 2 });
  await page.waitForFunction(() => document.querySelector(".event .type")?.textContent === "ItemLive", null, WAIT);
  const liveTypes = await page.locator(".event .type").allTextContents();
  check(!liveTypes.includes("OtherLive"), "the filter holds for live events");
  await page.uncheck("#follow-live");
  await shot(page, "all-laptop");
  await accessible(page, "all");

  // ---- Scavenge and verify ------------------------------------------------------------
  step("a dry-run scavenge runs to completion");
  await go(page, "#/jobs");
  await page.locator("#scavenge-start").waitFor(WAIT);
  check(await page.isChecked("#scavenge-dry"), "dry run is the default");
  await page.click("#scavenge-start");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#scavenge-history tr[data-result]")].some((r) => r.textContent.includes("completed (dry run)")),
    null,
    WAIT,
  );
  step("a verify runs to completion");
  await page.click("#verify-start");
  await page.waitForFunction(
    () => document.querySelector('#verify-history tr[data-result="completed"]') !== null,
    null,
    WAIT,
  );
  let scavenges = (await call("GET", "/admin/scavenges")).body.scavenges;
  check(scavenges[0].dry_run === true && scavenges[0].result === "completed", `the server ran a dry run: ${JSON.stringify(scavenges[0])}`);

  step("a real scavenge shows its progress and can be cancelled");
  // The server's compaction ranges are slowed down (fault injection), so
  // this one runs for tens of seconds unless cancelled.
  await page.uncheck("#scavenge-dry");
  await page.click("#scavenge-start");
  await page.waitForFunction(
    () => {
      const bar = document.getElementById("scavenge-progress");
      return bar !== null && bar.hasAttribute("max") && bar.value > 0;
    },
    null,
    WAIT,
  );
  await shot(page, "jobs-running-laptop");
  await accessible(page, "jobs while a scavenge runs");
  await page.click("#scavenge-current button.danger");
  await page.waitForFunction(
    () => document.querySelector('#scavenge-history tr[data-result="cancelled"]') !== null,
    null,
    WAIT,
  );
  scavenges = (await call("GET", "/admin/scavenges")).body.scavenges;
  check(scavenges[0].dry_run === false && scavenges[0].result === "cancelled", `the server cancelled it: ${JSON.stringify(scavenges[0])}`);
  check(scavenges[0].compaction_ranges_done < scavenges[0].compaction_ranges, "cancelled before the end");
  await shot(page, "jobs-laptop");
  await accessible(page, "jobs");
  check(laptop.problems.length === 0, `no script errors or CSP violations: ${laptop.problems.join("; ")}`);
  await laptop.context.close();

  // ---- Phone width ----------------------------------------------------------------------
  step("phone width: every page");
  const phone = await openPage(browser, PHONE);
  await phone.page.goto(`${base}/ui/`);
  await signIn(phone.page, adminToken);
  for (const [name, hash, ready] of [
    ["dashboard", "#/", "#head-position"],
    ["streams", "#/streams", "#stream-table"],
    ["stream", "#/streams/order-2", ".event"],
    ["all", "#/all", ".event"],
    ["jobs", "#/jobs", "#scavenge-history table"],
  ]) {
    await goFresh(phone.page, hash);
    await phone.page.locator(ready).first().waitFor(WAIT);
    const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 0, `${name} fits the phone's width (overflows by ${overflow}px)`);
    await shot(phone.page, `${name}-phone`);
  }
  await accessible(phone.page, "jobs at phone width");
  check(phone.problems.length === 0, `no script errors at phone width: ${phone.problems.join("; ")}`);
  await phone.context.close();
  console.log("console tests passed");
} catch (err) {
  console.error(err.stack ?? String(err));
  process.exitCode = 1;
} finally {
  await browser.close();
}
