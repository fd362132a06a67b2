//! The child processes the crash tests start, watch and kill: a relay, a projector, a saga
//! runner (`src/bin/*_child.rs`). A kill is a real crash: no destructor, no lease release, a
//! transaction cut wherever it was.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use eventsource_core::TenantId;
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// One incarnation of a child process, and the lines it prints.
pub struct ChildProcess {
    /// The process.
    pub child: Child,
    what: &'static str,
    lines: Lines<BufReader<ChildStdout>>,
}

impl ChildProcess {
    /// Starts `command` (a `what`: relay, projector ...) with its stdout piped to the test;
    /// dropping the handle kills it, so a failing test leaves none running.
    pub fn spawn(what: &'static str, mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the {what} child: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        Self {
            child,
            what,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running child")
    }

    /// Waits up to `limit` for a line starting with `prefix`.
    pub async fn said(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let wait = async {
            while let Ok(Some(said)) = self.lines.next_line().await {
                if said.starts_with(prefix) {
                    return Some(said);
                }
            }
            None
        };
        tokio::time::timeout(limit, wait).await.ok().flatten()
    }

    /// Waits up to 20 s for the child to say `ready`.
    pub async fn ready(&mut self) {
        assert!(
            self.said("ready", Duration::from_secs(20)).await.is_some(),
            "the {} child never got ready",
            self.what
        );
    }

    /// How the child ended, if it did.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("look at the child")
    }

    /// SIGKILL, by the child's pid, after checking it did not stop on its own.
    pub async fn kill(mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "the {} exited by itself ({status}) before it was killed",
                self.what
            );
        }
        self.child.start_kill().expect("SIGKILL the child");
        self.child.wait().await.expect("reap the child");
    }

    /// Sends `signal` (`STOP`, `CONT`) to the child, by pid.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}

/// A relay process (`src/bin/relay_child.rs`) publishing `tenant`'s log from `db_url` to
/// `redis_url` under `prefix`, checkpointed as `name`, in batches of 1 to 49 events; told to
/// `stall`, it stops for good in its first checkpoint save, after Redis answered.
pub fn relay(
    db_url: &str,
    redis_url: &str,
    name: &str,
    prefix: &str,
    tenant: &TenantId,
    stall: bool,
) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay_child"));
    command
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url)
        .env("RELAY_NAME", name)
        .env("RELAY_PREFIX", prefix)
        .env("RELAY_TENANT", tenant.as_str())
        .env("RELAY_BATCH", rand::random_range(1..50u32).to_string());
    if stall {
        command.env("RELAY_STALL", "1");
    } else {
        command.env_remove("RELAY_STALL");
    }
    ChildProcess::spawn("relay", command)
}

/// A relay process of a sharded pool (`src/bin/relay_child.rs`): instance `instance` of the
/// relay `name` over `shards` shards with leases of `lease_ms`, publishing the events of
/// `tenants` recorded since `since` from `db_url` to `redis_url` under `prefix`, in batches
/// of 1 to 49 events.
#[allow(clippy::too_many_arguments, reason = "one child's whole configuration")]
pub fn sharded_relay(
    db_url: &str,
    redis_url: &str,
    name: &str,
    prefix: &str,
    tenants: &[TenantId],
    since: chrono::DateTime<chrono::Utc>,
    shards: u32,
    instance: &str,
    lease_ms: u64,
) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay_child"));
    let tenants: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    command
        .env("DATABASE_URL", db_url)
        .env("REDIS_URL", redis_url)
        .env("RELAY_NAME", name)
        .env("RELAY_PREFIX", prefix)
        .env("RELAY_TENANTS", tenants.join(","))
        .env("RELAY_SINCE", since.to_rfc3339())
        .env("RELAY_SHARDS", shards.to_string())
        .env("RELAY_INSTANCE", instance)
        .env("RELAY_LEASE_MS", lease_ms.to_string())
        .env("RELAY_BATCH", rand::random_range(1..50u32).to_string())
        .env_remove("RELAY_STALL")
        .env_remove("RELAY_TENANT");
    ChildProcess::spawn("sharded relay", command)
}

/// A job worker process (`src/bin/job_child.rs`) running the queue `crash` under `prefix`
/// with `concurrency` jobs at once.
pub fn job_worker(redis_url: &str, prefix: &str, concurrency: usize) -> ChildProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_job_child"));
    command
        .env("REDIS_URL", redis_url)
        .env("JOB_PREFIX", prefix)
        .env("JOB_CONCURRENCY", concurrency.to_string());
    ChildProcess::spawn("job worker", command)
}
