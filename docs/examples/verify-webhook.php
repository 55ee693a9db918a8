<?php
// Verifies a webhook from velox-cache (docs/webhooks.md): the Standard Webhooks signature and
// the timestamp's age. Returns the event (type, timestamp, data) or throws. PHP 8.0 or later.
//
// In an app: $event = verify_velox_webhook(getenv('WEBHOOK_SECRET'), getallheaders(),
//                                          file_get_contents('php://input'));
// With PSR-7 (RoadRunner): pass ['webhook-id' => $request->getHeaderLine('webhook-id'), ...]
// and (string) $request->getBody().
//
// From a shell: WEBHOOK_SECRET=whsec_... php verify-webhook.php headers.json < body
// (headers.json: {"webhook-id": "...", "webhook-timestamp": "...", "webhook-signature": "..."});
// prints the event type, or the reason and exits 1.

declare(strict_types=1);

function verify_velox_webhook(string $secret, array $headers, string $body, int $tolerance = 300): array
{
    $headers = array_change_key_case($headers, CASE_LOWER);
    $id = (string) ($headers['webhook-id'] ?? '');
    $timestamp = (string) ($headers['webhook-timestamp'] ?? '');
    $signatures = (string) ($headers['webhook-signature'] ?? '');
    if ($id === '' || $timestamp === '' || $signatures === '') {
        throw new RuntimeException('missing webhook-id, webhook-timestamp or webhook-signature');
    }
    // Refuse replays: the timestamp is signed, and a new one is sent on every retry.
    if (!ctype_digit($timestamp) || abs(time() - (int) $timestamp) > $tolerance) {
        throw new RuntimeException('webhook-timestamp is too far from now');
    }
    $encoded = str_starts_with($secret, 'whsec_') ? substr($secret, 6) : $secret;
    $key = base64_decode($encoded, true);
    if ($key === false || $key === '') {
        throw new RuntimeException('the secret is not whsec_ followed by base64');
    }
    // Sign the body exactly as received: not a re-encoding of the decoded JSON.
    $expected = base64_encode(hash_hmac('sha256', "{$id}.{$timestamp}.{$body}", $key, true));
    // Several space-separated signatures may be sent (a key being rotated); one must match.
    foreach (explode(' ', $signatures) as $versioned) {
        $parts = explode(',', $versioned, 2);
        if (count($parts) === 2 && $parts[0] === 'v1' && hash_equals($expected, $parts[1])) {
            return json_decode($body, true, 512, JSON_THROW_ON_ERROR);
        }
    }
    throw new RuntimeException('no valid signature');
}

if (PHP_SAPI === 'cli' && isset($argv[1]) && realpath($argv[0]) === __FILE__) {
    try {
        $headers = json_decode((string) file_get_contents($argv[1]), true, 16, JSON_THROW_ON_ERROR);
        $event = verify_velox_webhook((string) getenv('WEBHOOK_SECRET'), $headers, (string) stream_get_contents(STDIN));
        echo $event['type'], "\n";
    } catch (Throwable $e) {
        fwrite(STDERR, $e->getMessage() . "\n");
        exit(1);
    }
}
