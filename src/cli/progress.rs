//! A progress line for a person at a terminal while a command works (verifying a long audit
//! chain, waiting for revocations); nothing at all for scripts and pipes.

use std::io::{IsTerminal as _, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
        Self::start_on(label, None, std::io::stderr().is_terminal())
    }

    /// Also shows how far the work has got: `label… 12000 records, 3s`, the count taken from
    /// `done` (a [`LineCounter`]'s, for example).
    pub(super) fn counting(label: &str, unit: &'static str, done: Arc<AtomicU64>) -> Self {
        Self::start_on(label, Some((unit, done)), std::io::stderr().is_terminal())
    }

    fn start_on(
        label: &str,
        count: Option<(&'static str, Arc<AtomicU64>)>,
        terminal: bool,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let thread = terminal.then(|| {
            let done = Arc::clone(&done);
            let label = label.to_string();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut shown = 0;
                let mut width = 0;
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let secs = start.elapsed().as_secs();
                    if secs > shown {
                        let line = match &count {
                            Some((unit, n)) => {
                                format!("{label}… {} {unit}, {secs}s", n.load(Ordering::Relaxed))
                            }
                            None => format!("{label}… {secs}s"),
                        };
                        width = width.max(line.chars().count());
                        eprint!("\r{line}");
                        shown = secs;
                    }
                }
                if shown > 0 {
                    eprint!("\r{:width$}\r", "");
                }
            })
        });
        Self { done, thread }
    }
}

/// A writer that counts the lines written through it, for a [`Ticker`] to show: exports
/// write one record per line.
pub(super) struct LineCounter<W> {
    inner: W,
    lines: Arc<AtomicU64>,
}

impl<W: Write> LineCounter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            lines: Arc::default(),
        }
    }

    pub(super) fn lines(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.lines)
    }
}

impl<W: Write> Write for LineCounter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let newlines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        self.lines.fetch_add(newlines as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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
        assert!(Ticker::start_on("x", None, false).thread.is_none());
        let t = Ticker::start_on("x", None, true);
        assert!(t.thread.is_some());
        let started = Instant::now();
        drop(t);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "drop waits one tick at most"
        );
    }

    #[test]
    fn a_line_counter_counts_what_reaches_the_writer() {
        let mut w = LineCounter::new(Vec::new());
        let lines = w.lines();
        w.write_all(b"{\"seq\":1}\n{\"seq\":2}\n{\"se")
            .expect("write to a Vec");
        assert_eq!(lines.load(Ordering::Relaxed), 2);
        w.write_all(b"q\":3}\n").expect("write to a Vec");
        assert_eq!(lines.load(Ordering::Relaxed), 3);
        assert_eq!(w.inner.len(), 30);
    }
}
