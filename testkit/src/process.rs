//! Helpers for the services a test owns as child processes: free ports, graceful termination.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback TCP port that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Sends SIGTERM to `process` and waits up to `limit` for it to exit, then SIGKILLs it.
pub(crate) fn terminate(process: &mut Child, limit: Duration) {
    signal(process.id(), "TERM");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if process.try_wait().expect("poll the process").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = process.kill();
    let _ = process.wait();
    panic!("process {} ignored SIGTERM for {limit:?}", process.id());
}

/// Sends `SIG<name>` to `pid` with kill(1) (the workspace forbids the unsafe libc call).
///
/// # Panics
///
/// When kill(1) fails (no such process, say).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}
