//! A PostgreSQL server owned by one test: its own cluster, port and data directory, so the test can
//! restart or kill it without touching the shared server other tests use.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;

/// A private cluster (`initdb -A trust`) on a free loopback port, run with `pg_ctl` (as the
/// `postgres` user when the test runs as root). Dropping it stops the server and removes the
/// cluster.
///
/// The server binaries come from `OUTBOX_TOOLKIT_PG_BINDIR` (printed by `scripts/services up`).
#[derive(Debug)]
pub struct OwnedPostgres {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl OwnedPostgres {
    /// Creates the cluster and starts the server.
    ///
    /// # Panics
    ///
    /// When the binaries are not found or the server does not start.
    pub fn start() -> Self {
        let bindir = PathBuf::from(std::env::var_os("OUTBOX_TOOLKIT_PG_BINDIR").expect(
            "OUTBOX_TOOLKIT_PG_BINDIR is not set: run `eval \"$(scripts/services up)\"` first",
        ));
        let as_postgres = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
        // Under /tmp: the postgres user cannot reach a root-owned home directory.
        let dir = PathBuf::from("/tmp").join(format!(
            "outbox-toolkit-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let server = Self {
            dir,
            bindir,
            port: crate::free_port(),
            as_postgres,
        };
        if as_postgres {
            server.run(Command::new("chown").arg("postgres").arg(&server.dir));
        }
        server.run(
            server
                .command("initdb")
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "-D"])
                .arg(server.dir.join("data")),
        );
        server.start_server();
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Restarts the server (`pg_ctl restart -m fast`: every connection is closed).
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails.
    pub fn restart(&self) {
        self.run(self.pg_ctl("restart").args(["-m", "fast"]));
    }

    /// Stops the server (`pg_ctl stop -m fast`).
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails.
    pub fn stop(&self) {
        self.run(self.pg_ctl("stop").args(["-m", "fast"]));
    }

    /// Starts the server again after [`stop`](Self::stop).
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails.
    pub fn start_server(&self) {
        self.run(&mut self.pg_ctl("start"));
    }

    fn pg_ctl(&self, action: &str) -> Command {
        let mut command = self.command("pg_ctl");
        command
            .arg(action)
            .arg("-w")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -k {}",
                self.port,
                self.dir.display()
            ));
        command
    }

    /// The server binary `program`, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bindir.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, command: &mut Command) {
        let output = command.output().expect("run a PostgreSQL command");
        assert!(
            output.status.success(),
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for OwnedPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop").args(["-m", "immediate"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
