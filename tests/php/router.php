<?php
// A small PHP app for the proxy tests, run with `php -S 127.0.0.1:PORT router.php`.
//
// `POST /api/v1/binary/generate` behaves like roadrunner-php/velox-app's: it takes
// {plugins, target_os, target_arch, force_rebuild, rr_version?} (plugins may carry `replace`) and
// answers the Velox build request with `X-Velox-Build: true`, for velox-cache to take over. The
// other routes are the ordinary pages a proxy must pass through untouched.
//
// VELOX_APP_FIXTURES names a folder the tests share with the app: brotli-encoded instructions
// (PHP has no brotli) and the "release" files that let a paused stream go on.

declare(strict_types=1);

// Most answers are left as `php -S` frames them: no Content-Length, the body ends at the close
// (RFC 9112 §6.3), which velox-cache relays whole. Some routes set a length or chunked framing of
// their own, to test those framings.

$fixtures = getenv('VELOX_APP_FIXTURES') ?: sys_get_temp_dir();
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?: '/';
$method = $_SERVER['REQUEST_METHOD'];

function uuid4(): string
{
    $b = random_bytes(16);
    $b[6] = chr((ord($b[6]) & 0x0f) | 0x40);
    $b[8] = chr((ord($b[8]) & 0x3f) | 0x80);
    return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($b), 4));
}

function json_out(int $status, $value): void
{
    $body = json_encode($value, JSON_UNESCAPED_SLASHES);
    http_response_code($status);
    header('Content-Type: application/json');
    header('Content-Length: ' . strlen($body));
    echo $body;
}

/// Sends a build instruction, encoded as `?encoding=` asks.
function instruction(array $request, string $fixtures): void
{
    header('X-Velox-Build: true');
    header('X-App: velox-app');
    header('Content-Type: application/json');
    if (isset($_GET['filename'])) {
        header('Content-Disposition: attachment; filename="' . $_GET['filename'] . '"');
    }
    if (isset($_GET['spa_cors'])) {
        // A browser app on another origin (velox-app's SPA) calls this endpoint.
        header('Access-Control-Allow-Origin: https://spa.example');
        header('Access-Control-Expose-Headers: X-App');
        header('Vary: Origin');
    }
    $json = json_encode($request, JSON_UNESCAPED_SLASHES);
    switch ($_GET['encoding'] ?? '') {
        case 'gzip':
            header('Content-Encoding: gzip');
            $body = gzencode($json);
            break;
        case 'deflate':
            header('Content-Encoding: deflate');
            $body = gzcompress($json); // zlib format: HTTP's "deflate"
            break;
        case 'br':
            // Brotli bytes the test compressed, since PHP cannot.
            header('Content-Encoding: br');
            $body = file_get_contents($fixtures . '/instruction.json.br');
            break;
        default:
            $body = $json;
    }
    header('Content-Length: ' . strlen($body));
    echo $body;
}

/// Deterministic bytes for the streamed routes: 64 KiB blocks, each led by its number.
function block(int $n): string
{
    return str_pad(sprintf("block %08d\n", $n), 65536, '.');
}

switch (true) {
    case $path === '/':
        header('X-App: velox-app');
        header('Content-Type: text/html; charset=utf-8');
        echo "<!doctype html><title>velox-app</title><h1>Hello from velox-app</h1>\n";
        break;

    case $path === '/ready':
        echo 'ok';
        break;

    case $path === '/echo':
        $body = file_get_contents('php://input');
        $headers = [];
        foreach (getallheaders() as $name => $value) {
            $headers[strtolower($name)] = $value;
        }
        json_out(200, [
            'method' => $method,
            'path' => $path,
            'query' => $_SERVER['QUERY_STRING'] ?? '',
            'headers' => $headers,
            'body_length' => strlen($body),
            'body_sha256' => hash('sha256', $body),
        ]);
        break;

    case $path === '/stream':
        // `size` bytes in 64 KiB blocks; after `pause_after` blocks it waits (flush, then sleep)
        // until the test creates the file `release`, so the test can see what has arrived.
        // `chunked` frames the body in chunks (by hand: `php -S` has no chunked output of its own).
        $blocks = intdiv((int)($_GET['size'] ?? 4194304), 65536);
        $pauseAfter = (int)($_GET['pause_after'] ?? intdiv($blocks, 2));
        $release = $fixtures . '/' . basename($_GET['release'] ?? 'release');
        $chunked = isset($_GET['chunked']);
        header('Content-Type: application/octet-stream');
        header($chunked ? 'Transfer-Encoding: chunked' : 'Content-Length: ' . ($blocks * 65536));
        for ($i = 0; $i < $blocks; $i++) {
            if ($i === $pauseAfter) {
                flush();
                $deadline = microtime(true) + 60;
                while (!file_exists($release) && microtime(true) < $deadline) {
                    usleep(10000);
                }
            }
            echo $chunked ? "10000\r\n" . block($i) . "\r\n" : block($i);
        }
        if ($chunked) {
            echo "0\r\n\r\n";
        }
        break;

    case $path === '/big':
        // `mib` MiB as fast as PHP can send them; with `close`, ended by the close, unannounced.
        $mib = (int)($_GET['mib'] ?? 200);
        header('Content-Type: application/octet-stream');
        if (!isset($_GET['close'])) {
            header('Content-Length: ' . ($mib * 1048576));
        }
        $chunk = str_repeat(block(0), 16);
        for ($i = 0; $i < $mib; $i++) {
            echo $chunk;
            flush();
        }
        break;

    case $path === '/cookies':
        header('Set-Cookie: session=abc123; Path=/; HttpOnly', false);
        header('Set-Cookie: theme=dark; Path=/; Max-Age=3600', false);
        echo 'two cookies';
        break;

    case $path === '/redirect':
        header('Location: /', true, 302);
        echo 'moved';
        break;

    case $path === '/forbidden-build':
        // An error that happens to carry X-Velox-Build: not an instruction, passed through.
        header('X-Velox-Build: true');
        json_out(403, ['error' => 'forbidden', 'message' => 'no binaries for you']);
        break;

    case $path === '/gzip-page':
        header('Content-Type: text/plain');
        header('Content-Encoding: gzip');
        $body = gzencode(str_repeat("compressible text\n", 1000));
        header('Content-Length: ' . strlen($body));
        echo $body;
        break;

    case $path === '/close-delimited':
        // What `php -S` does unless told otherwise: no length, the body ends at the close.
        echo 'this body ends when the connection does';
        break;

    case $path === '/slow':
        usleep((int)($_GET['ms'] ?? 3000) * 1000);
        echo 'finally';
        break;

    case $path === '/bad-instruction':
        header('X-Velox-Build: true');
        switch ($_GET['kind'] ?? '') {
            case 'notjson':
                echo '<html>this is not JSON</html>';
                break;
            case 'badgzip':
                header('Content-Encoding: gzip');
                echo '{"plain": "text, not gzip"}';
                break;
            case 'bomb':
                // 10 KiB on the wire, 10 MiB decoded.
                header('Content-Encoding: gzip');
                echo gzencode(str_repeat(' ', 10 * 1048576));
                break;
            case 'toolarge':
                echo '{"pad": "' . str_repeat('x', 2 * 1048576) . '"}';
                break;
            case 'invalid':
                // Valid JSON that breaks docs/build-requests.md's rules.
                json_out(200, [
                    'request_id' => '3f1c2d4e-5b6a-4c7d-8e9f-0a1b2c3d4e5f',
                    'rr_version' => 'not a version',
                    'plugins' => [],
                ]);
                break;
        }
        break;

    case $path === '/api/v1/binary/generate' && $method === 'POST':
        $in = json_decode(file_get_contents('php://input'), true);
        if (!is_array($in) || empty($in['plugins']) || !is_array($in['plugins'])) {
            json_out(422, ['error' => 'validation_failed', 'message' => 'plugins are required']);
            break;
        }
        instruction([
            'request_id' => uuid4(),
            'force_rebuild' => (bool)($in['force_rebuild'] ?? false),
            'target_platform' => ['os' => $in['target_os'] ?? 'linux', 'arch' => $in['target_arch'] ?? 'amd64'],
            'rr_version' => $in['rr_version'] ?? 'v2025.1.2',
            // velox-app passes each plugin on as given, `replace` included.
            'plugins' => $in['plugins'],
        ], $fixtures);
        break;

    case $path === '/async/generate':
        // velox-app's generate endpoint as a browser app on another origin calls it: CORS for
        // the app's own origin (the page `/async/page` runs there), or for any with `?cors=any`.
        $origin = $_SERVER['HTTP_ORIGIN'] ?? '';
        $own = 'http://127.0.0.1:' . $_SERVER['SERVER_PORT'];
        if (($_GET['cors'] ?? '') === 'any') {
            header('Access-Control-Allow-Origin: *');
        } elseif ($origin === $own) {
            header('Access-Control-Allow-Origin: ' . $origin);
            header('Vary: Origin');
        }
        if ($method === 'OPTIONS') {
            header('Access-Control-Allow-Methods: POST');
            header('Access-Control-Allow-Headers: Content-Type, Prefer');
            header('Access-Control-Max-Age: 600');
            http_response_code(204);
            break;
        }
        $in = json_decode(file_get_contents('php://input'), true);
        if ($method !== 'POST' || !is_array($in) || empty($in['plugins'])) {
            json_out(422, ['error' => 'validation_failed', 'message' => 'POST the plugins']);
            break;
        }
        instruction([
            'request_id' => uuid4(),
            'target_platform' => ['os' => $in['target_os'] ?? 'linux', 'arch' => $in['target_arch'] ?? 'amd64'],
            'rr_version' => $in['rr_version'] ?? 'v2025.1.2',
            'plugins' => $in['plugins'],
        ], $fixtures);
        break;

    case $path === '/async/page':
        // A page of the app's own origin that runs the whole asynchronous flow against
        // velox-cache on another origin (`?velox=<its base URL>`) with fetch and EventSource, and
        // writes what it saw into #result for the test to read from the DOM.
        header('Content-Type: text/html; charset=utf-8');
        echo <<<'HTML'
<!doctype html>
<title>velox-app: asynchronous build</title>
<pre id="result">pending</pre>
<script>
(async () => {
  const out = {};
  const velox = new URLSearchParams(location.search).get('velox');
  const request = {
    rr_version: 'v2025.1.2', target_os: 'linux', target_arch: 'arm64',
    plugins: [{module_name: 'github.com/roadrunner-server/http/v5', tag: 'v5.2.7'}],
  };
  const generate = () => fetch(velox + '/async/generate', {
    method: 'POST',
    headers: {'Content-Type': 'application/json', 'Prefer': 'respond-async'},
    body: JSON.stringify(request),
  });
  try {
    const accepted = await generate();
    out.status = accepted.status;
    out.location = accepted.headers.get('Location');
    out.retry_after = accepted.headers.get('Retry-After');
    out.preference_applied = accepted.headers.get('Preference-Applied');
    out.cache_key = accepted.headers.get('X-Velox-Cache-Key');
    out.accepted = await accepted.json();
    out.events = await new Promise((resolve, reject) => {
      const seen = [];
      const events = new EventSource(velox + out.location);
      events.onmessage = (e) => {
        const status = JSON.parse(e.data);
        seen.push(status);
        if (status.status === 'ready' || status.status === 'failed') {
          events.close();
          resolve(seen);
        }
      };
      events.onerror = () => {
        events.close();
        reject(new Error('EventSource failed after ' + seen.length + ' event(s)'));
      };
    });
    out.polled = await (await fetch(velox + out.location)).json();
    // Cached now: the same request is answered with the binary itself.
    const binary = await generate();
    out.binary_status = binary.status;
    const bytes = await binary.arrayBuffer();
    out.binary_size = bytes.byteLength;
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
    out.binary_sha256 = Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
  } catch (e) {
    out.error = String(e);
  }
  document.getElementById('result').textContent = JSON.stringify(out);
})();
</script>
HTML;
        break;

    case preg_match('#^/download/([a-z0-9]+)/([a-z0-9]+)$#', $path, $m) === 1:
        // A plain download link (GET), as an app might offer for a fixed set of plugins.
        instruction([
            'request_id' => uuid4(),
            'target_platform' => ['os' => $m[1], 'arch' => $m[2]],
            'rr_version' => 'v2025.1.2',
            'plugins' => [
                ['module_name' => 'github.com/roadrunner-server/http/v5', 'tag' => 'v5.2.7'],
                ['module_name' => 'github.com/roadrunner-server/jobs/v5', 'tag' => 'v5.1.0'],
            ],
        ], $fixtures);
        break;

    default:
        json_out(404, ['error' => 'not_found', 'message' => "no route for $path"]);
}
