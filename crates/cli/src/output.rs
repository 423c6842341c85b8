//! Output sinks of `vmmio boot`: a watcher for the guest init's FAIL lines on the main
//! console, and a line prefixer that keeps the virtio console apart from the UART on stdout.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Longest line kept for inspection or prefixing; longer lines are handled in pieces.
const MAX_LINE: usize = 4096;

/// Whether `line` is a result line of the vmmio init that reports a failure:
/// `vmmio-init: <test> FAIL ...` (see guest/README.md).
pub fn is_init_fail_line(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(rest) = line.strip_prefix(b"vmmio-init: ") else {
        return false;
    };
    rest.split(|&b| b == b' ')
        .skip(1)
        .take(1)
        .any(|word| word == b"FAIL")
}

/// Passes bytes through to `inner` unchanged and sets `fail_seen` when a complete line is
/// an init FAIL line ([`is_init_fail_line`]).
pub struct FailWatch<W> {
    inner: W,
    line: Vec<u8>,
    fail_seen: Arc<AtomicBool>,
}

impl<W: Write> FailWatch<W> {
    /// A watcher in front of `inner` that sets `fail_seen`.
    pub fn new(inner: W, fail_seen: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            line: Vec::new(),
            fail_seen,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                if is_init_fail_line(&self.line) {
                    self.fail_seen.store(true, Ordering::SeqCst);
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl<W: Write> Write for FailWatch<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(buf.get(..n).unwrap_or_default());
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes whole lines to `inner`, each preceded by `prefix`. A partial line is held until
/// its newline, until it reaches [`MAX_LINE`] bytes, or until the sink is dropped.
pub struct LinePrefixer<W: Write> {
    prefix: &'static str,
    inner: W,
    line: Vec<u8>,
}

impl<W: Write> LinePrefixer<W> {
    /// A prefixer writing to `inner`.
    pub fn new(prefix: &'static str, inner: W) -> Self {
        Self {
            prefix,
            inner,
            line: Vec::new(),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let mut out = Vec::with_capacity(self.prefix.len() + self.line.len() + 1);
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(&self.line);
        if out.last() != Some(&b'\n') {
            out.push(b'\n');
        }
        self.line.clear();
        self.inner.write_all(&out)?;
        self.inner.flush()
    }
}

impl<W: Write> Write for LinePrefixer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\r' {
                continue;
            }
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Partial lines stay until complete: flushing them would break the prefixing.
        self.inner.flush()
    }
}

impl<W: Write> Drop for LinePrefixer<W> {
    fn drop(&mut self) {
        let _ = self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_lines_are_recognised() {
        assert!(is_init_fail_line(
            b"vmmio-init: blk FAIL mismatch at byte 3"
        ));
        assert!(is_init_fail_line(b"vmmio-init: rng FAIL\r"));
        assert!(!is_init_fail_line(b"vmmio-init: blk OK bytes=1048576"));
        assert!(!is_init_fail_line(b"vmmio-init: summary ok=4 fail=0"));
        assert!(!is_init_fail_line(b"[ 1.0] something FAIL"));
    }

    #[test]
    fn fail_watch_sees_lines_split_across_writes() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut w = FailWatch::new(Vec::new(), flag.clone());
        w.write_all(b"vmmio-init: started\nvmmio-init: hv").unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        w.write_all(b"c FAIL open\n").unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert_eq!(w.inner, b"vmmio-init: started\nvmmio-init: hvc FAIL open\n");
    }

    #[test]
    fn prefixer_prefixes_whole_lines() {
        let mut out = Vec::new();
        {
            let mut p = LinePrefixer::new("> ", &mut out);
            p.write_all(b"a\r\nb").unwrap();
            p.write_all(b"c\nd").unwrap();
        }
        assert_eq!(out, b"> a\n> bc\n> d\n");
    }
}
