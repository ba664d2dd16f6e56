//! Clean-up at the end of a test binary. A resource the tests of a binary share (a commerce
//! stack started once, in a `static`) is never dropped, since statics are not; register its
//! clean-up with [`on_success`] and it runs when the process exits, unless a test failed (a
//! failed run keeps what it made, to be looked at). Every test that uses such a resource holds
//! a [`Watch`] over its body, so a failure is seen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

type Task = Box<dyn FnOnce() + Send>;

static TASKS: Mutex<Vec<Task>> = Mutex::new(Vec::new());
static FAILED: AtomicBool = AtomicBool::new(false);
static INSTALLED: Once = Once::new();

/// Runs `task` when the process exits, if no [`Watch`] saw a test fail.
///
/// # Panics
///
/// When the exit hook cannot be installed.
pub fn on_success(task: impl FnOnce() + Send + 'static) {
    INSTALLED.call_once(|| {
        // SAFETY: `run_tasks` is an `extern "C"` function without arguments that never unwinds
        // (it catches panics), which is all `atexit` asks of it.
        #[allow(unsafe_code)]
        let installed = unsafe { libc::atexit(run_tasks) };
        assert_eq!(installed, 0, "atexit failed");
    });
    TASKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(task));
}

/// Held over a test's body: dropped while the test panics, it marks the run failed, so the
/// [`on_success`] tasks do not run.
#[derive(Debug, Default)]
pub struct Watch;

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            FAILED.store(true, Ordering::SeqCst);
        }
    }
}

extern "C" fn run_tasks() {
    let tasks = std::mem::take(
        &mut *TASKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    if FAILED.load(Ordering::SeqCst) {
        eprintln!("testkit: a test failed; the shared resources of this run are kept");
        return;
    }
    for task in tasks {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() {
            eprintln!("testkit: a clean-up task failed");
        }
    }
}
