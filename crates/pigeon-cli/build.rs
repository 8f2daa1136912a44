//! Builds the web client that `pigeon app` serves (`web/`, with npm and Vite) into Cargo's
//! `OUT_DIR`, and lists its files for `include_bytes!`, so the page is inside the one binary.
//! Needs `npm` (the README's commands install nodejs and npm); `npm ci` runs once, when
//! `web/node_modules` is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for watched in [
        "web/index.html",
        "web/src",
        "web/public",
        "web/package.json",
        "web/package-lock.json",
        "web/vite.config.js",
    ] {
        println!("cargo:rerun-if-changed={watched}");
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("web");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let out = out_dir.join("web");
    if !web.join("node_modules").join(".bin").join("vite").exists() {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&web),
            "npm ci",
        );
    }
    run(
        Command::new("npm")
            .args(["run", "--silent", "build"])
            .env("PIGEON_WEB_OUT", &out)
            .current_dir(&web),
        "npm run build",
    );
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&out) {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) => fail(&format!(
            "the web client's build left nothing in {}: {e}",
            out.display()
        )),
    };
    files.sort();
    let mut list = String::from("&[\n");
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        list.push_str(&format!(
            "    (\"/{name}\", include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    list.push_str("]\n");
    if let Err(e) = std::fs::write(out_dir.join("web_assets.rs"), list) {
        fail(&format!("writing the web client's file list: {e}"));
    }
}

fn run(cmd: &mut Command, what: &str) {
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "building pigeon's web client: `{what}` in {} failed ({status})",
            dir_of(cmd).display()
        )),
        Err(e) => fail(&format!(
            "building pigeon's web client needs npm ({what}: {e}); install nodejs and npm, as \
             the README's commands do"
        )),
    }
}

fn dir_of(cmd: &Command) -> &Path {
    cmd.get_current_dir().unwrap_or(Path::new("."))
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(1)
}
