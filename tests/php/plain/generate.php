<?php
// An app's "build me a RoadRunner" endpoint: it answers the Velox build request with
// `X-Velox-Build: true`, and velox-cache answers the client with the binary. The plugins come
// from a POSTed JSON body, or are the app's defaults (GET); `tag` picks the HTTP plugin's version
// and `encoding=gzip` compresses the answer.
$in = json_decode(file_get_contents('php://input') ?: '{}', true) ?: [];
$tag = $_GET['tag'] ?? 'v5.2.7';
$request = [
    'target_platform' => ['os' => $in['os'] ?? 'linux', 'arch' => $in['arch'] ?? 'amd64'],
    'rr_version' => 'v2025.1.2',
    'plugins' => $in['plugins'] ?? [
        ['module_name' => 'github.com/roadrunner-server/http/v5', 'tag' => $tag],
        ['module_name' => 'github.com/roadrunner-server/jobs/v5', 'tag' => 'v5.1.0'],
    ],
];
header('X-Velox-Build: true');
header('Content-Type: application/json');
$json = json_encode($request, JSON_UNESCAPED_SLASHES);
if (($_GET['encoding'] ?? '') === 'gzip') {
    header('Content-Encoding: gzip');
    echo gzencode($json);
} else {
    echo $json;
}
