<?php
// A page as any PHP app has them: a header, some HTML, no Content-Length.
header('X-App: plain-php');
?>
<!doctype html>
<title>plain PHP</title>
<h1>Hello from plain PHP</h1>
