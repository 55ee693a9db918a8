<?php
// Tells what arrived: method, query, every request header, and the body's length and SHA-256.
$body = file_get_contents('php://input');
$headers = [];
foreach (getallheaders() as $name => $value) {
    $headers[strtolower($name)] = $value;
}
header('Content-Type: application/json');
echo json_encode([
    'method' => $_SERVER['REQUEST_METHOD'],
    'query' => $_SERVER['QUERY_STRING'] ?? '',
    'headers' => $headers,
    'body_length' => strlen($body),
    'body_sha256' => hash('sha256', $body),
]);
