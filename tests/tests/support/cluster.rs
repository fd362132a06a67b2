//! A PostgreSQL cluster of a test's own, to stop and start under running processes: created
//! with `initdb` in a temporary directory, started on a free loopback port, removed when
//! dropped. The binaries are found as `scripts/test` finds them (the newest
//! `/usr/lib/postgresql/*/bin`, or `PG_BIN`); as root, the server runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running (or stopped) cluster of the test's own.
pub struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The unprivileged user to run the server as, when the test runs as root.
    user: Option<String>,
}

impl Cluster {
    /// Creates and starts a cluster; `None` (after a notice) when no PostgreSQL binaries are
    /// installed, a failure under `CI`.
    pub fn start() -> Option<Self> {
        let Some(bin) = binaries() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no PostgreSQL binaries (initdb, pg_ctl) found: set PG_BIN"
            );
            eprintln!("no PostgreSQL binaries found; skipping this test (set PG_BIN)");
            return None;
        };
        let dir = std::env::temp_dir().join(super::unique("eventsource-cluster"));
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        let root = run_output(Command::new("id").arg("-u")).trim() == "0";
        let user = root.then(|| "postgres".to_owned());
        if let Some(user) = &user {
            run(Command::new("chown").arg(user).arg(&dir));
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = listener.local_addr().expect("its address").port();
        drop(listener);
        let cluster = Self {
            bin,
            dir,
            port,
            user,
        };
        let data = cluster.data();
        cluster.pg(
            "initdb",
            &[
                "-D",
                path(&data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.start_server();
        Some(cluster)
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server with `-m fast` (sessions are ended, their transactions rolled back),
    /// leaves it down for `down` and starts it again on the same port.
    pub fn restart(&self, down: std::time::Duration) {
        self.stop("fast");
        std::thread::sleep(down);
        self.start_server();
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=200 -c fsync=off \
             -c full_page_writes=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let data = self.data();
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                &options,
            ],
        );
    }

    fn stop(&self, mode: &str) {
        let data = self.data();
        self.pg("pg_ctl", &["-D", path(&data), "-m", mode, "-w", "stop"]);
    }

    /// Runs the PostgreSQL program `program` with `args`, as the server's user.
    fn pg(&self, program: &str, args: &[&str]) {
        run(self.command(program).args(args));
    }

    /// The PostgreSQL program `program`, to run as the server's user.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match &self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&program);
                command
            }
            None => Command::new(&program),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        // Stopped already, or never started: nothing to stop.
        let _ = self
            .command("pg_ctl")
            .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `PG_BIN`, or the newest `/usr/lib/postgresql/<version>/bin` that holds `initdb`.
fn binaries() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn run(command: &mut Command) {
    run_output(command);
}

fn run_output(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
