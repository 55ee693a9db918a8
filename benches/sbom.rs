//! What an SBOM costs on a large binary: `trust::buildinfo::read` + `trust::sbom::cyclonedx` +
//! serializing the JSON, on a ~100 MB Go binary, read through a memory map and read into memory.
//!
//! ```sh
//! cargo bench --bench sbom                          # builds the binary with Debian's golang-go
//! VELOX_SBOM_BINARY=/path/to/rr cargo bench --bench sbom   # or measures a binary you have
//! ```
//!
//! The binary it builds embeds 100 MB (`//go:embed`) and depends on ten modules served by a
//! file-system GOPROXY (tests/support/gobuild.rs), so the SBOM has components with `h1:` sums.

#[path = "../tests/support/gobuild.rs"]
mod gobuild;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use velox_cache::trust::{buildinfo, sbom};

const PADDING: usize = 100 * 1024 * 1024;
const DEPS: usize = 10;
const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn build(ws: &gobuild::GoWorkspace) -> PathBuf {
    let mut require = String::new();
    let mut imports = String::new();
    let mut calls = String::new();
    for i in 0..DEPS {
        let module = format!("example.com/dep{i}");
        let go_mod = format!("module {module}\n\ngo 1.18\n");
        let code = format!("package dep{i}\n\nfunc N() int {{ return {i} }}\n");
        ws.publish(&module, "v1.0.0", &[("go.mod", &go_mod), ("dep.go", &code)]);
        require.push_str(&format!("\t{module} v1.0.0\n"));
        imports.push_str(&format!("\t\"{module}\"\n"));
        calls.push_str(&format!(" + dep{i}.N()"));
    }
    ws.write(
        "src/big/go.mod",
        format!("module example.com/big\n\ngo 1.18\n\nrequire (\n{require})\n").as_bytes(),
    );
    ws.write(
        "src/big/main.go",
        format!(
            "package main\n\nimport (\n\t_ \"embed\"\n\t\"fmt\"\n\n{imports})\n\n\
             //go:embed pad.bin\nvar pad []byte\n\n\
             func main() {{ fmt.Println(len(pad){calls}) }}\n"
        )
        .as_bytes(),
    );
    ws.write("src/big/pad.bin", &vec![0x5a; PADDING]);
    ws.go("src/big", &["mod", "tidy"], &[]);
    let out = ws.path("big");
    let out_arg = out.to_string_lossy().into_owned();
    ws.go("src/big", &["build", "-trimpath", "-o", &out_arg, "."], &[]);
    out
}

fn sbom_of(bytes: &[u8]) -> usize {
    let info = buildinfo::read(bytes).expect("reads").expect("a Go binary");
    let bom = sbom::cyclonedx(&info, "big", DIGEST);
    serde_json::to_vec(&bom).expect("json").len()
}

fn median(name: &str, runs: usize, mut f: impl FnMut() -> usize) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{name}: median {:?}, min {:?}, max {:?} ({runs} runs)",
        times[runs / 2],
        times[0],
        times[runs - 1]
    );
}

fn measure(path: &Path) {
    let size = std::fs::metadata(path).expect("stat").len();
    let bytes = std::fs::read(path).expect("read");
    let json_len = sbom_of(&bytes);
    println!(
        "binary: {} ({:.1} MB), SBOM {json_len} bytes of JSON",
        path.display(),
        size as f64 / 1e6
    );
    median("mmap + read + cyclonedx + JSON", 51, || {
        let file = std::fs::File::open(path).expect("open");
        // SAFETY: the benchmark's own file, not written while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
        sbom_of(&map)
    });
    median("read into memory + read + cyclonedx + JSON", 11, || {
        sbom_of(&std::fs::read(path).expect("read"))
    });
    median("in memory already: read + cyclonedx + JSON", 51, || {
        sbom_of(&bytes)
    });
}

fn main() {
    if let Some(path) = std::env::var_os("VELOX_SBOM_BINARY") {
        measure(Path::new(&path));
        return;
    }
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sbom-bench-go");
    let ws = gobuild::GoWorkspace::at(root.clone());
    let started = Instant::now();
    let binary = build(&ws);
    println!("built in {:?}", started.elapsed());
    measure(&binary);
    // Some 300 MB (the padding, the binary, Go's cache): not worth keeping.
    if let Err(e) = std::fs::remove_dir_all(&root) {
        eprintln!("could not remove {}: {e}", root.display());
    }
}
