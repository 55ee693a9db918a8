//! The SBOM of a Go binary (SPEC §18), checked against the Go toolchain itself: a module with
//! dependencies (one served by a file-system GOPROXY under an upper-case path, one replaced by
//! another module, one replaced by a local directory) built for linux/amd64 (ELF), darwin/arm64
//! (Mach-O) and windows/amd64 (PE) with Debian's `golang-go`; what `trust::buildinfo::read` and
//! `trust::sbom::cyclonedx` say is compared entry by entry with `go version -m`, and the SBOM is
//! validated against the CycloneDX 1.5 JSON schema by cyclonedx-python-lib.

#[path = "support/gobuild.rs"]
mod gobuild;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;
use sha2::{Digest, Sha256};
use velox_cache::trust::buildinfo::{self, BuildInfo, Module};
use velox_cache::trust::sbom;

use gobuild::GoWorkspace;

struct Built {
    _workspace: GoWorkspace,
    linux: PathBuf,
    darwin: PathBuf,
    windows: PathBuf,
}

const APP_GO_MOD: &str = "module example.com/app\n\ngo 1.18\n\n\
require (\n\texample.com/Upper/Lib v1.2.0\n\texample.com/orig v1.0.0\n\texample.com/local v0.0.0\n)\n\n\
replace example.com/orig => example.com/fork v1.1.0\n\n\
replace example.com/local => ../local\n";

const APP_MAIN: &str = "package main\n\nimport (\n\t\"fmt\"\n\n\tlib \"example.com/Upper/Lib\"\n\
\t\"example.com/local\"\n\t\"example.com/orig\"\n)\n\nvar v = \"0\"\n\n\
func main() { fmt.Println(lib.Hello(), orig.Name(), local.N(), v) }\n";

/// Builds the three binaries once for the whole file.
fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let ws = GoWorkspace::at(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sbom-go"));
        ws.publish(
            "example.com/Upper/Lib",
            "v1.2.0",
            &[
                ("go.mod", "module example.com/Upper/Lib\n\ngo 1.18\n"),
                (
                    "lib.go",
                    "package lib\n\nfunc Hello() string { return \"hi\" }\n",
                ),
            ],
        );
        ws.publish(
            "example.com/fork",
            "v1.1.0",
            &[
                ("go.mod", "module example.com/orig\n\ngo 1.18\n"),
                (
                    "orig.go",
                    "package orig\n\nfunc Name() string { return \"fork\" }\n",
                ),
            ],
        );
        ws.write("src/local/go.mod", b"module example.com/local\n\ngo 1.18\n");
        ws.write(
            "src/local/local.go",
            b"package local\n\nfunc N() int { return 7 }\n",
        );
        ws.write("src/app/go.mod", APP_GO_MOD.as_bytes());
        ws.write("src/app/main.go", APP_MAIN.as_bytes());
        ws.go("src/app", &["mod", "tidy"], &[]);
        let out = |name: &str| ws.path(name);
        let (linux, darwin, windows) = (out("app-linux"), out("app-darwin"), out("app.exe"));
        // Go records -ldflags only without -trimpath, so the Linux build keeps full paths to have
        // a quoted setting; the other two are built with -trimpath and a quoted -gcflags.
        let linux_out = linux.to_string_lossy().into_owned();
        ws.go(
            "src/app",
            &[
                "build",
                "-tags=velox,sbom",
                "-ldflags=-X main.v=1",
                "-o",
                &linux_out,
                ".",
            ],
            &[("GOOS", "linux"), ("GOARCH", "amd64")],
        );
        let darwin_out = darwin.to_string_lossy().into_owned();
        ws.go(
            "src/app",
            &[
                "build",
                "-trimpath",
                "-gcflags=-N -l",
                "-ldflags=-X main.v=1",
                "-o",
                &darwin_out,
                ".",
            ],
            &[("GOOS", "darwin"), ("GOARCH", "arm64")],
        );
        let windows_out = windows.to_string_lossy().into_owned();
        ws.go(
            "src/app",
            &[
                "build",
                "-trimpath",
                "-ldflags=-X main.v=1",
                "-o",
                &windows_out,
                ".",
            ],
            &[("GOOS", "windows"), ("GOARCH", "amd64")],
        );
        Built {
            _workspace: ws,
            linux,
            darwin,
            windows,
        }
    })
}

/// `go version -m <binary>`, read back into the crate's types (build values as Go quoted them,
/// unquoted as JSON strings, which Go's quoting of these ASCII values is).
fn go_version_m(binary: &Path) -> BuildInfo {
    let out = Command::new("go")
        .arg("version")
        .arg("-m")
        .arg(binary)
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go version -m");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    let first = lines.next().expect("a first line");
    let (_, go_version) = first.rsplit_once(": ").expect("<file>: <go version>");
    let empty = || Module {
        path: String::new(),
        version: String::new(),
        sum: None,
        replace: None,
    };
    let mut info = BuildInfo {
        go_version: go_version.to_string(),
        path: String::new(),
        main: empty(),
        deps: Vec::new(),
        settings: Vec::new(),
    };
    let module = |cols: &[&str]| Module {
        path: cols[1].to_string(),
        version: cols[2].to_string(),
        sum: cols.get(3).filter(|s| !s.is_empty()).map(|s| s.to_string()),
        replace: None,
    };
    let mut last_is_main = false;
    for line in lines {
        let line = line.strip_prefix('\t').expect("a tab-indented line");
        let cols: Vec<&str> = line.split('\t').collect();
        match cols[0] {
            "" => {}
            "path" => info.path = cols[1].to_string(),
            "mod" => {
                info.main = module(&cols);
                last_is_main = true;
            }
            "dep" => {
                info.deps.push(module(&cols));
                last_is_main = false;
            }
            "=>" => {
                let target = if last_is_main {
                    &mut info.main
                } else {
                    info.deps.last_mut().expect("a dep before =>")
                };
                target.replace = Some(Box::new(module(&cols)));
            }
            "build" => {
                let (key, value) = cols[1].split_once('=').expect("key=value");
                let value = if value.starts_with('"') {
                    serde_json::from_str::<String>(value).expect("a quoted value")
                } else {
                    value.to_string()
                };
                info.settings.push((key.to_string(), value));
            }
            other => panic!("go version -m printed an unknown line kind {other:?}"),
        }
    }
    info
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn properties(component: &Value) -> Vec<(String, String)> {
    component["properties"]
        .as_array()
        .map(|props| {
            props
                .iter()
                .map(|p| {
                    let s = |k: &str| p[k].as_str().expect("string").to_string();
                    (s("name"), s("value"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Validates `bom` with cyclonedx-python-lib's strict JSON validator for CycloneDX 1.5; `Err`
/// holds what it said.
fn validate(bom: &Value) -> Result<(), String> {
    let script = "import sys\n\
                  from cyclonedx.schema import SchemaVersion\n\
                  from cyclonedx.validation.json import JsonStrictValidator\n\
                  error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(sys.stdin.read())\n\
                  if error is not None:\n    print(error)\n    sys.exit(1)\n";
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bom.to_string().as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !said.contains("ModuleNotFoundError"),
        "cyclonedx-python-lib is missing (scripts/test installs it): {said}"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(said)
    }
}

/// What a purl of these test modules must be: the module path lower-cased, `@version` unless
/// the version is `(devel)`.
fn expected_purl(path: &str, version: &str) -> String {
    let base = format!("pkg:golang/{}", path.to_lowercase());
    if version == "(devel)" {
        base
    } else {
        format!("{base}@{version}")
    }
}

fn check(binary: &Path, goos: &str) {
    let bytes = std::fs::read(binary).expect("read binary");
    let go = go_version_m(binary);
    // The fixture is what the test means it to be.
    assert_eq!(go.deps.len(), 3, "{go:?}");
    assert!(
        go.settings
            .contains(&("GOOS".to_string(), goos.to_string())),
        "{go:?}"
    );

    let info = buildinfo::read(&bytes)
        .expect("reads")
        .expect("a Go binary has build information");
    assert_eq!(info, go, "everything go version -m prints");

    let name = binary.file_name().and_then(|n| n.to_str()).expect("name");
    let digest = sha256_hex(&bytes);
    let bom = sbom::cyclonedx(&info, name, &digest);
    assert_eq!(bom["bomFormat"], "CycloneDX");
    assert_eq!(bom["specVersion"], "1.5");

    let binary_component = &bom["metadata"]["component"];
    assert_eq!(binary_component["type"], "application");
    assert_eq!(binary_component["name"], name);
    assert_eq!(binary_component["version"], go.main.version.as_str());
    assert_eq!(
        binary_component["purl"],
        expected_purl(&go.main.path, &go.main.version)
    );
    assert_eq!(
        binary_component["hashes"],
        serde_json::json!([{"alg": "SHA-256", "content": digest}])
    );
    let props = properties(binary_component);
    let prop = |name: &str| {
        props
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(prop("velox-cache:go:version"), Some(go.go_version.clone()));
    assert_eq!(prop("velox-cache:go:module"), Some(go.main.path.clone()));
    assert_eq!(prop("velox-cache:go:package"), Some(go.path.clone()));
    let settings: Vec<(String, String)> = props
        .iter()
        .filter_map(|(n, v)| {
            n.strip_prefix("velox-cache:go:build:")
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect();
    assert_eq!(settings, go.settings, "every build setting, in order");

    let components = bom["components"].as_array().expect("components");
    assert_eq!(components.len(), go.deps.len());
    for (component, dep) in components.iter().zip(&go.deps) {
        assert_eq!(component["type"], "library");
        assert_eq!(component["name"], dep.path.as_str());
        assert_eq!(component["version"], dep.version.as_str());
        assert_eq!(component["purl"], expected_purl(&dep.path, &dep.version));
        let props = properties(component);
        let mut expected = Vec::new();
        if let Some(sum) = &dep.sum {
            expected.push(("velox-cache:go:h1".to_string(), sum.clone()));
        }
        if let Some(replace) = &dep.replace {
            expected.push((
                "velox-cache:go:replace:path".to_string(),
                replace.path.clone(),
            ));
            expected.push((
                "velox-cache:go:replace:version".to_string(),
                replace.version.clone(),
            ));
            if let Some(sum) = &replace.sum {
                expected.push(("velox-cache:go:replace:h1".to_string(), sum.clone()));
            }
        }
        assert_eq!(props, expected, "{}", dep.path);
    }
    // A real h1: sum reached the SBOM, from the go.sum the build wrote.
    assert!(components.iter().any(|c| properties(c)
        .iter()
        .any(|(n, v)| n == "velox-cache:go:h1" && v.starts_with("h1:"))));

    let dependencies = bom["dependencies"].as_array().expect("dependencies");
    assert_eq!(dependencies.len(), 1);
    assert_eq!(dependencies[0]["ref"], binary_component["bom-ref"]);
    let refs: Vec<&Value> = components.iter().map(|c| &c["bom-ref"]).collect();
    let depends_on: Vec<&Value> = dependencies[0]["dependsOn"]
        .as_array()
        .expect("dependsOn")
        .iter()
        .collect();
    assert_eq!(depends_on, refs);

    if let Err(said) = validate(&bom) {
        panic!("the SBOM is not valid CycloneDX 1.5: {said}\n{bom:#}");
    }
    // Same bytes, same SBOM.
    assert_eq!(
        sbom::cyclonedx(&info, name, &digest).to_string(),
        bom.to_string()
    );
}

#[test]
fn elf_build_info_and_sbom_match_go_version_m() {
    check(&built().linux, "linux");
}

#[test]
fn macho_build_info_and_sbom_match_go_version_m() {
    check(&built().darwin, "darwin");
}

#[test]
fn pe_build_info_and_sbom_match_go_version_m() {
    check(&built().windows, "windows");
}

#[test]
fn the_schema_validator_rejects_a_broken_sbom() {
    let bytes = std::fs::read(&built().linux).expect("read");
    let info = buildinfo::read(&bytes).expect("reads").expect("Go");
    let mut bom = sbom::cyclonedx(&info, "app", &sha256_hex(&bytes));
    bom["components"][0]["type"] = Value::from("not-a-type");
    let said = validate(&bom).expect_err("an unknown component type is invalid");
    assert!(said.contains("not-a-type"), "{said}");
}

#[test]
fn bytes_that_are_not_go_have_no_build_information() {
    let script = b"#!/bin/sh\necho 'not a Go binary'\n".to_vec();
    assert_eq!(buildinfo::read(&script), Ok(None));
    // A C binary: an ELF executable without Go's section.
    let c_binary = std::fs::read("/bin/ls").expect("/bin/ls");
    assert!(c_binary.starts_with(b"\x7fELF"));
    assert_eq!(buildinfo::read(&c_binary), Ok(None));
    assert_eq!(buildinfo::read(&[0u8; 4096]), Ok(None));
}

/// The offset of the build information header in the file.
fn header_offset(bytes: &[u8]) -> usize {
    bytes
        .windows(14)
        .position(|w| w == b"\xff Go buildinf:")
        .expect("a Go binary holds the header")
}

#[test]
fn truncated_go_binaries_never_panic_nor_answer_wrongly() {
    for binary in [&built().linux, &built().darwin, &built().windows] {
        let bytes = std::fs::read(binary).expect("read");
        let whole = buildinfo::read(&bytes).expect("reads").expect("Go");
        let header = header_offset(&bytes);
        // Around the header and its strings, byte by byte; elsewhere, every 4 KiB.
        let near = (header.saturating_sub(64)..(header + 2048).min(bytes.len())).step_by(7);
        let far = (0..bytes.len()).step_by(4096);
        let mut errors = 0;
        for len in near.chain(far) {
            match buildinfo::read(&bytes[..len]) {
                Ok(Some(info)) => assert_eq!(info, whole, "{} cut at {len}", binary.display()),
                Ok(None) => {}
                Err(e) => {
                    assert!(!e.is_empty());
                    errors += 1;
                }
            }
        }
        assert!(errors > 0, "some cut of {} is an error", binary.display());
    }
}

#[test]
fn the_pointer_format_before_go_1_18_is_refused_with_a_clear_error() {
    let mut bytes = std::fs::read(&built().linux).expect("read");
    let header = header_offset(&bytes);
    bytes[header + 15] &= !0x2;
    let err = buildinfo::read(&bytes).expect_err("the old format is refused");
    assert!(err.contains("before 1.18"), "{err}");
}

#[test]
fn a_malformed_build_line_is_an_error_naming_the_line() {
    let mut bytes = std::fs::read(&built().linux).expect("read");
    // After the header: the runtime keeps another copy of the text elsewhere in the binary.
    let header = header_offset(&bytes);
    let at = header
        + bytes[header..]
            .windows(11)
            .position(|w| w == b"\tGOOS=linux")
            .expect("the GOOS setting");
    // `build\tGOOS linux`: same length, no '='.
    bytes[at + 5] = b' ';
    let err = buildinfo::read(&bytes).expect_err("a bad line is an error");
    assert!(
        err.contains("line ") && err.contains("missing '='"),
        "{err}"
    );
}

mod support;

/// Through the real server: a Go binary Velox answers with is stored, and its SBOM is served.
#[actix_web::test]
async fn the_server_serves_the_sbom_of_a_go_binary_it_stored() {
    let b = built();
    let h = support::Harness::start();
    std::fs::create_dir_all(&h.velox.dir).expect("artifact root");
    let dest = h.velox.dir.join("go-app");
    std::fs::copy(&b.linux, &dest).expect("copy the Go binary");
    h.velox
        .script([support::Behavior::Path(dest.display().to_string())]);
    let r = h.post(&support::build_request("linux", "amd64")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let bytes = std::fs::read(&b.linux).expect("read");
    assert_eq!(&r.body[..], &bytes[..]);
    let digest = sha256_hex(&bytes);
    let served = support::get(&h.url(&format!("/_velox/v1/artifacts/{digest}/sbom")), &[]).await;
    assert_eq!(
        served.status,
        200,
        "{}",
        String::from_utf8_lossy(&served.body)
    );
    assert!(served
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/vnd.cyclonedx+json")));
    let bom = served.json();
    validate(&bom).expect("a valid CycloneDX 1.5 document");
    assert_eq!(
        bom["metadata"]["component"]["hashes"][0]["content"],
        digest.as_str()
    );
    let go = go_version_m(&b.linux);
    let components = bom["components"].as_array().expect("components");
    assert_eq!(components.len(), go.deps.len(), "{bom}");
    for dep in &go.deps {
        assert!(
            components
                .iter()
                .any(|c| c["purl"] == expected_purl(&dep.path, &dep.version)),
            "{} {} missing: {bom}",
            dep.path,
            dep.version
        );
    }

    // Bytes that are not a Go binary: a 404 saying so.
    let other = h.post(&support::distinct_request(3)).await;
    assert_eq!(other.status, 200);
    let none = support::get(
        &h.url(&format!(
            "/_velox/v1/artifacts/{}/sbom",
            sha256_hex(&other.body)
        )),
        &[],
    )
    .await;
    let err = none.assert_error(404, "not_found");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("Go build information")),
        "{err}"
    );
    // And an unknown digest.
    support::get(
        &h.url(&format!("/_velox/v1/artifacts/{}/sbom", "ab".repeat(32))),
        &[],
    )
    .await
    .assert_error(404, "not_found");
}
