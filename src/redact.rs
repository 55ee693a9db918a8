//! Masking secrets in what velox-cache shows: `velox-cache config`, the log, error messages.
//!
//! URLs from the configuration (Velox, the upstream, GOPROXY, the S3 endpoint) may carry a user
//! name and password (`https://user:pass@host/`); the libraries that call them put the URL in
//! their errors (object_store's and reqwest's do). Everything that shows such a URL or such an
//! error goes through [`url`] or [`text`]: the user information becomes `***:***` (or `***`), the
//! host stays visible.
//!
//! Query parameters that carry a credential by convention (presigned S3 URLs' `X-Amz-Signature`,
//! `X-Amz-Credential`, `X-Amz-Security-Token`; `token=`, `access_token=`, `password=` and the like,
//! see [`SECRET_PARAMS`]) keep their name and lose their value. Other parameters stay readable.
//!
//! Nothing here parses: the masking is textual, so a URL that does not parse is masked the same
//! way. User information is what lies between `://` and the last `@` before the first `/`, `?`
//! or `#`, as RFC 3986 reads it; a password holding a raw `/`, `?` or `#` is not a URL any client
//! here accepts, and must be percent-encoded anyway.
//!
//! This module depends on nothing else in the crate, so that any layer may use it.

/// What replaces a secret.
pub const MASK: &str = "***";

/// Query parameters whose values are secrets, compared without regard to case.
pub const SECRET_PARAMS: &[&str] = &[
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "x-goog-signature",
    "x-goog-credential",
    "signature",
    "sig",
    "token",
    "access_token",
    "auth",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
];

/// Characters that end a URL inside free text: none of them may appear in a URL unescaped.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '<' | '>' | '`' | '\\' | '{' | '}' | '|' | '^')
}

/// `u` (one URL, or what was meant as one) with its user information and secret query values
/// masked.
pub fn url(u: &str) -> String {
    let start = u.find("://").map_or(0, |i| i + 3);
    let mut out = String::with_capacity(u.len());
    out.push_str(&u[..start]);
    mask_from_authority(&u[start..], &mut out);
    out
}

/// `s` with every URL in it masked as [`url`] does: for error messages and log lines that may
/// quote a URL somewhere.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        let end = after.find(ends_url).unwrap_or(after.len());
        // The URL may hold a further `://` (a list, a URL in a query): mask up to it, and let
        // the loop take the next one.
        let end = after[..end].find("://").map_or(end, |j| {
            // Back up over the next URL's scheme, so that it is found again whole.
            after[..j]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
                .map_or(0, |k| k + 1)
        });
        mask_from_authority(&after[..end], &mut out);
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Appends `s`, which starts at a URL's authority, with the user information and the secret
/// query values masked.
fn mask_from_authority(s: &str, out: &mut String) {
    let auth_end = s.find(['/', '?', '#']).unwrap_or(s.len());
    let rest = match s[..auth_end].rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            if s[..at].contains(':') {
                out.push(':');
                out.push_str(MASK);
            }
            &s[at..]
        }
        None => s,
    };
    match rest.find('?') {
        Some(q) => {
            out.push_str(&rest[..=q]);
            let query = &rest[q + 1..];
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            mask_query(query, out);
            out.push_str(fragment);
        }
        None => out.push_str(rest),
    }
}

fn mask_query(query: &str, out: &mut String) {
    for (n, param) in query.split('&').enumerate() {
        if n > 0 {
            out.push('&');
        }
        match param.split_once('=') {
            Some((name, value))
                if !value.is_empty()
                    && SECRET_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name)) =>
            {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(param),
        }
    }
}

/// An error whose message went through [`text`]: for errors from libraries that quote URLs
/// (object_store, reqwest). Its causes are folded into the message, masked too, since a caller
/// that walks the chain would otherwise find the URL there.
#[derive(Debug)]
pub struct Redacted(String);

impl Redacted {
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Redacted {
        let mut msg = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let m = c.to_string();
            if !msg.contains(&m) {
                msg.push_str(": ");
                msg.push_str(&m);
            }
            cause = c.source();
        }
        Redacted(text(&msg))
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_information_and_keep_their_host() {
        for (given, shown) in [
            ("http://velox:9000", "http://velox:9000"),
            (
                "https://user:pass@velox:9000/",
                "https://***:***@velox:9000/",
            ),
            (
                "https://token@proxy.golang.org",
                "https://***@proxy.golang.org",
            ),
            ("http://u:p@ss@host/x", "http://***:***@host/x"),
            ("http://:pass@host", "http://***:***@host"),
            ("http://user:@host", "http://***:***@host"),
            ("http://u%40x:p%2Fq@host/", "http://***:***@host/"),
            ("http://[::1]:9000/a@b", "http://[::1]:9000/a@b"),
            ("http://host/path?x=1#a@b", "http://host/path?x=1#a@b"),
            ("http://u:p@host?q", "http://***:***@host?q"),
            ("http://u:p@host#f", "http://***:***@host#f"),
            // Not URLs anyone accepts, and still masked.
            ("user:pass@host:9000", "***:***@host:9000"),
            ("http://us er:pa ss@host", "http://***:***@host"),
            ("ftp://u:p@", "ftp://***:***@"),
            ("", ""),
            ("http://", "http://"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn secret_query_values_are_masked() {
        for (given, shown) in [
            (
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abc",
                "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***",
            ),
            ("http://h/p?token=s3cret&limit=5", "http://h/p?token=***&limit=5"),
            ("http://h/p?TOKEN=s3cret#frag", "http://h/p?TOKEN=***#frag"),
            ("http://h/p?token=&x", "http://h/p?token=&x"),
            ("http://h/p?tokens=1", "http://h/p?tokens=1"),
        ] {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn urls_in_text_are_masked_wherever_they_are() {
        for (given, shown) in [
            (
                "error sending request for url (http://u:p@velox:9000/x): refused",
                "error sending request for url (http://***:***@velox:9000/x): refused",
            ),
            (
                "Error performing GET http://AKIA:secret@minio:9000/bucket/k in 2ms",
                "Error performing GET http://***:***@minio:9000/bucket/k in 2ms",
            ),
            ("(http://u:p@host)", "(http://***:***@host)"),
            ("\"http://u:p@host\"", "\"http://***:***@host\""),
            (
                "http://u:p@a,https://v:q@b|http://c",
                "http://***:***@a,https://***:***@b|http://c",
            ),
            ("http://a,https://v:q@b", "http://a,https://***:***@b"),
            (
                "no url here, mail me@example.com",
                "no url here, mail me@example.com",
            ),
            ("a@b http://h/ c@d", "a@b http://h/ c@d"),
            ("http://h/x?token=t u@v", "http://h/x?token=*** u@v"),
            ("", ""),
        ] {
            assert_eq!(text(given), shown, "{given}");
        }
    }

    #[test]
    fn a_redacted_error_folds_in_its_masked_causes() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("Generic S3 error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("for url (http://k:s@h/b)"));
        let r = Redacted::of(&e);
        assert_eq!(
            r.to_string(),
            "Generic S3 error: for url (http://***:***@h/b)"
        );
        assert!(std::error::Error::source(&r).is_none());
    }
}
