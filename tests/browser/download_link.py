"""Clicks a download link in headless Chromium for tests/access_links.rs.

Usage: download_link.py URL OUT. Opens a page holding one link to URL, clicks it, waits for the
download and saves it to OUT; prints one JSON line: {"ok": true, "failure": null, "suggested":
NAME} or {"ok": false, "error": "..."} (a refused link is no download: Chromium shows the error
page instead, which is what the test wants to see for a bad signature).
"""

import html
import json
import sys

from playwright.sync_api import Error, sync_playwright

BROWSER = "/usr/bin/chromium"


def main():
    url, out = sys.argv[1], sys.argv[2]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        # The page comes from the server itself, as a mail's or a chat's link would open it.
        page.goto(url.split("/_velox/")[0] + "/healthz-none", wait_until="commit")
        page.set_content(f'<a id="dl" href="{html.escape(url)}" download>rr</a>')
        try:
            with page.expect_download(timeout=10000) as info:
                page.click("#dl")
            download = info.value
            download.save_as(out)
            print(json.dumps({"ok": True, "failure": download.failure(),
                              "suggested": download.suggested_filename}))
        except Error as e:
            print(json.dumps({"ok": False, "error": str(e).splitlines()[0]}))
        browser.close()


if __name__ == "__main__":
    main()
