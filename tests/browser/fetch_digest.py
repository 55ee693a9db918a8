"""Fetches a binary in headless Chromium for tests/compression.rs.

Usage: fetch_digest.py PAGE_URL BINARY_URL. Opens PAGE_URL (any page of the server, so that the
fetch is same-origin), runs `fetch(BINARY_URL)` in it, and prints one JSON object: the status,
the `Content-Encoding` and `X-Binary-SHA256` the page saw, the SHA-256 of the decoded body
(Web Crypto), its length, and the encoded and decoded sizes the browser's Resource Timing recorded.
The Rust test asserts; this file only reports.
"""

import json
import sys

from playwright.sync_api import sync_playwright

BROWSER = "/usr/bin/chromium"

SCRIPT = """async (url) => {
  const r = await fetch(url, {cache: "no-store"});
  const body = await r.arrayBuffer();
  const digest = await crypto.subtle.digest("SHA-256", body);
  const hex = Array.from(new Uint8Array(digest)).map(b => b.toString(16).padStart(2, "0")).join("");
  const timing = performance.getEntriesByName(url).pop() || {};
  return {
    status: r.status,
    content_encoding: r.headers.get("content-encoding"),
    x_binary_sha256: r.headers.get("x-binary-sha256"),
    sha256: hex,
    decoded_bytes: body.byteLength,
    encoded_body_size: timing.encodedBodySize ?? null,
    decoded_body_size: timing.decodedBodySize ?? null,
  };
}"""


def main():
    page_url, binary_url = sys.argv[1], sys.argv[2]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        page = browser.new_page()
        sent = {}

        def on_request(req):
            if req.url == binary_url:
                sent["accept_encoding"] = req.all_headers().get("accept-encoding")

        page.on("request", on_request)
        page.goto(page_url)
        out = page.evaluate(SCRIPT, binary_url)
        out.update(sent)
        browser.close()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
