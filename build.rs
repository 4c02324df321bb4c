//! Names the build: `COLLABD_REVISION` (the `revision` label of
//! `collabd_build_info`) is the git commit being built, unless the
//! environment sets it (the Dockerfile passes it in, having no checkout);
//! outside a checkout it stays unset and the label says `unknown`.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=COLLABD_REVISION");
    if std::env::var_os("COLLABD_REVISION").is_some() {
        return;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(revision) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=COLLABD_REVISION={revision}");
    // Built again when HEAD moves: a new commit, or another branch.
    for path in ["HEAD", "packed-refs"] {
        if let Some(file) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(file) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}
