<?php
// A download produced as it goes: `mib` MiB (default 5) in 64 KiB blocks, each led by its
// number, flushed one by one.
header('Content-Type: application/octet-stream');
$blocks = (int)($_GET['mib'] ?? 5) * 16;
for ($i = 0; $i < $blocks; $i++) {
    echo str_pad(sprintf("block %08d\n", $i), 65536, '.');
    flush();
}
