//! Tests of reading Go's build information from hand-made and truncated bytes (real Go
//! binaries are read in tests/sbom.rs).

use super::*;

const SAMPLE: &str = "path\texample.com/app/cmd/app\n\
    mod\texample.com/app\t(devel)\t\n\
    dep\tgithub.com/Foo/Bar\tv1.2.3\th1:abc=\n\
    dep\texample.com/orig\tv1.0.0\n\
    =>\texample.com/fork\tv1.1.0\th1:def=\n\
    dep\texample.com/local\tv0.0.0\n\
    =>\t../local\t\t\n\
    build\t-ldflags=\"-X main.v=1\"\n\
    build\t\"odd key\"=`raw value`\n\
    build\tCGO_ENABLED=0\n\
    build\tempty=\n\
    unknown\tline is skipped\n";

#[test]
fn parses_every_kind_of_line() {
    let info = parse_modinfo(SAMPLE).expect("parses");
    assert_eq!(info.path, "example.com/app/cmd/app");
    assert_eq!(info.main.path, "example.com/app");
    assert_eq!(info.main.version, "(devel)");
    assert_eq!(info.main.sum, None);
    assert_eq!(info.deps.len(), 3);
    assert_eq!(info.deps[0].path, "github.com/Foo/Bar");
    assert_eq!(info.deps[0].sum.as_deref(), Some("h1:abc="));
    let fork = info.deps[1].replace.as_deref().expect("replaced");
    assert_eq!(
        (fork.path.as_str(), fork.version.as_str()),
        ("example.com/fork", "v1.1.0")
    );
    assert_eq!(fork.sum.as_deref(), Some("h1:def="));
    assert_eq!(info.deps[1].sum, None);
    let local = info.deps[2].replace.as_deref().expect("replaced");
    assert_eq!(
        (local.path.as_str(), local.version.as_str(), &local.sum),
        ("../local", "", &None)
    );
    assert_eq!(
        info.settings,
        vec![
            ("-ldflags".to_string(), "-X main.v=1".to_string()),
            ("odd key".to_string(), "raw value".to_string()),
            ("CGO_ENABLED".to_string(), "0".to_string()),
            ("empty".to_string(), String::new()),
        ]
    );
}

#[test]
fn a_last_line_without_newline_is_ignored_as_go_does() {
    let info = parse_modinfo("path\ta\nmod\ta\tv1").expect("parses");
    assert_eq!(info.path, "a");
    assert_eq!(info.main.path, "");
}

#[test]
fn bad_lines_are_errors_naming_the_line() {
    for (text, what) in [
        (
            "path\tx\nmod\tonly-one\n",
            "line 2: expected 2 or 3 columns, got 1",
        ),
        ("dep\ta\tb\tc\td\n", "expected 2 or 3 columns, got 4"),
        ("=>\ta\tb\tc\n", "no module on the line before"),
        (
            "dep\ta\tv1\n=>\ta\tb\n",
            "expected 3 columns for a replacement, got 2",
        ),
        (
            "dep\ta\tv1\n=>\tb\tv2\t\n=>\tc\tv3\t\n",
            "line 3: a replacement with no module",
        ),
        ("build\t\n", "missing '='"),
        ("build\t=v\n", "missing key"),
        ("build\tkey\n", "missing '=' after key"),
        ("build\t\"k\"\n", "missing '=' after quoted key"),
        ("build\t\"k\"x=1\n", "unexpected character after quoted key"),
        ("build\t\"k=1\n", "invalid quoted key"),
        ("build\tk=\"unterminated\n", "invalid quoted value"),
        ("build\tk=\"a\"b\n", "invalid quoted value"),
        ("build\tk=a b\n", "must be quoted"),
        ("build\tk`=1\n", "must be quoted"),
        ("build\tk=\"\\q\"\n", "invalid quoted value"),
    ] {
        let err = parse_modinfo(text).expect_err(text);
        assert!(err.contains(what), "{text:?}: {err}");
    }
}

#[test]
fn go_string_literals_unquote_as_strconv_does() {
    for (lit, value, used) in [
        (r#""plain" tail"#, "plain", 7),
        (r#""tab\there""#, "tab\there", 11),
        (
            r#""\x41\101\u00e9\U0001F600\\\"""#,
            "AA\u{e9}\u{1F600}\\\"",
            30,
        ),
        ("`raw \\n\r`", "raw \\n", 9),
        (r#""\xff""#, "\u{fffd}", 6),
    ] {
        assert_eq!(
            unquote_prefix(lit),
            Some((value.to_string(), used)),
            "{lit}"
        );
    }
    for bad in [
        r#""\400""#,
        r#""\x4""#,
        r#""\ud800""#,
        r#""\'""#,
        "`open",
        "\"a\nb\"",
        "x",
    ] {
        assert_eq!(unquote_prefix(bad), None, "{bad:?}");
    }
}

#[test]
fn uvarints_and_strings_are_bounds_checked() {
    assert_eq!(uvarint(&[0x05]), Some((5, 1)));
    assert_eq!(uvarint(&[0xac, 0x02]), Some((300, 2)));
    assert_eq!(uvarint(&[0x80]), None);
    assert_eq!(uvarint(&[]), None);
    assert_eq!(uvarint(&[0xff; 10]), None);
    assert_eq!(
        decode_string(&[3, b'a', b'b', b'c', b'd']),
        Some((&b"abc"[..], &b"d"[..]))
    );
    assert_eq!(decode_string(&[4, b'a', b'b', b'c']), None);
    assert_eq!(
        decode_string(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        None
    );
}

#[test]
fn the_header_is_found_only_on_a_16_byte_boundary_with_room() {
    let mut data = vec![0u8; 64];
    data[3..3 + MAGIC.len()].copy_from_slice(MAGIC);
    assert_eq!(find_header(&data), None);
    data[32..32 + MAGIC.len()].copy_from_slice(MAGIC);
    assert_eq!(find_header(&data), Some(32));
    assert_eq!(find_header(&data[..63]), None);
}

#[test]
fn sentinels_frame_the_text_or_it_counts_as_empty() {
    // Go's sentinels are not UTF-8.
    let mut framed = vec![0xffu8; 16];
    framed.extend_from_slice(b"path\tx\n");
    framed.extend_from_slice(&[0xf1; 16]);
    assert_eq!(strip_sentinels(&framed), b"path\tx\n");
    assert_eq!(strip_sentinels(b"path\tx\n"), b"");
}

#[test]
fn bytes_in_no_executable_format_have_no_build_information() {
    for bytes in [
        &b""[..],
        b"#!/bin/sh\necho hi\n",
        b"\x7fEL",
        b"MZ",
        b"\x7fELF\x02\x01",
    ] {
        assert_eq!(read(bytes), Ok(None), "{bytes:?}");
    }
}

#[test]
fn garbage_after_an_executable_magic_never_panics() {
    let mut rng = fastrand::Rng::with_seed(23);
    let magics: [&[u8]; 4] = [
        b"\x7fELF\x02\x01\x01",
        b"\x7fELF\x01\x01\x01",
        b"MZ",
        b"\xcf\xfa\xed\xfe",
    ];
    for round in 0..4000 {
        let magic = magics[round % magics.len()];
        let mut bytes = magic.to_vec();
        let len = rng.usize(0..512);
        bytes.extend((0..len).map(|_| rng.u8(..)));
        // Any answer but a panic is right; most are errors.
        let _ = read(&bytes);
    }
    assert!(read(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0").is_err());
}
