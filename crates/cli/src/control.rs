//! Live changes while the guest runs: the `--api-sock` control socket and `SIGWINCH`.
//!
//! The control socket is a Unix stream socket taking one JSON request per line and
//! answering each with one JSON line:
//!
//! - `{"resize_disk": {"index": N}}`: disk N (in `--disk` order; 0 is the guest's
//!   `/dev/vda`) takes the current length of its image file as its capacity (after the
//!   host grew or shrank the file). Answer `{"ok": {"capacity": SECTORS}}`.
//! - `{"resize_console": {"cols": C, "rows": R}}`: the console device's size. Answer
//!   `{"ok": {}}`.
//!
//! Anything else gets `{"error": "TEXT"}` and the connection stays open. Changes go through
//! the devices' config handles (`BlockConfigHandle`, `ConsoleConfigHandle`): the guest
//! gets a configuration change interrupt and a new `ConfigGeneration`. Clients are served
//! one at a time; a line longer than [`MAX_LINE`] bytes closes the connection.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use vmmio_devices::{BlockConfigHandle, ConsoleConfigHandle};

/// Longest request line the control socket reads, in bytes.
pub const MAX_LINE: u64 = 64 * 1024;

/// A disk the control socket can resize: its config handle and its image file (an open
/// descriptor, so an unlinked scratch image works too).
pub struct DiskControl {
    pub handle: BlockConfigHandle,
    pub file: File,
}

/// What live requests can reach.
#[derive(Default)]
pub struct Controls {
    pub disks: Vec<DiskControl>,
    pub console: Option<ConsoleConfigHandle>,
    /// The engine each disk runs (for `--stats`), in `disks` order.
    pub engines: Vec<vmmio_devices::IoEngine>,
}

/// One request line.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    ResizeDisk { index: usize },
    ResizeConsole { cols: u16, rows: u16 },
}

impl Controls {
    /// Parses and carries out one request line; returns the answer.
    pub fn handle_line(&self, line: &str) -> Value {
        match serde_json::from_str::<Request>(line) {
            Ok(request) => match self.apply(&request) {
                Ok(ok) => json!({ "ok": ok }),
                Err(e) => json!({ "error": e }),
            },
            Err(e) => json!({ "error": format!("bad request: {e}") }),
        }
    }

    fn apply(&self, request: &Request) -> Result<Value, String> {
        match *request {
            Request::ResizeDisk { index } => {
                let disk = self
                    .disks
                    .get(index)
                    .ok_or_else(|| format!("no disk {index} ({} attached)", self.disks.len()))?;
                let len = disk
                    .file
                    .metadata()
                    .map_err(|e| format!("cannot stat disk {index}'s image: {e}"))?
                    .len();
                disk.handle.set_len(len).map_err(|e| e.to_string())?;
                log::info!("disk {index}: capacity {} sectors", disk.handle.capacity());
                Ok(json!({ "capacity": disk.handle.capacity() }))
            }
            Request::ResizeConsole { cols, rows } => {
                let console = self.console.as_ref().ok_or("no console device attached")?;
                console.set_size(cols, rows);
                Ok(json!({}))
            }
        }
    }
}

/// A bound control socket; its file is removed when this is dropped.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` and serves it on a thread for the rest of the
/// process.
///
/// # Errors
/// `bind(2)` failed (e.g. the path exists), or the thread could not start.
pub fn serve_api_socket(path: &Path, controls: Arc<Controls>) -> io::Result<ApiSocket> {
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("vmmio-api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = serve_client(stream, &controls) {
                            log::warn!("api socket client: {e}");
                        }
                    }
                    Err(e) => log::warn!("api socket accept: {e}"),
                }
            }
        })?;
    Ok(ApiSocket {
        path: path.to_path_buf(),
    })
}

/// Answers the request lines of one client until it closes the connection.
fn serve_client(stream: UnixStream, controls: &Controls) -> io::Result<()> {
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.by_ref().take(MAX_LINE).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        if !line.ends_with('\n') && n as u64 >= MAX_LINE {
            writeln!(out, "{}", json!({ "error": "request line too long" }))?;
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let answer = controls.handle_line(line.trim());
        writeln!(out, "{answer}")?;
    }
}

/// The size `(cols, rows)` of the terminal on `fd`, if it is one.
pub fn terminal_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `struct winsize` through the pointer, which points to
    // a live, writable `libc::winsize` for the duration of the call; a bad fd only makes
    // the call fail.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// The host's terminal: stdin if it is one, else stdout.
pub fn host_terminal() -> Option<RawFd> {
    [io::stdin().as_raw_fd(), io::stdout().as_raw_fd()]
        .into_iter()
        .find(|&fd| terminal_size(fd).is_some())
}

/// Gives the console the size of the terminal on `fd` now and after every `SIGWINCH`
/// (a thread waits for the signal for the rest of the process).
///
/// # Errors
/// Registering the signal handler or starting the thread failed.
pub fn follow_terminal_size(fd: RawFd, console: ConsoleConfigHandle) -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGWINCH])?;
    if let Some((cols, rows)) = terminal_size(fd) {
        console.set_size(cols, rows);
    }
    std::thread::Builder::new()
        .name("vmmio-winch".into())
        .spawn(move || {
            for _ in signals.forever() {
                if let Some((cols, rows)) = terminal_size(fd) {
                    log::debug!("terminal resized to {cols}x{rows}");
                    console.set_size(cols, rows);
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use vm_memory::GuestMemoryMmap;
    use vmmio_devices::{Block, BlockOptions, Console, MemoryBackend};

    fn disk_controls(file: File) -> (Controls, Block<GuestMemoryMmap, MemoryBackend>) {
        let block = Block::with_backend(MemoryBackend::new(4096), BlockOptions::default())
            .expect("block device");
        let (console, _) = Console::<GuestMemoryMmap>::capture();
        let controls = Controls {
            disks: vec![DiskControl {
                handle: block.config_handle(),
                file,
            }],
            console: Some(console.config_handle()),
            engines: Vec::new(),
        };
        (controls, block)
    }

    #[test]
    fn resize_disk_takes_the_image_files_new_length() {
        let file = tempfile::tempfile().expect("temp file");
        file.set_len(8192).expect("grow");
        let (controls, block) = disk_controls(file.try_clone().expect("dup"));
        assert_eq!(block.capacity(), 8);
        let answer = controls.handle_line(r#"{"resize_disk": {"index": 0}}"#);
        assert_eq!(answer, json!({"ok": {"capacity": 16}}));
        assert_eq!(block.capacity(), 16);
        file.set_len(1024).expect("shrink");
        controls.handle_line(r#"{"resize_disk": {"index": 0}}"#);
        assert_eq!(block.capacity(), 2);
    }

    #[test]
    fn bad_requests_get_an_error_answer() {
        let (controls, _block) = disk_controls(tempfile::tempfile().expect("temp file"));
        for line in [
            r#"{"resize_disk": {"index": 1}}"#,
            r#"{"resize_disk": {}}"#,
            r#"{"resize_disk": {"index": 0, "extra": 1}}"#,
            r#"{"reboot": {}}"#,
            r#"{"resize_console": {"cols": 70000, "rows": 1}}"#,
            "not json",
        ] {
            let answer = controls.handle_line(line);
            assert!(answer.get("error").is_some(), "{line}: {answer}");
        }
    }

    #[test]
    fn the_socket_answers_one_line_per_request() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("api.sock");
        let file = tempfile::tempfile().expect("temp file");
        file.set_len(4096 * 4).expect("grow");
        let (controls, block) = disk_controls(file);
        let console = controls.console.clone().expect("console");
        let socket = serve_api_socket(&path, Arc::new(controls)).expect("serve");
        let mut client = UnixStream::connect(&path).expect("connect");
        client
            .write_all(
                b"{\"resize_disk\": {\"index\": 0}}\n\n{\"resize_console\": {\"cols\": 100, \"rows\": 40}}\nnope\n",
            )
            .expect("send");
        let mut lines = BufReader::new(client.try_clone().expect("dup")).lines();
        let mut next = || -> Value {
            serde_json::from_str(&lines.next().expect("a line").expect("read")).expect("json")
        };
        assert_eq!(next(), json!({"ok": {"capacity": 32}}));
        assert_eq!(next(), json!({"ok": {}}));
        assert!(next().get("error").is_some());
        assert_eq!(block.capacity(), 32);
        assert_eq!(console.size(), (100, 40));
        drop(socket);
        assert!(!path.exists(), "the socket file is removed");
    }

    /// A pseudo-terminal pair `(master, slave)`.
    fn pty() -> (File, File) {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two fds through the pointers, which point to live i32s;
        // name, termios and winsize may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", io::Error::last_os_error());
        // SAFETY: openpty succeeded: both fds are open and owned by nobody else.
        unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) }
    }

    fn set_terminal_size(fd: RawFd, cols: u16, rows: u16) {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one `struct winsize` from the pointer, which points to
        // a live `libc::winsize`.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", io::Error::last_os_error());
    }

    #[test]
    fn sigwinch_resizes_the_console() {
        let (master, slave) = pty();
        set_terminal_size(master.as_raw_fd(), 132, 43);
        let (console, _) = Console::<GuestMemoryMmap>::capture();
        let handle = console.config_handle();
        follow_terminal_size(slave.as_raw_fd(), handle.clone()).expect("follow");
        assert_eq!(handle.size(), (132, 43), "the size at start");
        set_terminal_size(master.as_raw_fd(), 90, 30);
        // SAFETY: raise has no memory preconditions; SIGWINCH is handled by signal-hook.
        unsafe { libc::raise(libc::SIGWINCH) };
        let start = Instant::now();
        while handle.size() != (90, 30) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(handle.size(), (90, 30), "the size after SIGWINCH");
        assert_eq!(terminal_size(-1), None);
    }
}
