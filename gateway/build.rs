//! Embeds the files the binary serves: the demo page (wasm/demo) and the browser
//! module (wasm/pkg, built by wasm/build and committed) for the public listener,
//! the module and the dashboard (web-ui/dist, built and committed) for the admin
//! listener.

use std::fmt::Write;
use std::path::Path;

/// (name served, file, content type) of the demo page and of the browser module.
const DEMO: [(&str, &str, &str); 2] = [
    ("index.html", "wasm/demo/index.html", "text/html; charset=utf-8"),
    ("demo.js", "wasm/demo/demo.js", "text/javascript; charset=utf-8"),
];
const MODULE: [(&str, &str, &str); 3] = [
    ("kcpgate_wasm.js", "wasm/pkg/kcpgate_wasm.js", "text/javascript; charset=utf-8"),
    ("kcpgate_wasm_bg.wasm", "wasm/pkg/kcpgate_wasm_bg.wasm", "application/wasm"),
    ("kcpgate_wasm.d.ts", "wasm/pkg/kcpgate_wasm.d.ts", "text/plain; charset=utf-8"),
];

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!("cargo:rustc-env=KCPGATE_COMMIT={}", commit(&root));
    let mut code = String::new();
    for (set, files, what) in [("DEMO", &DEMO[..], "The demo page's"), ("MODULE", &MODULE[..], "The browser module's")]
    {
        writeln!(code, "/// {what} files: (name, content type, bytes).\npub static {set}: &[(&str, &str, &[u8])] = &[")
            .expect("a String takes writes");
        for (name, path, kind) in files {
            let file = root.join(path);
            println!("cargo:rerun-if-changed={}", file.display());
            // Part of the repository: a checkout without it is not whole.
            let file = file.canonicalize().unwrap_or_else(|e| {
                panic!("{path} is missing ({e}): it is part of the repository; restore it with git, or run wasm/build")
            });
            writeln!(code, "    ({name:?}, {kind:?}, include_bytes!({:?})),", file.display())
                .expect("a String takes writes");
        }
        code.push_str("];\n");
    }
    code.push_str("/// The dashboard's files: (path under /, content type, bytes).\npub static DASHBOARD: &[(&str, &str, &[u8])] = &[\n");
    let dist = root.join("web-ui/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &mut files);
    files.sort();
    for file in files {
        let name = file.strip_prefix(&dist).expect("under dist").to_string_lossy().replace('\\', "/");
        let kind = match file.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("json") => "application/json",
            _ => "application/octet-stream",
        };
        let file = file.canonicalize().expect("an existing file has a canonical path");
        writeln!(code, "    ({name:?}, {kind:?}, include_bytes!({:?})),", file.display())
            .expect("a String takes writes");
    }
    code.push_str("];\n");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("assets.rs");
    std::fs::write(out, code).expect("OUT_DIR is writable");
}

/// Every file under `dir`, recursively (none if it does not exist).
fn collect(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The commit kcpgate is built from, for `--version`: `KCPGATE_COMMIT` when set
/// (a build without the repository, such as a container build), else git's
/// short hash and commit date, else "unknown commit".
fn commit(root: &Path) -> String {
    println!("cargo:rerun-if-env-changed=KCPGATE_COMMIT");
    if let Ok(given) = std::env::var("KCPGATE_COMMIT") {
        if !given.trim().is_empty() {
            return given.trim().to_string();
        }
    }
    // Rebuilt when HEAD moves: a checkout changes HEAD, a commit the branch's ref.
    let git = root.join(".git");
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(reference) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git.join(reference).display());
        }
    }
    println!("cargo:rerun-if-changed={}", git.join("packed-refs").display());
    std::process::Command::new("git")
        .args(["log", "-1", "--format=commit %h, %cs"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown commit".to_string())
}
