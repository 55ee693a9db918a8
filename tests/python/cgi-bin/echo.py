#!/usr/bin/env python3
"""Tells what arrived: method, query, the headers CGI passes on, the body's length and SHA-256."""
import hashlib
import json
import os
import sys

length = int(os.environ.get("CONTENT_LENGTH") or 0)
body = sys.stdin.buffer.read(length) if length else b""
headers = {
    k[5:].lower().replace("_", "-"): v for k, v in os.environ.items() if k.startswith("HTTP_") and v
}
if "CONTENT_LENGTH" in os.environ:
    headers["content-length"] = os.environ["CONTENT_LENGTH"]
out = sys.stdout
out.write("Content-Type: application/json\r\n\r\n")
out.write(json.dumps({
    "method": os.environ.get("REQUEST_METHOD"),
    "query": os.environ.get("QUERY_STRING", ""),
    "headers": headers,
    "body_length": len(body),
    "body_sha256": hashlib.sha256(body).hexdigest(),
}))
