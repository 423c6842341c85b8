//! Linux's virtio-vsock transport (AF_VSOCK in the default guest) against vmmio's vsock
//! device, whose host side is Unix sockets in Firecracker's hybrid convention: `vmmio boot
//! --vsock PATH` with host programs played by this test. The guest init's `vsock` test
//! (guest/init.c) (a) connects to host port 1234 (this test listens on `PATH_1234` and
//! echoes) and checks 1 MiB echoed back; (b) listens on guest port 5000, which this test
//! reaches through `PATH` with `CONNECT 5000\n`, a line each way; (c) closes cleanly both
//! times. Version 2 and legacy windows, worker and sync execution.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::Run;

/// The options every run here has: `--no-stdin --timeout 240 --no-disk --no-rng`.
const FIXED: [&str; 5] = ["--no-stdin", "--timeout", "240", "--no-disk", "--no-rng"];

fn boot(args: &[&str]) -> Run {
    common::boot(&FIXED, args)
}

/// A host program on `PATH_port`: accepts one connection, echoes (or, with `echo`
/// false, discards) until end of stream, then closes; returns the bytes seen.
fn host_port(path: &Path, port: u32, echo: bool) -> JoinHandle<u64> {
    let l = UnixListener::bind(format!("{}_{port}", path.display())).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            if echo {
                s.write_all(&buf[..n]).unwrap();
            }
            total += n as u64;
        }
    })
}

/// The host program that connects to the guest's port 5000 through `PATH`: retries
/// (the guest may not listen yet: its RST ends the stream before `OK`) until `stop`;
/// then a line each way, shuts down its side and reads the guest's end of stream.
fn connect_guest(path: PathBuf, stop: Arc<AtomicBool>) -> JoinHandle<Result<String, String>> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(mut s) = UnixStream::connect(&path) else {
                continue;
            };
            s.set_read_timeout(Some(Duration::from_secs(240))).unwrap();
            s.write_all(b"CONNECT 5000\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut ok = String::new();
            if r.read_line(&mut ok).unwrap_or(0) == 0 {
                continue; // refused: the guest does not listen yet
            }
            if !ok.starts_with("OK ") {
                return Err(format!("handshake answer {ok:?}"));
            }
            s.write_all(b"hello guest\n").unwrap();
            let mut reply = String::new();
            r.read_line(&mut reply).map_err(|e| e.to_string())?;
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            if !rest.is_empty() {
                return Err(format!("{} bytes after the reply", rest.len()));
            }
            return Ok(format!("{}{}", ok, reply));
        }
        Err("the guest never accepted".into())
    })
}

fn vsock_test(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sock");
    let echo = host_port(&path, 1234, true);
    let stop = Arc::new(AtomicBool::new(false));
    let guest = connect_guest(path.clone(), stop.clone());
    let p = path.to_str().unwrap();
    let mut args = vec!["--vsock", p, "--cmdline"];
    args.push("console=ttyS0 earlycon=sbi panic=-1 vmmio.tests=vsock vmmio.timeout=200");
    args.extend_from_slice(extra);
    let run = boot(&args);
    stop.store(true, Ordering::SeqCst);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: vsock listening port=5000");
    run.assert_has("vmmio-init: vsock OK echoed=1048576");
    run.assert_has("vmmio-init: summary ok=1 fail=0");
    assert_eq!(echo.join().unwrap(), 1 << 20, "the host echoed 1 MiB");
    let lines = guest.join().unwrap().unwrap();
    assert!(lines.starts_with("OK "), "{lines}");
    assert!(lines.ends_with("\nhello host\n"), "{lines}");
    assert!(!path.exists(), "the device removes its socket at exit");
}

#[test]
fn linux_vsock_version2() {
    vsock_test(&[]);
}

#[test]
fn linux_vsock_legacy() {
    vsock_test(&["--legacy"]);
}

#[test]
fn linux_vsock_sync_execution() {
    vsock_test(&["--exec", "sync"]);
}

/// The init's `vsockbw`: 16 MiB guest -> host port 1235, where this test
/// discards them; the guest prints its rate (a figure, not asserted).
#[test]
fn linux_vsock_guest_to_host_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.sock");
    let sink = host_port(&path, 1235, false);
    let p = path.to_str().unwrap();
    let run = boot(&[
        "--vsock",
        p,
        "--cmdline",
        "console=ttyS0 earlycon=sbi panic=-1 vmmio.tests=vsockbw vmmio.timeout=200",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: vsockbw OK bytes=16777216");
    assert_eq!(sink.join().unwrap(), 16 << 20);
    if let Some(line) = run.stdout.lines().find(|l| l.contains("vsockbw OK")) {
        eprintln!("{line}");
    }
}
