//! Compiles agent_guard's C hook trampolines (src/hooks/trampolines.c)
//! against the server headers of the PostgreSQL being built for.
//!
//! The pg_config is the one cargo-pgrx names (PGRX_PG_CONFIG_PATH), else the
//! one `~/.pgrx/config.toml` lists for the enabled `pgNN` feature, else
//! `pg_config` from PATH.

use std::path::PathBuf;
use std::process::Command;

fn enabled_major() -> Option<String> {
    ["13", "14", "15", "16", "17", "18"]
        .into_iter()
        .find(|m| std::env::var_os(format!("CARGO_FEATURE_PG{m}")).is_some())
        .map(String::from)
}

fn pg_config_from_pgrx_home(major: &str) -> Option<PathBuf> {
    let home = std::env::var_os("PGRX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgrx")))?;
    let text = std::fs::read_to_string(home.join("config.toml")).ok()?;
    let key = format!("pg{major}");
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| PathBuf::from(v.trim().trim_matches('"')))
    })
}

fn main() {
    println!("cargo:rerun-if-changed=src/hooks/trampolines.c");
    println!("cargo:rerun-if-changed=src/audit/forward.c");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PGRX_HOME");
    let major = enabled_major();
    let pg_config = std::env::var_os("PGRX_PG_CONFIG_PATH")
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .or_else(|| major.as_deref().and_then(pg_config_from_pgrx_home))
        .unwrap_or_else(|| PathBuf::from("pg_config"));
    let out = Command::new(&pg_config)
        .arg("--includedir-server")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", pg_config.display()));
    assert!(
        out.status.success(),
        "{} --includedir-server failed",
        pg_config.display()
    );
    let include = String::from_utf8(out.stdout).unwrap().trim().to_string();
    if let Some(major) = &major {
        let version = Command::new(&pg_config).arg("--version").output().ok();
        if let Some(v) = version.and_then(|o| String::from_utf8(o.stdout).ok()) {
            assert!(
                v.split_whitespace()
                    .nth(1)
                    .is_some_and(|n| n.starts_with(&format!("{major}."))),
                "feature pg{major} but {} is {}",
                pg_config.display(),
                v.trim()
            );
        }
    }
    cc::Build::new()
        .file("src/hooks/trampolines.c")
        .include(&include)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-fvisibility=hidden")
        .compile("agent_guard_hooks");
    // libpq, for forwarding a hot standby's audit records to the primary
    // (src/audit/forward.c): client headers and library, not the server's.
    let client = |arg: &str| {
        Command::new(&pg_config)
            .arg(arg)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let client_include = client("--includedir").unwrap_or_else(|| "/usr/include/postgresql".into());
    cc::Build::new()
        .file("src/audit/forward.c")
        .include(&client_include)
        .flag_if_supported("-fvisibility=hidden")
        .compile("agent_guard_forward");
    if let Some(libdir) = client("--libdir") {
        println!("cargo:rustc-link-search=native={libdir}");
    }
    println!("cargo:rustc-link-lib=dylib=pq");
}
