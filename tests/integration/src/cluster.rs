//! Extra clusters a test starts itself: a second cluster to restore a dump
//! into, a streaming standby made with `pg_basebackup -R`.
//!
//! Each lives in its own data directory under `/var/tmp/agent_guard/`
//! (`it-<name>-<pid>`), owned by the `postgres` OS user, on a free port of
//! 127.0.0.1 (from 28850 up), with `shared_preload_libraries = 'agent_guard'`
//! and trust authentication for 127.0.0.1. Dropping the [`Cluster`] stops it
//! (immediate) and removes its directory. Servers do not inherit
//! `RUST_BACKTRACE`.

use crate::{as_postgres, bindir, describe, host, port, run, superuser, tail};
use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// A cluster started by a test.
pub struct Cluster {
    pub port: u16,
    pub datadir: String,
    running: bool,
}

/// A port of 127.0.0.1 nobody listens on, from 28850 up, and not handed
/// out before by this process (tests of one binary run in parallel: two
/// clusters initialised before either starts would otherwise get the same).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let p = (28850..28990)
        .find(|p| {
            !given.contains(p)
                && TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpStream::connect_timeout(
                    &([127, 0, 0, 1], *p).into(),
                    Duration::from_millis(200),
                )
                .is_err()
        })
        .expect("no free port in 28850..28990");
    given.push(p);
    p
}

fn tool(name: &str) -> String {
    format!("{}/{name}", bindir())
}

/// Run a PostgreSQL client tool (pg_dump, psql, …) as the current OS user,
/// without RUST_BACKTRACE; returns (success, stdout+stderr).
pub fn client_tool(name: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("PGOPTIONS");
    run(cmd, name)
}

/// Like [`client_tool`] with stdout only (stderr returned apart).
pub fn client_tool_stdout(name: &str, args: &[&str]) -> (bool, Vec<u8>, String) {
    let mut cmd = Command::new(tool(name));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("PGOPTIONS");
    match cmd.output() {
        Ok(o) => (
            o.status.success(),
            o.stdout,
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, vec![], format!("cannot run {name}: {e}")),
    }
}

fn as_postgres_clean(args: &[&str]) -> Command {
    let mut c = as_postgres(args);
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    c
}

/// A fresh, empty data directory for cluster `name`, owned by postgres.
fn new_datadir(name: &str) -> String {
    let dir = format!("/var/tmp/agent_guard/it-{name}-{}", std::process::id());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
    let (ok, out) = run(
        {
            let mut c = Command::new("chown");
            c.args(["postgres:postgres", &dir]);
            c
        },
        "chown",
    );
    assert!(ok, "chown postgres {dir}: {out}");
    let (ok, out) = run(
        {
            let mut c = Command::new("chmod");
            c.args(["700", &dir]);
            c
        },
        "chmod",
    );
    assert!(ok, "chmod {dir}: {out}");
    dir
}

impl Cluster {
    /// initdb a new cluster (not started); `extra` lines go into its
    /// postgresql.conf after agent_guard's own.
    pub fn init(name: &str, extra: &[&str]) -> Cluster {
        let datadir = new_datadir(name);
        let (ok, out) = run(
            as_postgres_clean(&[
                &tool("initdb"),
                "-D",
                &datadir,
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=trust",
            ]),
            "initdb",
        );
        assert!(ok, "initdb {datadir}: {out}");
        let c = Cluster {
            port: free_port(),
            datadir,
            running: false,
        };
        c.write_conf(extra);
        c
    }

    /// A streaming standby of the test cluster (`pg_basebackup -R`), not started.
    pub fn standby_of_test_cluster(name: &str, extra: &[&str]) -> Cluster {
        let datadir = new_datadir(name);
        let p = port().to_string();
        let h = host();
        let (ok, out) = run(
            as_postgres_clean(&[
                &tool("pg_basebackup"),
                "-h",
                &h,
                "-p",
                &p,
                "-U",
                &superuser(),
                "-D",
                &datadir,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ]),
            "pg_basebackup",
        );
        assert!(ok, "pg_basebackup into {datadir}: {out}");
        let c = Cluster {
            port: free_port(),
            datadir,
            running: false,
        };
        c.write_conf(extra);
        c
    }

    /// (Re)write the settings this helper owns: agent_guard.base.conf is
    /// included last, so it wins over what the primary's copy said.
    fn write_conf(&self, extra: &[&str]) {
        let mut conf = format!(
            "# written by tests/integration/src/cluster.rs\n\
             port = {}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             logging_collector = off\n\
             log_destination = 'stderr'\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n\
             shared_preload_libraries = 'agent_guard'\n\
             fsync = off\n\
             log_min_messages = warning\n",
            self.port, self.datadir
        );
        for l in extra {
            conf.push_str(l);
            conf.push('\n');
        }
        let file = format!("{}/agent_guard.it.conf", self.datadir);
        std::fs::write(&file, conf).unwrap_or_else(|e| panic!("write {file}: {e}"));
        let main = format!("{}/postgresql.conf", self.datadir);
        let text = std::fs::read_to_string(&main).unwrap_or_default();
        if !text.contains("include_if_exists = 'agent_guard.it.conf'") {
            std::fs::write(
                &main,
                format!("{text}\ninclude_if_exists = 'agent_guard.it.conf'\n"),
            )
            .unwrap_or_else(|e| panic!("write {main}: {e}"));
        }
        for f in [&file, &main] {
            let _ = Command::new("chown")
                .args(["postgres:postgres", f])
                .output();
        }
    }

    /// Start (pg_ctl start -w) and wait until it accepts connections.
    pub fn start(&mut self) {
        let log = self.log_path();
        let (ok, out) = run(
            as_postgres_clean(&[
                &tool("pg_ctl"),
                "-D",
                &self.datadir,
                "-l",
                &log,
                "-w",
                "-t",
                "120",
                "start",
            ]),
            "pg_ctl start",
        );
        assert!(
            ok,
            "pg_ctl start {}: {out}\n--- server.log ---\n{}",
            self.datadir,
            tail(&self.log(), 30)
        );
        self.running = true;
        self.wait_ready(Duration::from_secs(60));
    }

    /// Stop with `pg_ctl stop -m MODE`.
    pub fn stop(&mut self, mode: &str) {
        if !self.running {
            return;
        }
        let (ok, out) = run(
            as_postgres_clean(&[
                &tool("pg_ctl"),
                "-D",
                &self.datadir,
                "-m",
                mode,
                "-w",
                "-t",
                "120",
                "stop",
            ]),
            "pg_ctl stop",
        );
        assert!(ok, "pg_ctl stop {}: {out}", self.datadir);
        self.running = false;
    }

    /// Run a server tool on the stopped cluster as postgres (e.g. pg_resetwal).
    pub fn server_tool(&self, name: &str, args: &[&str]) -> String {
        let t = tool(name);
        let mut all = vec![t.as_str()];
        all.extend_from_slice(args);
        let (ok, out) = run(as_postgres_clean(&all), name);
        assert!(ok, "{name} {args:?}: {out}");
        out
    }

    /// `pg_ctl promote -w`.
    pub fn promote(&mut self) {
        self.server_tool(
            "pg_ctl",
            &["-D", &self.datadir.clone(), "-w", "-t", "120", "promote"],
        );
    }

    pub fn log_path(&self) -> String {
        format!("{}/server.log", self.datadir)
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn try_connect(&self, user: &str, db: &str) -> Result<Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname(db)
            .application_name("integration tests")
            .connect_timeout(Duration::from_secs(10))
            .connect(NoTls)
    }

    pub fn connect(&self, user: &str, db: &str) -> Client {
        self.try_connect(user, db).unwrap_or_else(|e| {
            panic!(
                "cannot connect to 127.0.0.1:{} db={db} user={user}: {}",
                self.port,
                describe(&e)
            )
        })
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let err = match self.try_connect("postgres", "postgres") {
                Ok(mut c) => match c.simple_query("SELECT 1") {
                    Ok(_) => return,
                    Err(e) => describe(&e),
                },
                Err(e) => describe(&e),
            };
            if Instant::now() > deadline {
                panic!(
                    "cluster {} not ready after {timeout:?}: {err}",
                    self.datadir
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Connection arguments for client tools: `-h 127.0.0.1 -p PORT -U postgres`.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            "postgres".into(),
        ]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = as_postgres_clean(&[
                &tool("pg_ctl"),
                "-D",
                &self.datadir,
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        }
        if std::env::var("AG_KEEP_CLUSTER").ok().as_deref() != Some("1") {
            let _ = std::fs::remove_dir_all(&self.datadir);
        }
    }
}
