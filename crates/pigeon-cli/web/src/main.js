// The Pigeonpost web client: JSON-RPC over a WebSocket to `pigeon app` (docs/RPC.md).
// Everything a peer sends is put into the page as text (textContent), never as markup.
import "./app.css";

let socket;
let nextId = 1;
const pending = new Map();
let current = null;
const kinds = new Map();

function $(id) { return document.getElementById(id); }

function setStatus(text) { $("status").textContent = text; }

function call(method, params) {
  const id = nextId++;
  socket.send(JSON.stringify({ jsonrpc: "2.0", id, method, params: params || {} }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

function connect() {
  socket = new WebSocket(`ws://${location.host}/rpc`);
  socket.addEventListener("open", start);
  socket.addEventListener("close", () => {
    setStatus("disconnected from pigeon app; reload when it runs again");
    for (const p of pending.values()) p.reject(new Error("disconnected"));
    pending.clear();
  });
  socket.addEventListener("message", (e) => {
    let msg;
    try { msg = JSON.parse(e.data); } catch { return; }
    if (msg.method === "event") { onEvent(msg.params); return; }
    const p = pending.get(msg.id);
    if (!p) return;
    pending.delete(msg.id);
    if (msg.error) p.reject(new Error(msg.error.message)); else p.resolve(msg.result);
  });
}

async function start() {
  try {
    const me = await call("profile.info");
    opened(me);
  } catch (e) {
    $("unlock").hidden = false;
    setStatus("locked");
  }
}

function opened(me) {
  $("unlock").hidden = true;
  $("me").textContent = me.device ? `${me.name} (${me.device})` : me.name;
  setStatus("connecting to your relays…");
  refreshList();
  showConnection();
}

// The route in use to each relay, or why none worked (pointing at censorship when likely).
async function showConnection() {
  const started = performance.now();
  try {
    const relays = await call("connection.check");
    const ms = Math.round(performance.now() - started);
    const up = relays.filter((r) => r.connected);
    setStatus(up.length > 0
      ? `connected via ${up.map((r) => r.route).join(", ")} (${ms} ms)`
      : `not connected: ${relays.map((r) => r.error).join("; ")}`);
  } catch (err) {
    setStatus(err.message);
  }
}

async function refreshList() {
  const list = await call("conversations.list");
  const ul = $("list");
  ul.replaceChildren();
  for (const c of list) {
    kinds.set(c.name, c.kind);
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = c.unread > 0 ? `${c.name} (${c.unread})` : c.name;
    if (c.unread > 0) b.classList.add("unread");
    if (current === c.name) b.setAttribute("aria-current", "true");
    if (c.last) {
      const last = document.createElement("div");
      last.className = "meta";
      last.textContent = c.last.file ? `[${c.last.file.kind}] ${c.last.file.name} ${c.last.text}` : c.last.text;
      b.append(last);
    }
    b.addEventListener("click", () => open(c.name));
    li.append(b);
    ul.append(li);
  }
}

function day(ms) { return new Date(ms).toLocaleDateString(); }

async function open(name) {
  current = name;
  $("title").textContent = name;
  $("composer").hidden = false;
  $("add-form").hidden = kinds.get(name) !== "group";
  const lines = await call("messages.list", { with: name, limit: 200 });
  const ol = $("lines");
  ol.replaceChildren();
  let lastDay = null;
  for (const l of lines) {
    const d = day(l.sent_at_ms);
    if (d !== lastDay) {
      const sep = document.createElement("li");
      sep.className = "day";
      sep.textContent = d;
      ol.append(sep);
      lastDay = d;
    }
    const li = document.createElement("li");
    li.className = l.notice ? "notice" : (l.outgoing ? "outgoing" : "incoming");
    li.textContent = l.notice || l.outgoing ? l.text : `${l.from}: ${l.text}`;
    if (l.file) {
      if (l.text) li.append(document.createElement("br"));
      li.append(fileView(l.file));
    }
    const meta = document.createElement("span");
    meta.className = "meta";
    const t = new Date(l.sent_at_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    const mark = l.seen ? "✓✓ read" : (l.delivered ? "✓✓" : (l.seq === null ? "…" : "✓"));
    meta.textContent = l.outgoing && !l.notice ? `${t} ${mark}` : t;
    li.append(meta);
    ol.append(li);
  }
  ol.lastElementChild?.scrollIntoView();
  await call("messages.mark_read", { with: name });
  refreshList();
}

function size(bytes) {
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`;
  return `${bytes} B`;
}

// A photo, voice note or file in a line: its thumbnail, a player for a voice note, its name as
// a link to save it once it is here, and a progress bar while it moves.
function fileView(f) {
  const box = document.createElement("div");
  box.className = "file";
  box.dataset.file = String(f.id);
  const here = f.state === "received" || f.state === "sent" || f.state === "uploading";
  if (f.thumbnail) {
    const img = document.createElement("img");
    img.alt = `photo ${f.name}`;
    img.src = `/files/${f.id}/thumbnail`;
    box.append(img);
  }
  if (f.kind === "voice note" && here) {
    const audio = document.createElement("audio");
    audio.controls = true;
    audio.src = `/files/${f.id}`;
    box.append(audio);
  }
  const name = document.createElement(here ? "a" : "span");
  name.textContent = `${f.name} (${size(f.size)})`;
  if (here) {
    name.href = `/files/${f.id}`;
    name.download = f.name;
  }
  box.append(name);
  if (f.state === "uploading" || f.state === "downloading") {
    const bar = document.createElement("progress");
    bar.max = f.size;
    bar.value = f.done;
    bar.setAttribute("aria-label", f.state === "uploading" ? `sending ${f.name}` : `receiving ${f.name}`);
    box.append(bar);
  }
  if (f.state === "failed") {
    const why = document.createElement("span");
    why.className = "meta";
    why.textContent = `cannot be had: ${f.error || "unknown reason"}`;
    box.append(why);
  }
  return box;
}

function onEvent(ev) {
  if (ev.kind === "file_progress") {
    const bar = document.querySelector(`[data-file="${Number(ev.id)}"] progress`);
    if (bar) { bar.max = ev.size; bar.value = ev.done; }
    return;
  }
  if (ev.kind === "file") {
    if (ev.conversation === current) open(current); else refreshList();
    return;
  }
  if (ev.kind === "route") {
    if (ev.state === "trying") setStatus(`trying ${ev.route}…`);
    else if (ev.state === "connected") setStatus(`connected via ${ev.route} (${ev.after_ms} ms)`);
    else setStatus(`${ev.route} failed: ${ev.error}${ev.censorship_likely ? " (the network may be blocking it)" : ""}`);
    return;
  }
  const here = ev.kind === "delivered" || ev.kind === "read" || (ev.kind === "message" && ev.line && ev.line.conversation === current);
  if (here && current !== null) open(current);
  else refreshList();
}

$("unlock-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    opened(await call("profile.open", { passphrase: $("passphrase").value }));
  } catch (err) {
    setStatus(err.message);
  }
  $("passphrase").value = "";
});

// Sends a file (the message's text becomes its caption): uploaded to this machine's pigeon,
// which seals it and sends it; the line shows its progress.
async function sendFile(blob, name, caption, voice) {
  const q = new URLSearchParams({ to: current, name, caption });
  if (voice) q.set("voice", "1");
  setStatus(`sealing ${name}…`);
  const r = await fetch(`/files?${q}`, { method: "POST", body: blob });
  if (!r.ok) throw new Error(await r.text());
  setStatus(`sending ${name}`);
  open(current);
}

$("composer").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value;
  const chosen = $("file").files[0];
  if (!current) return;
  if (chosen) {
    try {
      await sendFile(chosen, chosen.name, text, false);
      $("file").value = "";
      $("text").value = "";
    } catch (err) {
      setStatus(err.message);
    }
    return;
  }
  if (!text) return;
  try {
    const r = await call("messages.send", { to: current, text });
    $("text").value = "";
    setStatus(r.sent ? "sent" : "saved; it goes when the relay answers");
    open(current);
  } catch (err) {
    setStatus(err.message);
  }
});

$("file").addEventListener("change", () => {
  const f = $("file").files[0];
  if (f) setStatus(`${f.name} (${size(f.size)}) is ready: add a caption if you like, then Send`);
});

// Voice notes: recorded in the browser (the microphone is asked for when the button is
// pressed), sent as a file marked as a voice note when it is pressed again.
let recorder = null;
$("record").addEventListener("click", async () => {
  if (recorder) { recorder.stop(); return; }
  if (!current) return;
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const parts = [];
    recorder = new MediaRecorder(stream);
    recorder.addEventListener("dataavailable", (e) => parts.push(e.data));
    recorder.addEventListener("stop", async () => {
      stream.getTracks().forEach((t) => t.stop());
      $("record").setAttribute("aria-pressed", "false");
      const type = recorder.mimeType || "audio/webm";
      recorder = null;
      const name = `voice note ${new Date().toISOString().slice(0, 19).replace("T", " ")}.${type.includes("ogg") ? "ogg" : "webm"}`;
      try { await sendFile(new Blob(parts, { type }), name, "", true); } catch (err) { setStatus(err.message); }
    });
    recorder.start();
    $("record").setAttribute("aria-pressed", "true");
    setStatus("recording a voice note: press Voice note again to send it");
  } catch (err) {
    recorder = null;
    setStatus(`no microphone: ${err.message}`);
  }
});

$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});

function showLink(title, made) {
  $("invite-title").textContent = title;
  $("invite-link").textContent = made.link;
  $("invite-qr").src = "data:image/svg+xml;base64," + btoa(made.qr_svg);
  $("invitation").hidden = false;
}

$("invite").addEventListener("click", async () => {
  try {
    showLink("Give this one-time link to one person, privately:", await call("invite.create"));
  } catch (err) {
    setStatus(err.message);
  }
});

// A new device of yours: the link for `pigeon init --link` on it, then the handover as it goes
// (the server keeps fetching while this page is open).
$("link-device").addEventListener("click", async () => {
  try {
    showLink(
      "On the new device run `pigeon init --link` with this link (it works once, for 10 minutes; show it to nobody else):",
      await call("devices.link"),
    );
  } catch (err) {
    setStatus(err.message);
    return;
  }
  const follow = setInterval(async () => {
    try {
      const p = await call("devices.link_progress");
      if (p.answered) setStatus(`${p.device || "new device"}: ${p.welcomed} of ${p.offered} conversations handed over`);
      if (p.done || p.expired) {
        clearInterval(follow);
        setStatus(p.done ? `linked ${p.device}` : "nobody answered the link in time");
        refreshList();
      }
    } catch (err) {
      clearInterval(follow);
      setStatus(err.message);
    }
  }, 2000);
});
$("invite-close").addEventListener("click", () => { $("invitation").hidden = true; });

// Settings: the profile's relays and proxies, each with a remove button.
function linkItem(text, onRemove) {
  const li = document.createElement("li");
  const code = document.createElement("code");
  code.textContent = text.length > 60 ? `${text.slice(0, 60)}…` : text;
  code.title = text;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Remove";
  remove.addEventListener("click", onRemove);
  li.append(code, " ", remove);
  return li;
}

async function showSettings() {
  try {
    const relays = await call("relays.list");
    $("relays").replaceChildren(...relays.map((link) => linkItem(link, async () => {
      try { await call("relays.remove", { link }); showSettings(); } catch (err) { setStatus(err.message); }
    })));
    const proxies = await call("proxies.list");
    $("proxies").replaceChildren(...proxies.map((p) => linkItem(`${p.link}${p.always ? " (only)" : ""}`, async () => {
      try { await call("proxies.remove", { link: p.link }); showSettings(); } catch (err) { setStatus(err.message); }
    })));
    $("read-receipts").checked = (await call("profile.read_receipts")).send;
    $("settings").hidden = false;
  } catch (err) {
    setStatus(err.message);
  }
}

$("open-settings").addEventListener("click", showSettings);
$("read-receipts").addEventListener("change", async () => {
  try {
    const r = await call("profile.read_receipts", { send: $("read-receipts").checked });
    setStatus(r.send ? "read receipts on" : "read receipts off");
  } catch (err) {
    setStatus(err.message);
  }
});
$("settings-close").addEventListener("click", () => { $("settings").hidden = true; });
$("relay-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await call("relays.add", { link: $("relay-link").value.trim() });
    $("relay-link").value = "";
    showSettings();
  } catch (err) {
    setStatus(err.message);
  }
});
$("proxy-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await call("proxies.add", { link: $("proxy-link").value.trim(), always: $("proxy-always").checked });
    $("proxy-link").value = "";
    showSettings();
  } catch (err) {
    setStatus(err.message);
  }
});

$("accept-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    const c = await call("invite.accept", { link: $("accept-link").value.trim() });
    $("accept-link").value = "";
    setStatus(`talking with ${c.name}`);
    refreshList();
  } catch (err) {
    setStatus(err.message);
  }
});

$("add-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await call("groups.add", { group: current, contact: $("add-contact").value.trim() });
    $("add-contact").value = "";
    setStatus("asked them to join");
  } catch (err) {
    setStatus(err.message);
  }
});

// Group management: the members (with their admin and verified marks), removing a member and
// making one an admin (admins only: every device refuses it from anyone else), renaming,
// an invitation link, leaving.
async function showMembers() {
  if (!current) return;
  const group = current;
  try {
    const members = await call("groups.members", { group });
    $("members-title").textContent = `Members of ${group}`;
    const iAmAdmin = members.some((m) => m.you && m.admin);
    $("member-list").replaceChildren(...members.map((m) => {
      const li = document.createElement("li");
      const who = m.device ? `${m.name} (${m.device})` : m.name;
      const marks = [m.you ? "you" : "", m.admin ? "admin" : "", m.verified ? "verified" : ""].filter(Boolean);
      li.textContent = marks.length > 0 ? `${who} — ${marks.join(", ")}` : who;
      if (iAmAdmin && !m.you) {
        const act = async (method, done) => {
          try {
            await call(method, { group, member: m.name });
            setStatus(done);
            showMembers();
          } catch (err) {
            setStatus(err.message);
          }
        };
        const remove = document.createElement("button");
        remove.type = "button";
        remove.textContent = "Remove";
        remove.addEventListener("click", () => act("groups.remove", `removed ${m.name}`));
        li.append(" ", remove);
        if (!m.admin) {
          const promote = document.createElement("button");
          promote.type = "button";
          promote.textContent = "Make admin";
          promote.addEventListener("click", () => act("groups.admin", `${m.name} is an admin`));
          li.append(" ", promote);
        }
      }
      return li;
    }));
    $("members").hidden = false;
  } catch (err) {
    setStatus(err.message);
  }
}

$("show-members").addEventListener("click", showMembers);
$("members-close").addEventListener("click", () => { $("members").hidden = true; });
$("rename-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("rename-name").value.trim();
  if (!name || !current) return;
  try {
    await call("groups.rename", { group: current, name });
    $("rename-name").value = "";
    $("members").hidden = true;
    // The new name holds once the group's log has ordered the change (a moment).
    setStatus(`renaming ${current} to ${name}`);
  } catch (err) {
    setStatus(err.message);
  }
});
$("group-invite").addEventListener("click", async () => {
  try {
    $("members").hidden = true;
    showLink(`Give this one-time link to one person to join ${current}:`, await call("groups.invite", { group: current }));
  } catch (err) {
    setStatus(err.message);
  }
});
// Leaving takes a second press within five seconds (no modal dialog).
let leaveArmed = null;
$("leave-group").addEventListener("click", async () => {
  if (!current) return;
  if (leaveArmed === null) {
    $("leave-group").textContent = `Press again to leave ${current} (you will read nothing new from it)`;
    leaveArmed = setTimeout(() => {
      leaveArmed = null;
      $("leave-group").textContent = "Leave the group";
    }, 5000);
    return;
  }
  clearTimeout(leaveArmed);
  leaveArmed = null;
  $("leave-group").textContent = "Leave the group";
  try {
    await call("groups.leave", { group: current });
    $("members").hidden = true;
    setStatus(`left ${current}`);
    refreshList();
  } catch (err) {
    setStatus(err.message);
  }
});

$("group-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await call("groups.create", { name: $("group-name").value.trim() });
    $("group-name").value = "";
    refreshList();
  } catch (err) {
    setStatus(err.message);
  }
});

connect();
