// Drives two `pigeon app` pages in Debian's Chromium (playwright-core): alice invites bob, bob
// accepts, they talk both ways, bob's markup shows as text and runs nothing, alice's line is
// marked delivered, each sends the other a picture (the thumbnail shows at once, the whole
// arrives and matches byte for byte), a group of three (carol joins from the command line) is
// made and used, and the page is readable at phone width. Screenshots go to the directory given.
//
//   node tests/e2e.mjs ALICE_URL BOB_URL SCREENSHOT_DIR
//   env: CHROMIUM (default /usr/bin/chromium), PIGEON_BIN, CAROL_PROFILE, PIGEON_PASSPHRASE,
//        ALICE_PICTURE, BOB_PICTURE (PNG files each sends the other)
import { chromium } from "playwright-core";
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { basename } from "node:path";

const [aliceUrl, bobUrl, shots] = process.argv.slice(2);
mkdirSync(shots, { recursive: true });
const T = 45_000;
const markup = "<img src=x onerror=alert(1)><script>alert(2)</script>";

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  // A fake microphone (a tone) and no permission prompt, for the voice note.
  args: ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"],
  headless: true,
});
const dialogs = [];
const errors = [];

async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
  const page = await context.newPage();
  page.on("dialog", (d) => { dialogs.push(d.message()); d.dismiss(); });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  const started = Date.now();
  await page.goto(url);
  await page.waitForFunction(() => document.querySelector("#me").textContent !== "", null, { timeout: T });
  console.log(`- the page was interactive ${Date.now() - started} ms after it was asked for (Chromium)`);
  await page.waitForSelector("#status:has-text('connected via')", { timeout: T });
  return page;
}

function step(what) { console.log(`- ${what}`); }

/// Asks the page for an invitation; its link, once shown.
async function invite(page) {
  await page.evaluate(() => { document.querySelector("#invite-link").textContent = ""; });
  await page.click("#invite");
  await page.waitForFunction(
    () => document.querySelector("#invite-link").textContent.startsWith("pigeon://invite#"),
    null,
    { timeout: T },
  );
  return (await page.textContent("#invite-link")).trim();
}

/// `from` sends the picture at `path` to `to` (whose conversation with `from` is called
/// `fromName` on `to`'s page): the sender's line shows it at once; the receiver's shows its
/// thumbnail, then the whole, which must hash to the file's SHA-256.
async function sendPicture(from, to, toName, fromName, path) {
  const name = basename(path);
  const want = createHash("sha256").update(readFileSync(path)).digest("hex");
  await from.click(`#list button:has-text('${toName}')`);
  await from.setInputFiles("#file", path);
  await from.fill("#text", `a picture: ${name}`);
  await from.click("#composer button[type=submit]");
  await from.waitForSelector(`#lines .file:has-text('${name}')`, { timeout: T });
  await to.click(`#list button:has-text('${fromName}')`);
  const until = Date.now() + T;
  let got = null;
  while (got !== want) {
    if (Date.now() > until) throw new Error(`${name} never arrived whole (last hash ${got})`);
    await to.waitForTimeout(500);
    got = await to.evaluate(async (n) => {
      const box = [...document.querySelectorAll("#lines .file")].find((b) => b.textContent.includes(n));
      const img = box?.querySelector("img");
      const link = box?.querySelector("a[href^='/files/']");
      if (!img || !img.complete || img.naturalWidth === 0 || !link) return null;
      const bytes = await (await fetch(link.href)).arrayBuffer();
      const digest = await crypto.subtle.digest("SHA-256", bytes);
      return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    }, name);
    if (got === null) await to.click(`#list button:has-text('${fromName}')`);
  }
}

try {
  const alice = await open(aliceUrl);
  const bob = await open(bobUrl);
  step("both pages are connected");

  const link = await invite(alice);
  await alice.waitForFunction(() => document.querySelector("#invite-qr").naturalWidth > 0);
  await alice.screenshot({ path: `${shots}/invite.png` });
  await alice.click("#invite-close");
  step("alice made an invitation with its QR code");

  await bob.fill("#accept-link", link);
  await bob.click("#accept-form button");
  await bob.waitForSelector("#list button:has-text('alice')", { timeout: T });
  await alice.waitForSelector("#list button:has-text('bob')", { timeout: T });
  step("bob accepted; each sees the other");

  await bob.click("#list button:has-text('alice')");
  await bob.fill("#text", markup);
  await bob.press("#text", "Enter");
  await alice.waitForSelector("#list button:has-text('bob (')", { timeout: T });
  await alice.screenshot({ path: `${shots}/conversations.png` });
  await alice.click("#list button:has-text('bob')");
  await alice.waitForSelector("#lines li:has-text('onerror=alert(1)')", { timeout: T });
  if ((await alice.$$("#lines img, #lines script")).length > 0) {
    throw new Error("bob's markup became elements of the page");
  }
  step("bob's markup arrived as text");

  await alice.fill("#text", "hello bob, from the web");
  await alice.click("#composer button[type=submit]");
  await bob.waitForSelector("#lines li:has-text('hello bob, from the web')", { timeout: T });
  // bob's device confirms: alice's line gets its second tick (the page reloads it on events).
  const until = Date.now() + T;
  while (!(await alice.$("#lines li.outgoing .meta:has-text('✓✓')"))) {
    if (Date.now() > until) throw new Error("alice's line was never marked delivered");
    await alice.waitForTimeout(1000);
    await alice.click("#list button:has-text('bob')");
  }
  // bob has the conversation open, so he has read it: alice's line says so.
  const readBy = Date.now() + T;
  while (!(await alice.$("#lines li.outgoing .meta:has-text('read')"))) {
    if (Date.now() > readBy) throw new Error("alice's line was never marked read");
    await bob.click("#list button:has-text('alice')");
    await alice.waitForTimeout(1000);
    await alice.click("#list button:has-text('bob')");
  }
  await alice.screenshot({ path: `${shots}/conversation.png` });
  step("messages both ways; alice's is marked delivered, then read");

  // Pictures both ways, from the composer's file button.
  await sendPicture(alice, bob, "bob", "alice", process.env.ALICE_PICTURE);
  await bob.screenshot({ path: `${shots}/photo.png` });
  await sendPicture(bob, alice, "alice", "bob", process.env.BOB_PICTURE);
  step("a picture each way: thumbnail at once, the whole checked byte for byte");

  // A voice note recorded in bob's page (Chromium's fake microphone), playable in alice's.
  await bob.click("#list button:has-text('alice')");
  await bob.click("#record");
  await bob.waitForSelector("#record[aria-pressed='true']", { timeout: T });
  await bob.waitForTimeout(1500);
  await bob.click("#record");
  const heard = Date.now() + T;
  let voice = 0;
  while (voice === 0) {
    if (Date.now() > heard) throw new Error("bob's voice note never arrived whole");
    await alice.waitForTimeout(500);
    await alice.click("#list button:has-text('bob')");
    voice = await alice.evaluate(async () => {
      const audio = document.querySelector("#lines .file audio");
      if (!audio) return 0;
      const r = await fetch(audio.src);
      const type = r.headers.get("content-type") || "";
      return r.ok && !type.startsWith("application/") ? (await r.arrayBuffer()).byteLength : 0;
    });
  }
  step(`a voice note recorded in the page arrived (${voice} bytes) with a player`);

  // carol, on the command line, accepts alice's invitation; alice makes a group of three.
  const carolLink = await invite(alice);
  await alice.click("#invite-close");
  const cli = (args) => execFileSync(process.env.PIGEON_BIN, args, {
    env: { ...process.env, PIGEON_PROFILE: process.env.CAROL_PROFILE },
    encoding: "utf8",
  });
  cli(["accept", carolLink]);
  await alice.waitForSelector("#list button:has-text('carol')", { timeout: T });
  await alice.fill("#group-name", "club");
  await alice.click("#group-form button");
  await alice.waitForSelector("#list button:has-text('club')", { timeout: T });
  await alice.click("#list button:has-text('club')");
  for (const who of ["bob", "carol"]) {
    await alice.fill("#add-contact", who);
    await alice.click("#add-form button");
    await alice.waitForSelector("#status:has-text('asked them to join')", { timeout: T });
  }
  await bob.waitForSelector("#list button:has-text('club')", { timeout: T });
  const deadline = Date.now() + T;
  while (!cli(["group", "list"]).includes("club")) {
    if (Date.now() > deadline) throw new Error("carol never joined the club");
    cli(["read", "--wait", "1"]);
  }
  await bob.click("#list button:has-text('club')");
  await bob.fill("#text", "hi club");
  await bob.click("#composer button[type=submit]");
  await alice.click("#list button:has-text('club')");
  await alice.waitForSelector("#lines li:has-text('hi club')", { timeout: T });
  let carolRead = "";
  for (let i = 0; i < 10 && !carolRead.includes("hi club"); i++) carolRead += cli(["read", "--wait", "1"]);
  if (!carolRead.includes("hi club")) throw new Error(`carol did not get it: ${carolRead}`);
  await alice.screenshot({ path: `${shots}/group.png` });
  step("a group of three is made and used");

  // Managing it from the page: the members, bob made an admin, carol removed, a new name.
  await alice.click("#show-members");
  await alice.waitForSelector("#member-list li:has-text('carol')", { timeout: T });
  await alice.screenshot({ path: `${shots}/members.png` });
  await alice.click("#member-list li:has-text('bob') button:has-text('Make admin')");
  await alice.waitForSelector("#status:has-text('bob is an admin')", { timeout: T });
  // The change holds once the group's log has ordered it (the page fetches every few seconds).
  const promoted = Date.now() + T;
  while (!(await alice.$("#member-list li:has-text('bob'):has-text('admin')"))) {
    if (Date.now() > promoted) throw new Error("bob never became an admin");
    await alice.waitForTimeout(1000);
    await alice.click("#show-members");
  }
  await alice.click("#member-list li:has-text('carol') button:has-text('Remove')");
  await alice.waitForSelector("#status:has-text('removed carol')", { timeout: T });
  await alice.fill("#rename-name", "book club");
  await alice.click("#rename-form button");
  await alice.waitForSelector("#list button:has-text('book club')", { timeout: T });
  await bob.waitForSelector("#list button:has-text('book club')", { timeout: T });
  step("members listed; bob made an admin, carol removed, the group renamed, from the page");

  await alice.click("#link-device");
  await alice.waitForFunction(
    () => document.querySelector("#invite-link").textContent.startsWith("pigeon://device#"),
    null,
    { timeout: T },
  );
  await alice.screenshot({ path: `${shots}/link-device.png` });
  await alice.click("#invite-close");
  step("a device link with its QR code");

  await alice.click("#open-settings");
  await alice.waitForSelector("#relays li code", { timeout: T });
  await alice.fill("#proxy-link", "not a proxy link");
  await alice.click("#proxy-form button");
  await alice.waitForSelector("#status:has-text('not a proxy link')", { timeout: T });
  await alice.screenshot({ path: `${shots}/settings.png` });
  await alice.click("#settings-close");
  step("settings list the relay and refuse a bad proxy link in words");

  await alice.setViewportSize({ width: 390, height: 800 });
  await alice.screenshot({ path: `${shots}/phone-width.png`, fullPage: true });
  const overflow = await alice.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the page is wider than a phone");
  step("readable at phone width");

  if (dialogs.length > 0) throw new Error(`a peer's text ran script: ${dialogs.join(", ")}`);
  if (errors.length > 0) throw new Error(`the page reported errors: ${errors.join("; ")}`);
  console.log("ok");
} finally {
  await browser.close();
}
