"""Drives the console in headless Chromium for tests/console.rs.

A thin remote control over Playwright: one JSON command per line on standard input, one JSON
answer per line on standard output. The Rust test decides what to do and asserts; this file only
does what it is told and records what the browser saw: console errors, page errors, dialogs
(an `alert` from injected markup would be one) and every request the page made.

Commands (each answers {"ok": true, ...} or {"ok": false, "error": "..."}):
  {"cmd": "open", "url": U, "width": W, "height": H}  a new page (the last one closed); answers `first_paint_ms`
      (first contentful paint) and `rendered_ms` (navigation start to the first channel card)
  {"cmd": "viewport", "width": W, "height": H}
  {"cmd": "wait", "selector": S, "text": T, "timeout_ms": N}  until S exists (and contains T)
  {"cmd": "wait_gone", "selector": S, "timeout_ms": N}
  {"cmd": "text", "selector": S}          answers `text` (the first match's innerText)
  {"cmd": "count", "selector": S}         answers `count`
  {"cmd": "fill", "selector": S, "text": T}
  {"cmd": "press", "selector": S, "key": K}   focus S and press K (keyboard use)
  {"cmd": "click", "selector": S}
  {"cmd": "screenshot", "path": P}        full page
  {"cmd": "report"}  answers `console_errors`, `page_errors`, `dialogs`, `requests` (URLs) and
      `bytes` (URL -> body length, for the page's own files)
  {"cmd": "close"}
"""

import json
import sys
import time

from playwright.sync_api import sync_playwright

BROWSER = "/usr/bin/chromium"


def main():
    console_errors, page_errors, dialogs, requests, sizes = [], [], [], [], {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = None

        def on_console(msg):
            if msg.type == "error":
                console_errors.append({"text": msg.text, "url": msg.location.get("url", "")})

        def on_dialog(d):
            dialogs.append({"type": d.type, "message": d.message})
            d.dismiss()

        def on_response(r):
            url = r.url
            if url.endswith((".js", ".css", "/")):
                try:
                    sizes[url] = len(r.body())
                except Exception:  # a stream or a redirect has no body to measure
                    pass

        def answer(obj):
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            try:
                c = json.loads(line)
                cmd = c["cmd"]
                out = {"ok": True}
                timeout = c.get("timeout_ms", 15000)
                if cmd == "open":
                    if page is not None:
                        page.close()
                    page = context.new_page()
                    page.set_viewport_size({"width": c.get("width", 1280), "height": c.get("height", 900)})
                    page.on("console", on_console)
                    page.on("pageerror", lambda e: page_errors.append(str(e)))
                    page.on("dialog", on_dialog)
                    page.on("request", lambda r: requests.append(r.url))
                    page.on("response", on_response)
                    page.goto(c["url"], wait_until="load")
                    page.wait_for_selector("[data-channel], #channels p", timeout=timeout)
                    # Polled from here: the page's CSP forbids the eval wait_for_function uses.
                    deadline = time.monotonic() + timeout / 1000
                    mark = "performance.getEntriesByName('velox-console-rendered').length"
                    while not page.evaluate(mark):
                        if time.monotonic() > deadline:
                            raise TimeoutError("the page never marked its first render")
                        time.sleep(0.02)
                    out["rendered_ms"] = page.evaluate(
                        "performance.getEntriesByName('velox-console-rendered')[0].startTime"
                    )
                    out["first_paint_ms"] = page.evaluate(
                        "(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime || null"
                    )
                elif cmd == "viewport":
                    page.set_viewport_size({"width": c["width"], "height": c["height"]})
                elif cmd == "wait":
                    sel = c["selector"]
                    if "text" in c:
                        page.locator(sel).filter(has_text=c["text"]).first.wait_for(timeout=timeout)
                    else:
                        page.locator(sel).first.wait_for(timeout=timeout)
                elif cmd == "wait_gone":
                    page.locator(c["selector"]).first.wait_for(state="detached", timeout=timeout)
                elif cmd == "text":
                    out["text"] = page.locator(c["selector"]).first.inner_text(timeout=timeout)
                elif cmd == "count":
                    out["count"] = page.locator(c["selector"]).count()
                elif cmd == "fill":
                    page.locator(c["selector"]).first.fill(c["text"], timeout=timeout)
                elif cmd == "press":
                    page.locator(c["selector"]).first.focus(timeout=timeout)
                    page.keyboard.press(c["key"])
                elif cmd == "click":
                    page.locator(c["selector"]).first.click(timeout=timeout)
                elif cmd == "screenshot":
                    page.screenshot(path=c["path"], full_page=True)
                elif cmd == "report":
                    # Give late errors (a rejected promise, an image that failed) a moment.
                    time.sleep(0.3)
                    out.update(
                        console_errors=console_errors,
                        page_errors=page_errors,
                        dialogs=dialogs,
                        requests=requests,
                        bytes=sizes,
                    )
                elif cmd == "close":
                    answer(out)
                    break
                else:
                    out = {"ok": False, "error": "unknown command " + cmd}
            except Exception as e:  # reported to the test, which fails with it
                out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
            answer(out)
        browser.close()


if __name__ == "__main__":
    main()
