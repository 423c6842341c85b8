//! Linux's virtio_net driver against vmmio's net device: `vmmio boot --net stream:PATH`
//! with the other end of the link played by this test, a smoltcp TCP/IP stack at
//! 10.0.2.2 on the Unix socket PATH (QEMU's `-netdev stream` framing). The guest init's
//! `net` test (guest/init.c) brings eth0 up as 10.0.2.15/24 with ioctls, connects to port
//! 7, where this peer echoes, and checks 4 MiB of pattern echoed back; `netbw` sends
//! 16 MiB to port 9 (discarded) and receives 16 MiB from port 19, timed. Version 2 and
//! legacy windows, worker and sync execution; and the netbw figures against QEMU virt.

mod common;

use std::io;
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use vmmio_devices::net::{Backend, Sent, Stream, MAX_FRAME_LEN};
use vmmio_spec::net::NetHdr;

use common::{guest_dir, Run};

/// Bytes the init's netbw test moves each way (guest/init.c NET_BW_BYTES).
const BW_BYTES: usize = 16 << 20;

/// The options every run here has: `--no-stdin --timeout 240 --no-disk --no-rng`.
const FIXED: [&str; 5] = ["--no-stdin", "--timeout", "240", "--no-disk", "--no-rng"];

fn boot(args: &[&str]) -> Run {
    common::boot(&FIXED, args)
}

/// smoltcp's view of the link: frames through vmmio's own `-netdev stream` framing code.
struct Link {
    stream: Stream,
    frame: Vec<u8>,
    out: Vec<u8>,
}

struct Rx<'a>(&'a [u8]);

struct Tx<'a> {
    stream: &'a mut Stream,
    out: &'a mut Vec<u8>,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.out.clear();
        self.out.resize(len, 0);
        let r = f(self.out);
        // A full socket: wait for vmmio to read (bounded; a frame lost after that is
        // what TCP is for).
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(Sent::Busy) = self.stream.send(&NetHdr::default(), self.out) {
            if Instant::now() > deadline {
                break;
            }
            let _ = self.stream.flush();
            std::thread::sleep(Duration::from_micros(100));
        }
        r
    }
}

impl phy::Device for Link {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let _ = self.stream.flush();
        let (_, n) = self.stream.recv(&mut self.frame).ok()??;
        Some((
            Rx(&self.frame[..n]),
            Tx {
                stream: &mut self.stream,
                out: &mut self.out,
            },
        ))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx {
            stream: &mut self.stream,
            out: &mut self.out,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// What the peer saw.
#[derive(Debug, Default)]
struct PeerLog {
    echoed: usize,
    discarded: usize,
    generated: usize,
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        tcp::SocketBuffer::new(vec![0; 256 * 1024]),
    )
}

/// The host side of the link: accepts vmmio's connection on `listener`, then serves
/// TCP echo (7), discard (9) and a 16 MiB source (19) at 10.0.2.2 until `stop`.
fn peer(listener: UnixListener, stop: Arc<AtomicBool>) -> JoinHandle<io::Result<PeerLog>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true)?;
        let sock = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if stop.load(Ordering::SeqCst) {
                        return Ok(PeerLog::default());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        let mut link = Link {
            stream: Stream::new(sock)?,
            frame: vec![0; MAX_FRAME_LEN],
            out: Vec::new(),
        };
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x02]);
        let start = Instant::now();
        let now = || smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64);
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ethernet(mac)),
            &mut link,
            now(),
        );
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 2, 2), 24)).unwrap();
        });
        let mut sockets = SocketSet::new(Vec::new());
        let listen = |sockets: &mut SocketSet<'static>, port| -> SocketHandle {
            let mut s = tcp_socket();
            s.listen(port).unwrap();
            sockets.add(s)
        };
        let echo = listen(&mut sockets, 7);
        let discard = listen(&mut sockets, 9);
        let source = listen(&mut sockets, 19);
        let mut log = PeerLog::default();
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            let busy = iface.poll(now(), &mut link, &mut sockets);
            let s = sockets.get_mut::<tcp::Socket>(echo);
            if s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(buf.len());
                let n = s.recv_slice(&mut buf[..room]).unwrap();
                s.send_slice(&buf[..n]).unwrap();
                log.echoed += n;
            } else if s.state() == tcp::State::CloseWait {
                s.close();
            }
            let s = sockets.get_mut::<tcp::Socket>(discard);
            if s.can_recv() {
                log.discarded += s.recv_slice(&mut buf).unwrap();
            } else if s.state() == tcp::State::CloseWait {
                s.close();
            }
            let s = sockets.get_mut::<tcp::Socket>(source);
            if s.can_send() && log.generated < BW_BYTES {
                let n = (BW_BYTES - log.generated).min(buf.len());
                log.generated += s.send_slice(&buf[..n]).unwrap();
                if log.generated == BW_BYTES {
                    s.close();
                }
            }
            if busy == smoltcp::iface::PollResult::None {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(log)
    })
}

fn net_test(tests: &str, extra: &[&str]) -> (Run, PeerLog) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("link.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = peer(listener, stop.clone());
    let cmdline =
        format!("console=ttyS0 earlycon=sbi panic=-1 vmmio.tests={tests} vmmio.timeout=200");
    let net = format!("stream:{}", path.display());
    let mut args = vec![
        "--net",
        &net,
        "--net-mac",
        "52:54:00:12:34:56",
        "--cmdline",
        &cmdline,
    ];
    args.extend_from_slice(extra);
    let run = boot(&args);
    stop.store(true, Ordering::SeqCst);
    let log = peer.join().unwrap().unwrap();
    (run, log)
}

fn echo_test(extra: &[&str]) {
    let (run, log) = net_test("net", extra);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: net OK echoed=4194304");
    run.assert_has("vmmio-init: summary ok=1 fail=0");
    assert_eq!(log.echoed, 4 << 20, "the peer echoed 4 MiB");
}

#[test]
fn linux_net_version2() {
    echo_test(&[]);
}

#[test]
fn linux_net_legacy() {
    echo_test(&["--legacy"]);
}

#[test]
fn linux_net_sync_execution() {
    echo_test(&["--exec", "sync"]);
}

/// The `netbw` figures (`tx MB/s=A rx MB/s=B`) of a run's output.
fn netbw_rates(out: &str) -> Option<(f64, f64)> {
    let line = out.lines().find(|l| l.contains("netbw OK"))?;
    let num = |key: &str| -> Option<f64> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split_whitespace().next()?.parse().ok()
    };
    Some((num("tx MB/s=")?, num("rx MB/s=")?))
}

/// The same kernel, initramfs, init test and smoltcp peer on QEMU's `virt` board (TCG),
/// its `virtio-net-device` on `-netdev stream` to the peer's socket.
fn qemu_virt_netbw() -> (Run, PeerLog) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("link.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let peer = peer(listener, stop.clone());
    let guest = guest_dir();
    let start = Instant::now();
    let out = Command::new("timeout")
        .arg("240")
        .arg("qemu-system-riscv64")
        .args([
            "-M",
            "virt",
            "-cpu",
            "rv64",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-bios", "default", "-kernel"])
        .arg(guest.join("Image"))
        .arg("-initrd")
        .arg(guest.join("initramfs.cpio"))
        .args([
            "-append",
            "console=ttyS0 panic=-1 vmmio.tests=netbw vmmio.timeout=200",
        ])
        .arg("-netdev")
        .arg(format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            path.display()
        ))
        .args([
            "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-system-riscv64 (scripts/install-deps.sh installs it)");
    let secs = start.elapsed().as_secs_f64();
    eprintln!("qemu virt netbw: {secs:.2} s");
    stop.store(true, Ordering::SeqCst);
    let log = peer.join().unwrap().unwrap();
    let run = Run::new(&out, secs);
    (run, log)
}

/// In-guest TCP throughput both ways, the vmmio machine and QEMU's `virt` with the same
/// kernel, initramfs and stream peer, in the same run; the figures and their ratio are
/// printed (no timing assertion). Each side also moves 16 MiB each way, checked for
/// length.
#[test]
fn linux_net_throughput_against_qemu_virt() {
    let (run, log) = net_test("netbw", &[]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: netbw OK bytes=16777216");
    assert_eq!(log.discarded, BW_BYTES);
    assert_eq!(log.generated, BW_BYTES);
    let ours = netbw_rates(&run.stdout).expect("netbw figures");

    let (qrun, qlog) = qemu_virt_netbw();
    assert!(
        qrun.stdout.contains("vmmio-init: netbw OK bytes=16777216"),
        "QEMU virt: {}",
        qrun.dump()
    );
    assert_eq!(qlog.discarded, BW_BYTES);
    let theirs = netbw_rates(&qrun.stdout).expect("QEMU netbw figures");
    eprintln!(
        "in-guest TCP, MB/s: vmmio guest->host {:.2} host->guest {:.2}; QEMU virt (TCG) \
         guest->host {:.2} host->guest {:.2}; ratio {:.2}x / {:.2}x",
        ours.0,
        ours.1,
        theirs.0,
        theirs.1,
        ours.0 / theirs.0,
        ours.1 / theirs.1
    );
}
