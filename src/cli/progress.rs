//! A progress line for a person at a terminal while a command works (verifying a long audit
//! chain, waiting for revocations); nothing at all for scripts and pipes.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Shows `label… Ns` on stderr, once a second from the first second on, until dropped; then
/// clears the line. Commands that finish within a second show nothing.
pub(super) struct Ticker {
    done: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub(super) fn start(label: &str) -> Self {
        Self::start_on(label, std::io::stderr().is_terminal())
    }

    fn start_on(label: &str, terminal: bool) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let thread = terminal.then(|| {
            let done = Arc::clone(&done);
            let label = label.to_string();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut shown = 0;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let secs = start.elapsed().as_secs();
                    if secs > shown {
                        eprint!("\r{label}… {secs}s");
                        shown = secs;
                    }
                }
                if shown > 0 {
                    eprint!("\r{:width$}\r", "", width = label.len() + 12);
                }
            })
        });
        Self { done, thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_runs_without_a_terminal_and_a_ticker_stops_when_dropped() {
        assert!(Ticker::start_on("x", false).thread.is_none());
        let t = Ticker::start_on("x", true);
        assert!(t.thread.is_some());
        let started = Instant::now();
        drop(t);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "drop waits one tick at most"
        );
    }
}
