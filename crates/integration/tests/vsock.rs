//! The vsock class driver (`vmmio_driver::vsock`) against the socket
//! device (`vmmio_devices::vsock`) in loopback, with the device's host
//! side on real Unix sockets: Version 1 and 2.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vmmio_device::TransportVersion;
use vmmio_devices::vsock::{Vsock as VsockDevice, VsockOptions as DeviceOptions};
use vmmio_driver::vsock::{ConnId, ConnState, Vsock, VsockOptions, F_NO_IMPLIED_STREAM, HOST_CID};
use vmmio_driver::Transport;
use vmmio_integration::{window, GuestHal, Loopback, Mem};

type Driver = Vsock<Loopback, GuestHal>;

const CID: u64 = 42;

fn boot(version: TransportVersion, path: &Path, dev: DeviceOptions, drv: VsockOptions) -> Driver {
    let dev = VsockDevice::<Mem>::with_options(CID, path, dev).unwrap();
    let w = window(version, Box::new(dev));
    let t = Transport::probe(w.io).unwrap().unwrap();
    let mut vs = Vsock::with_options(t, w.hal, drv).unwrap();
    assert_eq!(vs.guest_cid(), CID);
    assert!(vs.transport().has_feature(F_NO_IMPLIED_STREAM));
    vs
}

/// One round: the driver moves packets, the device services its host
/// sockets (what a platform's poll loop does); `wait` lets the host
/// threads run when nothing moved.
fn pump(vs: &mut Driver, wait: bool) {
    vs.poll().unwrap();
    let timeout = if wait {
        Duration::from_millis(2)
    } else {
        Duration::ZERO
    };
    vs.transport()
        .io_mut()
        .transport
        .poll_backends(timeout)
        .unwrap();
    vs.poll().unwrap();
}

/// Pumps until `done` holds; fails after 20 000 rounds without it.
fn pump_until(vs: &mut Driver, mut done: impl FnMut(&mut Driver) -> bool) {
    for _ in 0..20_000 {
        if done(vs) {
            return;
        }
        pump(vs, true);
    }
    panic!("condition never held");
}

fn versions() -> [TransportVersion; 2] {
    [TransportVersion::Legacy, TransportVersion::Modern]
}

fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("v.sock")
}

fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9e37_79b9) >> 13) as u8 ^ (offset >> 20) as u8
}

fn connect(vs: &mut Driver, l: &UnixListener, port: u32) -> (ConnId, UnixStream) {
    let id = vs.connect(HOST_CID, port).unwrap();
    assert_eq!(vs.state(id), Some(ConnState::Connecting));
    pump_until(vs, |vs| vs.state(id) != Some(ConnState::Connecting));
    assert_eq!(vs.state(id), Some(ConnState::Connected));
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (id, s)
}

/// 100 connections opened, used and closed cleanly one after the other,
/// then 100 more from the host side (`CONNECT <port>\n` on PATH).
#[test]
fn hundred_connections_open_and_close() {
    for version in versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock(&dir);
        let mut vs = boot(
            version,
            &path,
            DeviceOptions::default(),
            VsockOptions::default(),
        );
        let l = UnixListener::bind(format!("{}_1234", path.display())).unwrap();
        for i in 0..100u32 {
            let (id, mut s) = connect(&mut vs, &l, 1234);
            let msg = format!("hello {i}");
            assert_eq!(vs.send(id, msg.as_bytes()).unwrap(), msg.len());
            let mut b = vec![0u8; msg.len()];
            s.read_exact(&mut b).unwrap();
            assert_eq!(b, msg.as_bytes());
            s.write_all(b"back").unwrap();
            let mut got = [0u8; 4];
            let mut n = 0;
            pump_until(&mut vs, |vs| {
                n += vs.recv(id, &mut got[n..]).unwrap();
                n == 4
            });
            assert_eq!(&got, b"back");
            vs.close(id).unwrap();
            pump_until(&mut vs, |vs| vs.state(id).is_none());
            assert_eq!(s.read(&mut got).unwrap(), 0, "host sees end of file");
        }
        vs.listen(5000).unwrap();
        for i in 0..100u32 {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"CONNECT 5000\n").unwrap();
            let mut id = None;
            pump_until(&mut vs, |vs| {
                id = vs.accept(5000);
                id.is_some()
            });
            let id = id.unwrap();
            assert_eq!(id.peer_cid, HOST_CID);
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            // The device writes OK once the guest's RESPONSE arrived.
            pump_until(&mut vs, |_| true);
            while line.is_empty() {
                pump(&mut vs, true);
                r.read_line(&mut line).unwrap();
            }
            assert_eq!(line, format!("OK {}\n", id.peer_port));
            s.write_all(format!("host {i}").as_bytes()).unwrap();
            let mut got = vec![0u8; format!("host {i}").len()];
            let mut n = 0;
            pump_until(&mut vs, |vs| {
                n += vs.recv(id, &mut got[n..]).unwrap();
                n == got.len()
            });
            assert_eq!(got, format!("host {i}").as_bytes());
            // The host closes: the guest reads end of file, then closes.
            drop(r);
            drop(s);
            pump_until(&mut vs, |vs| vs.is_eof(id));
            vs.close(id).unwrap();
            pump_until(&mut vs, |vs| vs.state(id).is_none());
        }
        assert_eq!(
            vs.transport()
                .io_mut()
                .transport
                .device()
                .backend_fds()
                .len(),
            1,
            "only the listener is left"
        );
    }
}

/// 64 MiB through one connection and echoed back by the host, with a
/// 16 KiB window on the device side and 8 KiB on the driver side: the
/// sender runs out of credit again and again, so CREDIT_REQUEST and
/// CREDIT_UPDATE carry the transfer. Checked byte for byte both ways.
/// `VMMIO_VSOCK_TEST_BYTES` replaces the 64 MiB (mutation runs use a
/// debug build and one MiB, so that each mutant's run takes seconds).
#[test]
fn sixty_four_mib_through_a_small_credit_window() {
    let total: u64 = std::env::var("VMMIO_VSOCK_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    for version in versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock(&dir);
        let dev = DeviceOptions {
            buf_alloc: 16 * 1024,
            ..DeviceOptions::default()
        };
        let drv = VsockOptions {
            buf_alloc: 8 * 1024,
            ..VsockOptions::default()
        };
        let mut vs = boot(version, &path, dev, drv);
        let l = UnixListener::bind(format!("{}_1234", path.display())).unwrap();
        let (id, s) = connect(&mut vs, &l, 1234);
        let echo = std::thread::spawn(move || {
            let mut s = s;
            let mut buf = vec![0u8; 64 * 1024];
            let mut off = 0u64;
            while off < total {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "early end of file at {off}");
                for (k, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(b, pattern(off + k as u64), "host byte {}", off + k as u64);
                }
                s.write_all(&buf[..n]).unwrap();
                off += n as u64;
            }
        });
        let (mut sent, mut got) = (0u64, 0u64);
        let mut out = vec![0u8; 16 * 1024];
        let mut inb = vec![0u8; 16 * 1024];
        while got < total {
            let mut moved = false;
            if sent < total {
                let n = (total - sent).min(out.len() as u64) as usize;
                for (k, b) in out[..n].iter_mut().enumerate() {
                    *b = pattern(sent + k as u64);
                }
                let m = vs.send(id, &out[..n]).unwrap();
                sent += m as u64;
                moved |= m > 0;
            }
            let r = vs.recv(id, &mut inb).unwrap();
            for (k, &b) in inb[..r].iter().enumerate() {
                assert_eq!(b, pattern(got + k as u64), "guest byte {}", got + k as u64);
            }
            got += r as u64;
            moved |= r > 0;
            pump(&mut vs, !moved);
        }
        echo.join().unwrap();
        let st = vs.stats();
        assert!(st.credit_requests_sent > 0, "{st:?}");
        assert!(st.credit_updates_received > 0, "{st:?}");
        assert!(st.credit_updates_sent > 0, "{st:?}");
        assert_eq!(st.malformed, 0);
        vs.close(id).unwrap();
        pump_until(&mut vs, |vs| vs.state(id).is_none());
    }
}

/// A guest connecting to a host port nobody listens on is refused (RST):
/// the connection disappears.
#[test]
fn connect_to_a_closed_host_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = sock(&dir);
    let mut vs = boot(
        TransportVersion::Modern,
        &path,
        DeviceOptions::default(),
        VsockOptions::default(),
    );
    let id = vs.connect(HOST_CID, 9).unwrap();
    pump_until(&mut vs, |vs| vs.state(id).is_none());
}
