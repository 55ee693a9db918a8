//! The `Prefer` request header (RFC 7240): a list of preferences, each a case-insensitive token
//! with an optional value and parameters, over one or more header lines.
//!
//! Hand-written because the grammar is small and `split(',')` is wrong for it: a quoted value may
//! hold commas and semicolons. A malformed element is skipped, not the whole header.

use actix_web::http::header::HeaderMap;

/// One preference: `name[=value] *(; param[=value])`, its name and parameter names lowercased,
/// quoted values unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preference {
    pub name: String,
    pub value: Option<String>,
    pub params: Vec<(String, Option<String>)>,
}

/// Every preference in the request's `Prefer` headers, in order. RFC 7240 §2: when a preference
/// is given more than once, only the first counts, so later repeats are dropped here.
pub fn preferences(headers: &HeaderMap) -> Vec<Preference> {
    let mut out: Vec<Preference> = Vec::new();
    for line in headers.get_all("prefer") {
        let Ok(line) = line.to_str() else { continue };
        for p in parse(line) {
            if !out.iter().any(|q| q.name == p.name) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether the client asked for `respond-async`.
pub fn respond_async(headers: &HeaderMap) -> bool {
    preferences(headers)
        .iter()
        .any(|p| p.name == "respond-async")
}

/// RFC 9110's `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> Option<String> {
        self.i += 1; // the opening quote
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(String::from_utf8_lossy(&out).into_owned());
                }
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                    self.i += 1;
                }
                b => {
                    out.push(b);
                    self.i += 1;
                }
            }
        }
    }

    /// `word = token / quoted-string`.
    fn word(&mut self) -> Option<String> {
        if self.peek() == Some(b'"') {
            self.quoted()
        } else {
            self.token()
        }
    }

    /// `[ BWS "=" BWS word ]`: `Ok(None)` when there is no `=`, `Err` when a value is broken.
    fn value(&mut self) -> Result<Option<String>, ()> {
        let save = self.i;
        self.skip_ws();
        if self.peek() != Some(b'=') {
            self.i = save;
            return Ok(None);
        }
        self.i += 1;
        self.skip_ws();
        self.word().map(Some).ok_or(())
    }

    /// Moves past the next comma outside a quoted string (or to the end).
    fn skip_element(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b',' => {
                    self.i += 1;
                    return;
                }
                b'"' => {
                    let _ = self.quoted();
                }
                _ => self.i += 1,
            }
        }
    }

    fn preference(&mut self) -> Result<Preference, ()> {
        let name = self.token().ok_or(())?.to_ascii_lowercase();
        let value = self.value()?;
        let mut params = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                None | Some(b',') => break,
                Some(b';') => {
                    self.i += 1;
                    self.skip_ws();
                    // `*( OWS ";" [ OWS parameter ] )`: an empty parameter is allowed.
                    if let Some(p) = self.token() {
                        params.push((p.to_ascii_lowercase(), self.value()?));
                    }
                }
                Some(_) => return Err(()),
            }
        }
        Ok(Preference {
            name,
            value,
            params,
        })
    }
}

/// The preferences of one `Prefer` line (`1#preference`); empty and malformed elements skipped.
pub fn parse(line: &str) -> Vec<Preference> {
    let mut c = Cursor {
        s: line.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        while matches!(c.peek(), Some(b' ' | b'\t' | b',')) {
            c.i += 1;
        }
        if c.peek().is_none() {
            return out;
        }
        if let Ok(p) = c.preference() {
            out.push(p);
        }
        c.skip_element();
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn names(line: &str) -> Vec<String> {
        parse(line).into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn a_single_token_in_any_case() {
        for line in [
            "respond-async",
            "Respond-Async",
            " RESPOND-ASYNC ",
            "respond-async;",
        ] {
            assert_eq!(names(line), ["respond-async"], "{line:?}");
        }
    }

    #[test]
    fn several_preferences_with_values_and_parameters() {
        let got = parse(
            r#"return=minimal; foo="a,b;c", respond-async , wait=10;x;y=1, handling = lenient"#,
        );
        assert_eq!(
            got,
            [
                Preference {
                    name: "return".into(),
                    value: Some("minimal".into()),
                    params: vec![("foo".into(), Some("a,b;c".into()))],
                },
                Preference {
                    name: "respond-async".into(),
                    value: None,
                    params: vec![],
                },
                Preference {
                    name: "wait".into(),
                    value: Some("10".into()),
                    params: vec![("x".into(), None), ("y".into(), Some("1".into()))],
                },
                Preference {
                    name: "handling".into(),
                    value: Some("lenient".into()),
                    params: vec![],
                },
            ]
        );
    }

    #[test]
    fn a_quoted_comma_does_not_start_a_preference() {
        // Naive splitting on commas would find `respond-async` inside the quotes.
        assert_eq!(names(r#"x="1, respond-async""#), ["x"]);
        assert_eq!(names(r#"x="say \"hi\", respond-async""#), ["x"]);
        let p = &parse(r#"x="say \"hi\"""#)[0];
        assert_eq!(p.value.as_deref(), Some(r#"say "hi""#));
    }

    #[test]
    fn malformed_elements_are_skipped_not_the_line() {
        assert_eq!(names("=x, respond-async"), ["respond-async"]);
        assert_eq!(names("a b, respond-async"), ["respond-async"]);
        // An unterminated quote runs to the end of the line: nothing after it is a preference.
        assert!(names(r#"x="unterminated, respond-async"#).is_empty());
        assert_eq!(names("wait=, respond-async"), ["respond-async"]);
        assert_eq!(names(",,, ,respond-async,,"), ["respond-async"]);
        assert!(names("").is_empty());
        assert!(names("respond-asyncx").iter().all(|n| n != "respond-async"));
    }

    #[test]
    fn every_header_line_counts_and_the_first_repeat_wins() {
        let mut h = HeaderMap::new();
        let prefer = HeaderName::from_static("prefer");
        h.append(prefer.clone(), HeaderValue::from_static("wait=5"));
        h.append(
            prefer.clone(),
            HeaderValue::from_static("Respond-Async, wait=100"),
        );
        assert!(respond_async(&h));
        let waits: Vec<_> = preferences(&h)
            .into_iter()
            .filter(|p| p.name == "wait")
            .collect();
        assert_eq!(waits.len(), 1);
        assert_eq!(waits[0].value.as_deref(), Some("5"));
        assert!(!respond_async(&HeaderMap::new()));
        let mut h = HeaderMap::new();
        h.insert(prefer, HeaderValue::from_static("return=minimal"));
        assert!(!respond_async(&h));
    }
}
