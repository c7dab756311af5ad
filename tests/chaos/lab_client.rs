//! The test's own side of the lab: the runtime its clients run on, whose
//! threads all live in the lab's client namespace (see [`crate::lab`]).

use crate::lab::Lab;

/// Enters the network namespace bound at `path` on the calling thread and
/// checks that it did.
fn enter_namespace(path: &str) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: `file` is an open namespace file descriptor for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
    let expected = std::fs::metadata(path).map_err(|e| e.to_string())?.ino();
    let current = std::fs::metadata("/proc/thread-self/ns/net").map_err(|e| e.to_string())?.ino();
    if current == expected {
        Ok(())
    } else {
        Err(format!("thread is in network namespace {current}, not {expected} ({path})"))
    }
}

impl Lab {
    /// The runtime every client of the test runs on. In the namespace lab
    /// each of its threads (workers and blocking pool) enters the client
    /// namespace before anything else, so every socket the clients open
    /// belongs to the lab; a thread that cannot enter it aborts the process
    /// rather than send lab traffic from the root namespace. Run all client
    /// work in tasks spawned on it (`block_on`'s own future runs on the
    /// calling thread, outside the lab).
    pub fn client_runtime(&self) -> tokio::runtime::Runtime {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2).enable_all();
        if let Some(namespace) = self.client_namespace() {
            let path = format!("/run/netns/{namespace}");
            // Fail here, with a message, rather than abort in a worker.
            std::thread::scope(|scope| scope.spawn(|| enter_namespace(&path)).join().expect("namespace probe thread"))
                .unwrap_or_else(|error| panic!("cannot enter the client namespace: {error}"));
            builder.on_thread_start(move || {
                if let Err(error) = enter_namespace(&path) {
                    eprintln!("chaos: FATAL: a client thread cannot enter the lab namespace: {error}");
                    std::process::abort();
                }
            });
        }
        builder.build().expect("client runtime")
    }
}
