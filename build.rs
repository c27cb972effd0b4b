//! Builds the web pages in `widget/` (npm + esbuild) into `$OUT_DIR/web` and writes
//! `$OUT_DIR/web_assets.rs`, the table `src/web/pages.rs` embeds with
//! `include_bytes!`. Runs again only when something under `widget/` (or
//! `migrations/`, which `sqlx::migrate!` embeds) changes.
//!
//! Needs Node.js (18 or later) and npm; `npm ci` runs when `widget/package-lock.json`
//! differs from what was installed last. `ROOMCAST_WIDGET_DIST=DIR` uses an
//! already-built directory instead (offline builds, packaging).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let root =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let widget = root.join("widget");
    for p in ["src", "build.mjs", "package.json", "package-lock.json"] {
        println!("cargo:rerun-if-changed=widget/{p}");
    }
    println!("cargo:rerun-if-env-changed=ROOMCAST_WIDGET_DIST");
    // `sqlx::migrate!` embeds these; a new migration must rebuild the binary.
    println!("cargo:rerun-if-changed=migrations");

    let dist = match std::env::var_os("ROOMCAST_WIDGET_DIST") {
        Some(d) => PathBuf::from(d),
        None => {
            let dist = out.join("web");
            if let Err(e) = build_widget(&widget, &dist) {
                fail(&e);
            }
            dist
        }
    };
    let mut files = Vec::new();
    if let Err(e) = collect(&dist, &dist, &mut files) {
        fail(&format!(
            "reading the built pages in {}: {e}",
            dist.display()
        ));
    }
    files.sort();
    let mut table = String::from(
        "/// Files built from widget/ by build.rs: (path under /, content type, bytes).\n\
         pub static ASSETS: &[(&str, &str, &[u8])] = &[\n",
    );
    for rel in &files {
        let abs = dist.join(rel);
        let _ = writeln!(
            table,
            "    ({:?}, {:?}, include_bytes!({:?})),",
            rel,
            content_type(rel),
            abs.display().to_string()
        );
    }
    table.push_str("];\n");
    if let Err(e) = std::fs::write(out.join("web_assets.rs"), table) {
        fail(&format!("writing web_assets.rs: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: building roomcast's web pages (widget/) failed: {msg}\n");
    std::process::exit(1);
}

fn build_widget(widget: &Path, dist: &Path) -> Result<(), String> {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
    let version = Command::new(&node).arg("--version").output().map_err(|e| {
        format!("cannot run `{node}` ({e}). Install Node.js 18 or later and npm (Debian: apt-get install nodejs npm)")
    })?;
    let v = String::from_utf8_lossy(&version.stdout);
    let major: u32 = v
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 18 {
        return Err(format!(
            "Node.js {} is too old; install 18 or later",
            v.trim()
        ));
    }

    // npm ci when the lock file changed since the last install.
    let lock = widget.join("package-lock.json");
    let stamp = widget.join("node_modules/.roomcast-lock");
    let lock_text = std::fs::read(&lock).map_err(|e| format!("reading {}: {e}", lock.display()))?;
    let installed = std::fs::read(&stamp).ok();
    if installed.as_deref() != Some(lock_text.as_slice())
        || !widget.join("node_modules/esbuild").exists()
    {
        let npm = std::env::var("NPM").unwrap_or_else(|_| "npm".into());
        let status = Command::new(&npm)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(widget)
            .status()
            .map_err(|e| {
                format!("cannot run `{npm}` ({e}); install npm (Debian: apt-get install npm)")
            })?;
        if !status.success() {
            return Err(format!(
                "`npm ci` in {} failed ({status})",
                widget.display()
            ));
        }
        std::fs::write(&stamp, &lock_text)
            .map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    }

    let status = Command::new(&node)
        .arg(widget.join("build.mjs"))
        .arg("--outdir")
        .arg(dist)
        .current_dir(widget)
        .status()
        .map_err(|e| format!("cannot run `{node} build.mjs`: {e}"))?;
    if !status.success() {
        return Err(format!("`node widget/build.mjs` failed ({status})"));
    }
    Ok(())
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(base, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}
