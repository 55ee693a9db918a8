//! A minimal Server-Sent Events client over a plain socket: one `GET` with
//! `Accept: text/event-stream` and `Connection: close`, then the stream read line by line. Cheap
//! enough to hold a hundred at once, and it shows exactly what came over the wire (comment
//! lines included).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

pub struct EventStream {
    reader: BufReader<TcpStream>,
    pub status: u16,
    headers: Vec<(String, String)>,
    /// Comment lines (`: ...`) seen so far.
    pub comments: usize,
}

impl EventStream {
    /// Opens `url` (`http://host:port/path`) with `headers` added; reads the response head.
    pub fn open(url: &str, headers: &[(&str, &str)]) -> EventStream {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let mut stream = TcpStream::connect(authority).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\nConnection: close\r\n"
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send the request");
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {line:?}"));
        let mut headers = Vec::new();
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header line");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        EventStream {
            reader,
            status,
            headers,
            comments: 0,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_timeout(&self, d: Duration) {
        self.reader
            .get_ref()
            .set_read_timeout(Some(d))
            .expect("read timeout");
    }

    /// The next line of the body, framing removed (chunk sizes and the blank lines around them
    /// are returned as they are: callers skip them). `None` at the end of the stream.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
            Err(e) => panic!("reading the event stream: {e}"),
        }
    }

    /// The next event's `data`, as JSON; `None` once the stream has ended (its last chunk or
    /// the connection's close).
    pub fn next_event(&mut self) -> Option<Value> {
        loop {
            let line = self.line()?;
            if let Some(data) = line.strip_prefix("data: ") {
                return Some(serde_json::from_str(data).expect("event data is JSON"));
            }
            if line.starts_with(':') {
                self.comments += 1;
            } else if line.starts_with("event:") || line.starts_with("id:") {
                panic!("events must be unnamed and without ids: {line:?}");
            } else if line == "0" {
                // The last chunk: the stream is over.
                return None;
            }
        }
    }

    /// The next named event (`event: <name>` then `data: <json>`), as its name and data;
    /// comment lines are counted and skipped. `None` once the stream has ended.
    pub fn next_named(&mut self) -> Option<(String, Value)> {
        let mut name = None;
        loop {
            let line = self.line()?;
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(data).expect("event data is JSON");
                return Some((name.take().expect("a named event"), data));
            } else if line.starts_with(':') {
                self.comments += 1;
            } else if line == "0" {
                return None;
            }
        }
    }

    /// Reads until a comment line arrives (a keep-alive); panics on an event.
    pub fn next_comment(&mut self) {
        let before = self.comments;
        while self.comments == before {
            let line = self.line().expect("the stream ended before a comment");
            if line.starts_with("data:") {
                panic!("an event where a keep-alive comment was due: {line}");
            }
            if line.starts_with(':') {
                self.comments += 1;
            }
        }
    }
}
