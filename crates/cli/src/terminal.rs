//! `vmmio boot --shell`: the host terminal as the guest's serial console.
//!
//! The terminal goes into raw mode (no line editing, echo or signals on the host side), so
//! every key, Ctrl-C and the arrow keys included, reaches the guest's tty, which does its
//! own editing. The escape key works as in QEMU: Ctrl-A then `x` ends the machine, Ctrl-A
//! twice sends one Ctrl-A, Ctrl-A then `h` prints the keys. The terminal's settings are
//! restored on every way out: a normal return, a panic (hook), and SIGTERM / SIGHUP /
//! SIGINT / SIGQUIT (which also stop the machine, so the process ends through the normal
//! path). Without a terminal on stdin nothing is changed and bytes pass through.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, Once, PoisonError};

use vmmio_machine::{ConsoleInput, StopHandle};

/// The escape key: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// The help line Ctrl-A h prints (to stderr, CR LF since the terminal is raw).
const HELP: &str =
    "\r\nvmmio: Ctrl-A x ends the machine, Ctrl-A Ctrl-A sends Ctrl-A, Ctrl-A h prints this\r\n";

/// The terminal's settings before raw mode, restored at most once.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);
/// The signal that stopped the machine, 0 when none did.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Raw mode on the terminal on stdin while this lives.
#[derive(Debug)]
pub struct RawMode(());

impl RawMode {
    /// Puts the terminal on stdin into raw mode; `None` (and nothing changed) when stdin is
    /// not a terminal.
    ///
    /// # Errors
    /// `tcgetattr` / `tcsetattr` failed on a terminal.
    pub fn enable() -> io::Result<Option<RawMode>> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: a zeroed termios is a valid out-parameter, filled by tcgetattr.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `saved` is writable.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        *SAVED.lock().unwrap_or_else(PoisonError::into_inner) = Some((fd, saved));
        install_panic_hook();
        // SAFETY: `fd` is open and `raw` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            let e = io::Error::last_os_error();
            restore();
            return Err(e);
        }
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Restores the terminal's saved settings, if raw mode is on; idempotent.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some((fd, termios)) = saved {
        // SAFETY: `fd` is stdin (never closed) and `termios` came from tcgetattr.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) };
    }
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Stops the machine on SIGTERM, SIGHUP, SIGINT and SIGQUIT, restoring the terminal first.
///
/// # Errors
/// Registering the handlers or starting their thread failed.
pub fn stop_on_signals(stop: StopHandle) -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT, SIGQUIT])?;
    std::thread::Builder::new()
        .name("vmmio-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                restore();
                STOP_SIGNAL.store(sig, Ordering::SeqCst);
                stop.stop();
            }
        })?;
    Ok(())
}

/// The signal that stopped the machine, if one did.
pub fn stop_signal() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The escape-key state machine over the bytes typed.
#[derive(Debug, Default)]
pub struct Escape {
    /// The previous byte was the escape key.
    pending: bool,
}

/// What a chunk of input asks for besides the bytes for the guest.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Nothing: keep going.
    None,
    /// Ctrl-A h.
    Help,
    /// Ctrl-A x: end the machine (bytes after it are dropped).
    Quit,
}

impl Escape {
    /// Appends to `out` what of `input` goes to the guest, and says what else was asked.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Command {
        let mut command = Command::None;
        for &b in input {
            if !self.pending {
                if b == ESCAPE {
                    self.pending = true;
                } else {
                    out.push(b);
                }
                continue;
            }
            self.pending = false;
            match b {
                b'x' | b'X' => return Command::Quit,
                b'h' | b'H' | b'?' => command = Command::Help,
                ESCAPE => out.push(ESCAPE),
                // Not a command: both keys go to the guest.
                _ => out.extend_from_slice(&[ESCAPE, b]),
            }
        }
        command
    }
}

/// Feeds stdin to the guest console through the escape-key filter, on a thread; Ctrl-A x
/// stops the machine. Ends at EOF on stdin (the guest keeps running).
///
/// # Errors
/// The thread could not be started.
pub fn spawn_console_reader(input: ConsoleInput, stop: StopHandle) -> io::Result<()> {
    std::thread::Builder::new()
        .name("vmmio-stdin".into())
        .spawn(move || {
            let mut stdin = io::stdin();
            let mut buf = [0u8; 256];
            let mut escape = Escape::default();
            let mut out = Vec::with_capacity(buf.len() + 1);
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::debug!("stdin reader stops: {e}");
                        break;
                    }
                };
                out.clear();
                let command = escape.feed(buf.get(..n).unwrap_or_default(), &mut out);
                input.push(&out);
                match command {
                    Command::Quit => {
                        restore();
                        eprintln!("\r\nvmmio: Ctrl-A x: ending the machine");
                        stop.stop();
                        break;
                    }
                    Command::Help => {
                        let _ = io::stderr().write_all(HELP.as_bytes());
                    }
                    Command::None => {}
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(e: &mut Escape, input: &[u8]) -> (Vec<u8>, Command) {
        let mut out = Vec::new();
        let c = e.feed(input, &mut out);
        (out, c)
    }

    #[test]
    fn plain_bytes_and_ctrl_c_pass_through() {
        let mut e = Escape::default();
        assert_eq!(
            feed(&mut e, b"ls -l\r\x03\x1b[A"),
            (b"ls -l\r\x03\x1b[A".to_vec(), Command::None)
        );
    }

    #[test]
    fn ctrl_a_x_quits_even_across_reads() {
        let mut e = Escape::default();
        assert_eq!(feed(&mut e, b"ab\x01x cd"), (b"ab".to_vec(), Command::Quit));
        let mut e = Escape::default();
        assert_eq!(feed(&mut e, b"ab\x01"), (b"ab".to_vec(), Command::None));
        assert_eq!(feed(&mut e, b"X"), (Vec::new(), Command::Quit));
    }

    #[test]
    fn ctrl_a_twice_sends_one_and_other_keys_send_both() {
        let mut e = Escape::default();
        assert_eq!(
            feed(&mut e, b"\x01\x01x"),
            (b"\x01x".to_vec(), Command::None)
        );
        assert_eq!(feed(&mut e, b"\x01c"), (b"\x01c".to_vec(), Command::None));
        assert_eq!(feed(&mut e, b"\x01h"), (Vec::new(), Command::Help));
        assert_eq!(feed(&mut e, b"x"), (b"x".to_vec(), Command::None));
    }
}
