//! Go's build information, read from the bytes of an executable (ELF, Mach-O or PE).
//!
//! Go's linker (since Go 1.18) writes a 32-byte header — the magic `\xff Go buildinf:`, the
//! pointer size, a flags byte with bit `0x2` set — then two uvarint-prefixed strings: the Go
//! version and the module information. It lives in the `.go.buildinfo` section (ELF),
//! `__go_buildinfo` (Mach-O), or near the start of the first writable data section or segment
//! (PE, and stripped ELF or Mach-O files). The module information is text framed by two 16-byte
//! sentinels, one line per fact (`path`, `mod`, `dep`, `=>`, `build`), tab-separated; this module
//! reads it the way `runtime/debug.ParseBuildInfo` does.
//!
//! Every read is bounds-checked: truncated or hostile bytes give an error or `Ok(None)`, never a
//! panic. Older binaries (before Go 1.18) store pointers instead of the strings: they are refused
//! with an error saying so.

use object::read::{Object, ObjectSection, ObjectSegment};
use object::SegmentFlags;

/// A module as Go records it: `Module.Sum` is empty for the main module and for a module whose
/// `Replace` carries the sum of what was used instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub version: String,
    /// The `h1:` checksum from go.sum; `None` when Go recorded none.
    pub sum: Option<String>,
    /// What `replace` put in this module's place.
    pub replace: Option<Box<Module>>,
}

/// What `go version -m` prints for a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The toolchain, e.g. `go1.22.1`.
    pub go_version: String,
    /// The main package's import path; empty for a binary built outside module mode.
    pub path: String,
    /// The main module; its fields are empty outside module mode.
    pub main: Module,
    /// Every module that contributed packages, in the order Go wrote them.
    pub deps: Vec<Module>,
    /// Build settings (`-ldflags`, `GOOS`, `vcs.revision`, …) in the order Go wrote them.
    pub settings: Vec<(String, String)>,
}

const MAGIC: &[u8] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
const ALIGN: usize = 16;
/// Go searches the first 64 KiB of the data section for the header.
const SEARCH_LEN: usize = 64 * 1024;
/// The header's flags bit meaning "strings inline after the header" (Go 1.18 and later).
const FLAG_INLINE_STRINGS: u8 = 0x2;

/// Reads the build information Go embedded in an executable.
///
/// `Ok(None)`: not an executable with Go build information (a shell script, a C binary, any
/// bytes in no format this reads). `Err`: bytes that claim to be an executable or to carry Go
/// build information but cannot be read as such (truncated, malformed, or from a Go release
/// before 1.18).
pub fn read(bytes: &[u8]) -> Result<Option<BuildInfo>, String> {
    let Some((version, modinfo)) = read_raw(bytes)? else {
        return Ok(None);
    };
    let mut info = parse_modinfo(&modinfo)?;
    info.go_version = version;
    Ok(Some(info))
}

/// The two strings (Go version, module information without its sentinels).
fn read_raw(bytes: &[u8]) -> Result<Option<(String, String)>, String> {
    // Like Go, fewer than 16 bytes are no executable at all.
    if bytes.len() < 16 {
        return Ok(None);
    }
    let format = match bytes {
        [0x7f, b'E', b'L', b'F', ..] => "ELF",
        [b'M', b'Z', ..] => "PE",
        [0xfe, 0xed, 0xfa, 0xce | 0xcf, ..] | [0xce | 0xcf, 0xfa, 0xed, 0xfe, ..] => "Mach-O",
        _ => return Ok(None),
    };
    let file = object::File::parse(bytes)
        .map_err(|e| format!("not a readable {format} executable: {e}"))?;
    let Some(start) = data_start(&file) else {
        return Ok(None);
    };
    let Some(data) = read_at(&file, start)? else {
        return Ok(None);
    };
    let Some(offset) = find_header(&data[..data.len().min(SEARCH_LEN)]) else {
        return Ok(None);
    };
    let blob = &data[offset..];
    // `find_header` guarantees HEADER_LEN bytes.
    let flags = blob[15];
    if flags & FLAG_INLINE_STRINGS == 0 {
        return Err(
            "the Go build information is in the format of Go releases before 1.18, which this \
             does not read; rebuild with Go 1.18 or later"
                .to_string(),
        );
    }
    let rest = &blob[HEADER_LEN..];
    let (version, rest) =
        decode_string(rest).ok_or("the Go build information is truncated (Go version)")?;
    let (modinfo, _) =
        decode_string(rest).ok_or("the Go build information is truncated (module information)")?;
    if version.is_empty() {
        return Err("the Go build information names no Go version".to_string());
    }
    let version = std::str::from_utf8(version)
        .map_err(|_| "the Go version in the build information is not UTF-8")?;
    // The sentinels are binary: strip them before reading the text.
    let modinfo = std::str::from_utf8(strip_sentinels(modinfo))
        .map_err(|_| "the module information in the Go build information is not UTF-8")?;
    Ok(Some((version.to_string(), modinfo.to_string())))
}

/// The address where Go's linker put the build information: its own section when there is one,
/// else the start of the first writable data segment (section, for PE).
fn data_start(file: &object::File<'_>) -> Option<u64> {
    for section in file.sections() {
        if matches!(section.name(), Ok(".go.buildinfo" | "__go_buildinfo")) {
            return Some(section.address());
        }
    }
    file.segments().find_map(|segment| {
        let writable_data = match segment.flags() {
            SegmentFlags::Elf { p_type, p_flags } => {
                const PF_X: u32 = 1;
                const PF_W: u32 = 2;
                p_type == object::elf::PT_LOAD && p_flags.0 & (PF_X | PF_W) == PF_W
            }
            SegmentFlags::MachO {
                maxprot, initprot, ..
            } => {
                const RW: u32 = 3;
                segment.address() != 0
                    && segment.file_range().1 != 0
                    && initprot.0 == RW
                    && maxprot.0 == RW
            }
            SegmentFlags::Coff { characteristics } => {
                const INITIALIZED_DATA: u32 = 0x40;
                const READ: u32 = 0x4000_0000;
                const WRITE: u32 = 0x8000_0000;
                const ALIGN_32: u32 = 0x0060_0000;
                segment.size() != 0
                    && characteristics.0 & !ALIGN_32 == INITIALIZED_DATA | READ | WRITE
            }
            _ => false,
        };
        writable_data.then(|| segment.address())
    })
}

/// The file bytes of the segment holding `address`, from `address` to the segment's end.
fn read_at<'data>(file: &object::File<'data>, address: u64) -> Result<Option<&'data [u8]>, String> {
    for segment in file.segments() {
        if matches!(segment.name(), Ok(Some("__PAGEZERO"))) {
            continue;
        }
        let Some(offset) = address.checked_sub(segment.address()) else {
            continue;
        };
        let data = segment
            .data()
            .map_err(|e| format!("a segment of the executable is truncated: {e}"))?;
        let Ok(offset) = usize::try_from(offset) else {
            continue;
        };
        if let Some(rest) = data.get(offset..).filter(|rest| !rest.is_empty()) {
            return Ok(Some(rest));
        }
    }
    Ok(None)
}

/// The offset of the first 16-byte-aligned header with at least `HEADER_LEN` bytes after it.
fn find_header(data: &[u8]) -> Option<usize> {
    (0..data.len()).step_by(ALIGN).find(|&i| {
        data.get(i..)
            .is_some_and(|rest| rest.len() >= HEADER_LEN && rest.starts_with(MAGIC))
    })
}

/// A uvarint length, then that many bytes.
fn decode_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, used) = uvarint(data)?;
    let rest = data.get(used..)?;
    let len = usize::try_from(len).ok()?;
    if len > rest.len() {
        return None;
    }
    Some(rest.split_at(len))
}

/// Go's `encoding/binary.Uvarint`: little-endian groups of 7 bits, at most 10 bytes.
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in data.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Go frames the module text with two 16-byte sentinels; text without them counts as empty
/// (as `debug/buildinfo` does), which is what a binary built outside module mode carries.
fn strip_sentinels(modinfo: &[u8]) -> &[u8] {
    if modinfo.len() >= 33 && modinfo[modinfo.len() - 17] == b'\n' {
        &modinfo[16..modinfo.len() - 16]
    } else {
        &[]
    }
}

/// `runtime/debug.ParseBuildInfo`: unknown lines are skipped, a last line without a newline is
/// ignored, and an error names the line.
fn parse_modinfo(text: &str) -> Result<BuildInfo, String> {
    let mut info = BuildInfo {
        go_version: String::new(),
        path: String::new(),
        main: empty_module(),
        deps: Vec::new(),
        settings: Vec::new(),
    };
    // Which module a `=>` line replaces: the main module, or the last dep.
    enum Last {
        None,
        Main,
        Dep,
    }
    let mut last = Last::None;
    let mut rest = text;
    let mut line_number = 0;
    while let Some((line, after)) = rest.split_once('\n') {
        rest = after;
        line_number += 1;
        let fail = |what: String| format!("Go build information, line {line_number}: {what}");
        if let Some(path) = line.strip_prefix("path\t") {
            info.path = path.to_string();
        } else if let Some(fields) = line.strip_prefix("mod\t") {
            info.main = module_line(fields).map_err(fail)?;
            last = Last::Main;
        } else if let Some(fields) = line.strip_prefix("dep\t") {
            info.deps.push(module_line(fields).map_err(fail)?);
            last = Last::Dep;
        } else if let Some(fields) = line.strip_prefix("=>\t") {
            let elem: Vec<&str> = fields.split('\t').collect();
            let [path, version, sum] = elem[..] else {
                return Err(fail(format!(
                    "expected 3 columns for a replacement, got {}",
                    elem.len()
                )));
            };
            let target = match last {
                Last::None => None,
                Last::Main => Some(&mut info.main),
                Last::Dep => info.deps.last_mut(),
            };
            let Some(target) = target else {
                return Err(fail(
                    "a replacement with no module on the line before".to_string(),
                ));
            };
            target.replace = Some(Box::new(Module {
                path: path.to_string(),
                version: version.to_string(),
                sum: non_empty(sum),
                replace: None,
            }));
            last = Last::None;
        } else if let Some(setting) = line.strip_prefix("build\t") {
            info.settings.push(build_line(setting).map_err(fail)?);
        }
    }
    Ok(info)
}

fn empty_module() -> Module {
    Module {
        path: String::new(),
        version: String::new(),
        sum: None,
        replace: None,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn module_line(fields: &str) -> Result<Module, String> {
    let elem: Vec<&str> = fields.split('\t').collect();
    let (path, version, sum) = match elem[..] {
        [path, version] => (path, version, ""),
        [path, version, sum] => (path, version, sum),
        _ => return Err(format!("expected 2 or 3 columns, got {}", elem.len())),
    };
    Ok(Module {
        path: path.to_string(),
        version: version.to_string(),
        sum: non_empty(sum),
        replace: None,
    })
}

/// `key=value`; either may be a Go quoted string (a key must be when it holds `= \t\r\n"` or a
/// backquote, a value when it holds a space, tab, CR, LF, `"` or a backquote).
fn build_line(kv: &str) -> Result<(String, String), String> {
    let (key, raw_value) = match kv.as_bytes().first() {
        None => return Err("build line missing '='".to_string()),
        Some(b'=') => return Err("build line with missing key".to_string()),
        Some(b'"' | b'`') => {
            let (key, used) = unquote_prefix(kv).ok_or("invalid quoted key in build line")?;
            match kv.as_bytes().get(used) {
                None => return Err("build line missing '=' after quoted key".to_string()),
                Some(b'=') => {}
                Some(&c) => {
                    return Err(format!(
                        "unexpected character after quoted key: {:?}",
                        char::from(c)
                    ))
                }
            }
            (key, &kv[used + 1..])
        }
        Some(_) => {
            let (key, value) = kv
                .split_once('=')
                .ok_or("build line missing '=' after key")?;
            if key.contains(['=', ' ', '\t', '\r', '\n', '"', '`']) {
                return Err(format!("unquoted key {key:?} must be quoted"));
            }
            (key.to_string(), value)
        }
    };
    let value = match raw_value.as_bytes().first() {
        Some(b'"' | b'`') => match unquote_prefix(raw_value) {
            Some((value, used)) if used == raw_value.len() => value,
            _ => return Err("invalid quoted value in build line".to_string()),
        },
        _ => {
            if raw_value.contains([' ', '\t', '\r', '\n', '"', '`']) {
                return Err(format!("unquoted value {raw_value:?} must be quoted"));
            }
            raw_value.to_string()
        }
    };
    Ok((key, value))
}

/// The Go string literal (`"…"` with escapes, or `` `…` `` raw) at the start of `s`: its value
/// and how many bytes of `s` it took. `\x` and octal escapes may spell bytes that are not UTF-8;
/// those become U+FFFD.
fn unquote_prefix(s: &str) -> Option<(String, usize)> {
    let bytes = s.as_bytes();
    match bytes.first()? {
        b'`' => {
            let end = s[1..].find('`')? + 1;
            let value: String = s[1..end].chars().filter(|&c| c != '\r').collect();
            Some((value, end + 1))
        }
        b'"' => {
            let mut out: Vec<u8> = Vec::new();
            let mut i = 1;
            loop {
                let &b = bytes.get(i)?;
                match b {
                    b'"' => return Some((String::from_utf8_lossy(&out).into_owned(), i + 1)),
                    b'\n' => return None,
                    b'\\' => {
                        let &e = bytes.get(i + 1)?;
                        i += 2;
                        let simple = match e {
                            b'a' => Some(0x07),
                            b'b' => Some(0x08),
                            b'f' => Some(0x0c),
                            b'n' => Some(b'\n'),
                            b'r' => Some(b'\r'),
                            b't' => Some(b'\t'),
                            b'v' => Some(0x0b),
                            b'\\' => Some(b'\\'),
                            b'"' => Some(b'"'),
                            _ => None,
                        };
                        if let Some(c) = simple {
                            out.push(c);
                            continue;
                        }
                        match e {
                            b'x' => {
                                let v = hex_digits(bytes.get(i..i + 2)?)?;
                                out.push(u8::try_from(v).ok()?);
                                i += 2;
                            }
                            b'0'..=b'7' => {
                                let digits = bytes.get(i - 1..i + 2)?;
                                let mut v: u32 = 0;
                                for &d in digits {
                                    if !(b'0'..=b'7').contains(&d) {
                                        return None;
                                    }
                                    v = v * 8 + u32::from(d - b'0');
                                }
                                out.push(u8::try_from(v).ok()?);
                                i += 2;
                            }
                            b'u' | b'U' => {
                                let n = if e == b'u' { 4 } else { 8 };
                                let v = hex_digits(bytes.get(i..i + n)?)?;
                                let c = char::from_u32(v)?;
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                                i += n;
                            }
                            _ => return None,
                        }
                    }
                    _ => {
                        out.push(b);
                        i += 1;
                    }
                }
            }
        }
        _ => None,
    }
}

fn hex_digits(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |v, &d| {
        let d = char::from(d).to_digit(16)?;
        Some(v * 16 + d)
    })
}

#[cfg(test)]
mod tests;
