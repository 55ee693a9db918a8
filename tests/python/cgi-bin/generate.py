#!/usr/bin/env python3
"""A build instruction: the Velox build request with `X-Velox-Build: true`. `tag` picks the HTTP
plugin's version, `encoding=gzip` compresses it; a POSTed JSON body may give the plugins."""
import gzip
import json
import os
import sys
from urllib.parse import parse_qs

query = parse_qs(os.environ.get("QUERY_STRING", ""))
length = int(os.environ.get("CONTENT_LENGTH") or 0)
given = json.loads(sys.stdin.buffer.read(length) or b"{}") if length else {}
tag = query.get("tag", ["v5.2.7"])[0]
request = {
    "target_platform": {"os": given.get("os", "linux"), "arch": given.get("arch", "amd64")},
    "rr_version": "v2025.1.2",
    "plugins": given.get("plugins") or [
        {"module_name": "github.com/roadrunner-server/http/v5", "tag": tag},
        {"module_name": "github.com/roadrunner-server/jobs/v5", "tag": "v5.1.0"},
    ],
}
body = json.dumps(request).encode()
out = sys.stdout.buffer
out.write(b"X-Velox-Build: true\r\nContent-Type: application/json\r\n")
if query.get("encoding", [""])[0] == "gzip":
    out.write(b"Content-Encoding: gzip\r\n")
    body = gzip.compress(body)
out.write(b"\r\n" + body)
