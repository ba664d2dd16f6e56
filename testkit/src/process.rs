//! Helpers for the services a test owns as child processes: free ports, graceful termination.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A loopback TCP port nothing listened on a moment ago, below the kernel's ephemeral range, so
/// no outgoing connection's local end takes it between now and a server binding it, nor while a
/// test restarts the server that listens on it.
pub fn free_port() -> u16 {
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let low = 10_000;
    loop {
        let span = u128::from(ephemeral - low);
        let port = low + u16::try_from(uuid::Uuid::new_v4().as_u128() % span).expect("in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
