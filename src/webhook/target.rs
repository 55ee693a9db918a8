//! The receiver's URL: checked when configured, and its user information turned into Basic
//! authentication (awc ignores a URL's user information).

use base64::Engine;

use crate::redact;

/// Checks that `url` is an absolute `http://` or `https://` URL with a host. The error shows
/// the URL with its credentials masked.
pub(super) fn check_url(url: &str) -> Result<(), String> {
    let shown = redact::url(url);
    let uri: awc::http::Uri = url
        .parse()
        .map_err(|e| format!("`{shown}` is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("`{shown}` is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{shown}` has no host"));
    }
    Ok(())
}

/// `url` without its user information, and that information as an `Authorization: Basic`
/// value: awc would send neither (it ignores a URL's user information).
pub(super) fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return (url.to_owned(), None);
    };
    let rest = &url[start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None);
    };
    let (user, password) = rest[..at].split_once(':').unwrap_or((&rest[..at], ""));
    let credentials = [
        percent_decode(user),
        b":".to_vec(),
        percent_decode(password),
    ]
    .concat();
    let header = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    (
        format!("{}{}", &url[..start], &rest[at + 1..]),
        Some(header),
    )
}

/// `%XX` escapes decoded; anything else, a malformed escape included, kept as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}
