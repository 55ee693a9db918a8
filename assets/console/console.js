// velox-cache console (docs/console.md). One file, no build step, nothing fetched from elsewhere.
// Every value from the server goes into the page as text (textContent, never innerHTML).
"use strict";

(() => {
  const admin = !location.pathname.startsWith("/_velox/");
  const api = admin ? "/v1" : "/_velox/v1";
  let token = null; // the admin token: in this tab's memory only, never shown
  let publicOrigin = location.origin;
  let registryHost = location.host;
  let minisignKey = null;
  let running = new Map();
  let failures = [];

  const $ = (id) => document.getElementById(id);

  // An element with attributes and children; strings become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    return e;
  }

  const str = (v) => (v === null || v === undefined ? "" : String(v));

  function bytes(n) {
    if (typeof n !== "number") return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function age(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "";
    return duration((Date.now() - t) / 1000) + " ago";
  }

  function duration(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  const short = (h) => str(h).slice(0, 12);
  const plugins = (ps) => (Array.isArray(ps) ? ps : []).map((p) => str(p.module_name) + "@" + str(p.tag));

  function notice(text, ok) {
    const n = $("notice");
    n.textContent = text;
    n.className = ok ? "notice ok" : "notice";
    n.hidden = false;
  }

  // A JSON GET; null when it fails (the caller decides whether that matters).
  async function getJSON(path) {
    try {
      const r = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
      if (!r.ok) return null;
      return await r.json();
    } catch (_) {
      return null;
    }
  }

  // An admin action: with the typed token; the server's error shown as it said it.
  async function act(method, path, done) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    let r;
    try {
      r = await fetch(path, { method, headers });
    } catch (e) {
      notice(method + " " + path + ": the server did not answer");
      return false;
    }
    let body = null;
    try { body = await r.json(); } catch (_) { body = null; }
    if (!r.ok) {
      const why = body && body.error ? body.error + ": " + str(body.message) : "HTTP " + r.status;
      notice(method + " " + path + " → " + r.status + " " + why);
      return false;
    }
    notice(done, true);
    return true;
  }

  function copyable(text) {
    const pre = el("pre", {}, el("code", {}, text));
    const button = el("button", {
      type: "button",
      "aria-label": "copy: " + text,
      onclick: () => {
        const select = () => {
          const range = document.createRange();
          range.selectNodeContents(pre);
          const s = getSelection();
          s.removeAllRanges();
          s.addRange(range);
        };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(text).then(
            () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 1500); },
            select,
          );
        } else {
          select();
        }
      },
    }, "Copy");
    return el("div", { class: "cmd" }, pre, button);
  }

  // ---- channels ----
  function renderChannels(list) {
    const box = $("channels");
    if (!list) { box.replaceChildren(el("p", { class: "muted" }, "channels could not be read")); return; }
    if (list.length === 0) { box.replaceChildren(el("p", { class: "muted" }, "no channels")); return; }
    const cards = el("ul", { class: "cards" });
    for (const ch of list) {
      const cur = ch.current;
      const pb = ch.prebuild || {};
      const state = str(pb.state || "idle");
      const card = el("li", { class: "card", "data-channel": str(ch.name) },
        el("div", { class: "channel-head" },
          el("h3", {}, str(ch.name)),
          el("span", { class: "state-" + state.replace(/[^a-z]/g, "") }, "pre-build: " + state),
          cur ? el("span", { class: "muted" }, "release " + short(cur.id) + ", " + age(cur.created)) : el("span", { class: "muted" }, "no release yet")),
      );
      if (pb.error) card.append(el("pre", { class: "logs" }, str(pb.error)));
      const facts = el("dl", { class: "facts" },
        el("dt", {}, "RoadRunner"), el("dd", {}, str(ch.recipe && ch.recipe.rr_version)),
        el("dt", {}, "plugins"), el("dd", {}, plugins(ch.recipe && ch.recipe.plugins).join(", ")));
      if (cur && cur.resolved && Object.keys(cur.resolved).length) {
        facts.append(el("dt", {}, "resolved"), el("dd", {},
          Object.entries(cur.resolved).map(([m, v]) => str(m) + " " + str(v)).join(", ")));
      }
      card.append(facts);
      for (const platform of ch.platforms || []) {
        const [os, arch] = str(platform).split("/");
        const bin = cur && cur.binaries ? cur.binaries[platform] : null;
        const url = publicOrigin + "/_velox/v1/channels/" + encodeURIComponent(ch.name) + "/" + encodeURIComponent(os) + "/" + encodeURIComponent(arch);
        const p = el("div", { class: "platform" },
          el("strong", {}, str(platform)),
          bin ? el("span", { class: "muted" }, " " + bytes(bin.size) + " · sha256 " + short(bin.digest)) : null,
          copyable("curl -fLo rr " + url));
        if (os === "linux") {
          p.append(copyable("COPY --from=" + registryHost + "/rr/" + ch.name + ":latest /usr/bin/rr /usr/local/bin/rr"));
        }
        if (bin && bin.signature_url && minisignKey) {
          p.append(copyable("curl -fLo rr.minisig " + publicOrigin + bin.signature_url));
          p.append(copyable("minisign -Vm rr -P " + minisignKey));
        }
        card.append(p);
      }
      cards.append(card);
    }
    box.replaceChildren(cards);
  }

  async function loadChannels() {
    const v = await getJSON(api + "/channels");
    renderChannels(v ? v.channels : null);
  }

  // ---- builds ----
  function buildCard(b, failed) {
    const li = el("li", { class: "card " + (failed ? "failed" : "building"), "data-key": str(b.key) },
      el("div", { class: "channel-head" },
        el("h3", {}, "RoadRunner " + str(b.rr_version)),
        el("span", { class: "muted" }, str(b.platform || "")),
        failed
          ? el("span", { class: "muted" }, str(b.error) + ", " + age(b.finished))
          : el("span", { class: "elapsed muted", "data-started": str(b.started_ms) }, duration((Date.now() - b.started_ms) / 1000))),
      el("p", {}, plugins(b.plugins).join(", ")));
    if (failed) {
      li.append(el("pre", { class: "logs state-failed" }, str(b.message)));
      if (b.logs) li.append(el("details", {}, el("summary", {}, "compiler output"), el("pre", { class: "logs" }, str(b.logs))));
    }
    return li;
  }

  function renderBuilds() {
    const r = [...running.values()].sort((a, b) => a.started_ms - b.started_ms);
    $("running").replaceChildren(...(r.length ? r.map((b) => buildCard(b, false)) : [el("li", { class: "muted" }, "none")]));
    $("failures").replaceChildren(...(failures.length ? failures.map((b) => buildCard(b, true)) : [el("li", { class: "muted" }, "none")]));
  }

  function setBuilds(v) {
    running = new Map((v.running || []).map((b) => [b.key, b]));
    failures = v.failures || [];
    renderBuilds();
  }

  let refreshSoon = null;
  let refreshLater = null;
  function refreshAfterBuild() {
    clearTimeout(refreshSoon);
    refreshSoon = setTimeout(() => { loadChannels(); if (admin) { loadEntries(); loadPins(); } }, 300);
    // A channel's release flips once every platform is stored, a moment after the build.
    clearTimeout(refreshLater);
    refreshLater = setTimeout(loadChannels, 3000);
  }

  function live() {
    const badge = $("live");
    const es = new EventSource(api + "/builds/events");
    const on = (name, f) => es.addEventListener(name, (e) => {
      let data = null;
      try { data = JSON.parse(e.data); } catch (_) { return; }
      f(data);
    });
    es.onopen = () => { badge.textContent = "live"; badge.className = "badge ok"; };
    es.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "badge bad"; };
    on("builds", setBuilds);
    on("started", (b) => { running.set(b.key, b); renderBuilds(); });
    on("finished", (b) => { running.delete(b.key); renderBuilds(); refreshAfterBuild(); });
    on("failed", (b) => {
      running.delete(b.key);
      failures.unshift(b);
      failures = failures.slice(0, 20);
      renderBuilds();
      refreshAfterBuild();
    });
    on("lagged", async () => { const v = await getJSON(api + "/builds"); if (v) setBuilds(v); });
  }

  setInterval(() => {
    for (const e of document.querySelectorAll(".elapsed")) {
      e.textContent = duration((Date.now() - Number(e.dataset.started)) / 1000);
    }
  }, 1000);

  // ---- admin: traffic ----
  function bars(id, values, max) {
    const box = $(id);
    const w = 600 / 60;
    const shapes = [svg("line", { class: "axis", x1: 0, y1: 119, x2: 600, y2: 119 })];
    values.slice(-60).forEach((v, i, all) => {
      const h = max > 0 ? Math.max(v > 0 ? 2 : 0, (v / max) * 116) : 0;
      const x = 600 - (all.length - i) * w;
      const r = svg("rect", { class: "bar", x: x + 1, y: 119 - h, width: w - 2, height: h });
      r.append(svg("title", {}));
      r.lastChild.textContent = String(v);
      shapes.push(r);
    });
    box.replaceChildren(...shapes);
  }

  async function loadTraffic() {
    const v = await getJSON("/v1/history");
    if (!v) return;
    const ms = v.minutes || [];
    const b = ms.map((m) => m.bytes);
    bars("chart-bytes", b, Math.max(0, ...b));
    bars("chart-ratio", ms.map((m) => (m.hits + m.misses > 0 ? m.hits / (m.hits + m.misses) : 0)), 1);
    const ratio = v.hit_ratio === null || v.hit_ratio === undefined ? "no requests" : "hit ratio " + (v.hit_ratio * 100).toFixed(1) + " %";
    $("traffic-summary").textContent = ratio + " (" + v.hits + " hits, " + v.misses + " misses), " + bytes(v.bytes) + " served";
  }

  // ---- admin: entries and pins ----
  function pinButtons(e) {
    const pins = Array.isArray(e.pins) ? e.pins : [];
    const out = [];
    const key = str(e.key);
    if (pins.includes("manual")) {
      out.push(el("button", { type: "button", "data-action": "unpin", onclick: async () => {
        if (await act("DELETE", "/v1/cache/" + encodeURIComponent(key) + "/pin", "unpinned " + short(key))) refreshAfterBuild();
      } }, "Unpin"));
    } else {
      out.push(el("button", { type: "button", "data-action": "pin", onclick: async () => {
        if (await act("POST", "/v1/cache/" + encodeURIComponent(key) + "/pin", "pinned " + short(key))) refreshAfterBuild();
      } }, "Pin"));
    }
    return out;
  }

  function deleteButton(key) {
    let armed = null;
    const b = el("button", { type: "button", class: "danger", "data-action": "delete", onclick: async () => {
      if (!armed) {
        b.textContent = "Confirm delete";
        armed = setTimeout(() => { armed = null; b.textContent = "Delete"; }, 5000);
        return;
      }
      clearTimeout(armed);
      armed = null;
      b.textContent = "Delete";
      if (await act("DELETE", "/v1/cache/" + encodeURIComponent(key), "deleted " + short(key))) refreshAfterBuild();
    } }, "Delete");
    return b;
  }

  async function loadEntries() {
    const q = $("search").value.trim();
    const v = await getJSON("/v1/cache/search?limit=100&q=" + encodeURIComponent(q));
    const body = $("entries").tBodies[0];
    if (!v) { body.replaceChildren(el("tr", {}, el("td", { colspan: 9 }, "entries could not be read"))); return; }
    const rows = v.entries.map((e) => el("tr", { "data-key": str(e.key) },
      el("td", { class: "mono", title: str(e.key) }, short(e.key)),
      el("td", { class: "mono", title: str(e.digest) }, short(e.digest)),
      el("td", {}, str(e.rr_version)),
      el("td", {}, plugins(e.plugins).join(", ")),
      el("td", {}, bytes(e.size)),
      el("td", {}, age(e.created_at)),
      el("td", {}, str(e.access_count)),
      el("td", {}, (e.pins || []).join(", ")),
      el("td", {}, ...pinButtons(e), " ", deleteButton(str(e.key)))));
    body.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 9, class: "muted" }, q ? "no entry matches" : "no entries"))]));
    $("entries-more").textContent = v.complete ? "" : "more entries exist: narrow the search";
  }

  async function loadPins() {
    const v = await getJSON("/v1/cache/pinned");
    const list = $("pins");
    if (!v) { list.replaceChildren(el("li", { class: "muted" }, "pins could not be read")); return; }
    list.replaceChildren(...(v.entries.length ? v.entries.map((e) => el("li", { class: "card" },
      el("div", { class: "channel-head" },
        el("h3", { class: "mono" }, short(e.key)),
        el("span", { class: "muted" }, "held by " + (e.pins || []).join(", ")),
        el("span", { class: "muted" }, str(e.rr_version) + " " + bytes(e.size))),
      (e.pins || []).includes("manual") ? pinButtons(e) : [])) : [el("li", { class: "muted" }, "none")]));
  }

  // ---- admin: builders, disk ----
  async function loadBuilders() {
    const v = await getJSON("/v1/builders");
    const list = Array.isArray(v) ? v : v && Array.isArray(v.builders) ? v.builders : null;
    $("builders-section").hidden = !list;
    if (!list) return;
    $("builders").tBodies[0].replaceChildren(...list.map((b) => el("tr", {},
      el("td", {}, str(b.id)), el("td", { class: "mono" }, str(b.url)),
      el("td", { class: "state-" + (b.state === "up" ? "idle" : b.state === "down" ? "failed" : "building") }, str(b.state)),
      el("td", {}, str(b.in_flight) + " / " + str(b.max_concurrent)),
      el("td", {}, str(b.builds)), el("td", {}, str(b.failures)), el("td", {}, str(b.last_error)),
      el("td", {},
        el("button", { type: "button", onclick: async () => {
          if (await act("POST", "/v1/builders/" + encodeURIComponent(str(b.id)) + "/drain", "draining builder " + str(b.id))) loadBuilders();
        } }, "Drain"), " ",
        el("button", { type: "button", onclick: async () => {
          if (await act("POST", "/v1/builders/" + encodeURIComponent(str(b.id)) + "/enable", "enabled builder " + str(b.id))) loadBuilders();
        } }, "Enable")))));
  }

  async function loadDisk() {
    const [ready, stats] = await Promise.all([getJSON("/readyz").catch(() => null), getJSON("/v1/cache/stats")]);
    const facts = [];
    const fact = (k, v) => facts.push(el("dt", {}, k), el("dd", {}, v));
    if (stats) {
      fact("cache", stats.entries + " entries, " + bytes(stats.bytes) + (stats.limits && stats.limits.max_bytes ? " of " + bytes(stats.limits.max_bytes) : ""));
      fact("builds in flight", str(stats.builds_in_flight));
    }
    if (ready) {
      fact("storage", str(ready.storage));
      if (typeof ready.disk_free_bytes === "number") {
        fact("free on disk", bytes(ready.disk_free_bytes));
        fact("headroom", bytes(Math.max(0, ready.disk_free_bytes - (ready.min_free_bytes || 0))) + " above the minimum free (" + bytes(ready.min_free_bytes || 0) + ")");
      }
    }
    $("disk").replaceChildren(...facts);
  }

  // ---- start ----
  async function start() {
    $("where").textContent = admin ? "admin" : "public";
    for (const s of document.querySelectorAll("[data-admin]")) s.hidden = !admin || s.id === "builders-section";
    if (admin) {
      const c = await getJSON("/v1/console");
      if (c) {
        publicOrigin = location.protocol + "//" + location.hostname + ":" + c.public_port;
        registryHost = location.hostname + ":" + c.public_port;
        minisignKey = c.keys && c.keys.current ? c.keys.current.minisign : null;
      }
      $("token-form").addEventListener("submit", (e) => {
        e.preventDefault();
        const input = $("token");
        token = input.value.trim() || null;
        input.value = "";
        $("token-state").textContent = token ? "token set" : "no token";
      });
      $("token-forget").addEventListener("click", () => { token = null; $("token-state").textContent = "no token"; });
      let typing = null;
      $("search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadEntries, 250); });
      const builders = Boolean(c && c.builders);
      loadTraffic(); loadEntries(); loadPins(); loadDisk();
      if (builders) loadBuilders();
      setInterval(() => { loadTraffic(); loadDisk(); if (builders) loadBuilders(); }, 15000);
    } else {
      const k = await getJSON("/_velox/v1/keys");
      minisignKey = k && k.current ? k.current.minisign : null;
    }
    await loadChannels();
    // The time to first useful render, for the benchmarks (BENCHMARKS.md).
    performance.mark("velox-console-rendered");
    live();
    setInterval(loadChannels, 30000);
    $("updated").textContent = "opened " + new Date().toLocaleTimeString();
  }

  start();
})();
