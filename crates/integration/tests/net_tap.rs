//! The TAP backend against the host kernel's network stack, inside a network namespace
//! this test creates for itself: a thread unshares its network namespace
//! (`unshare(CLONE_NEWNET)` acts on the calling thread only), creates a TAP device there,
//! gives its host side 10.0.3.1/24 and brings it up, and listens on 10.0.3.1 port 7 with a
//! plain `std::net` TCP echo server. The guest is our driver behind a vmmio `Net` device
//! on that TAP (loopback register window), with smoltcp at 10.0.3.2: it connects, sends
//! 1 MiB and checks it echoed back. Nothing touches the host's own namespace and no
//! address outside it is contacted. Without the privilege to create a namespace or a TAP
//! device (not root, no /dev/net/tun) the test says so and passes without running.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use vmmio_device::TransportVersion;
use vmmio_devices::net::{Net as NetDevice, Tap};
use vmmio_driver::net::Net;
use vmmio_driver::Transport;
use vmmio_integration::{window, Window};

const TOTAL: usize = 1 << 20;

// <linux/sockios.h>.
const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
const SIOCSIFADDR: libc::c_ulong = 0x8916;
const SIOCSIFNETMASK: libc::c_ulong = 0x891c;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

fn ifreq(name: &str) -> IfReq {
    let mut r = IfReq {
        name: [0; 16],
        data: [0; 24],
    };
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    r
}

fn sockaddr_in(r: &mut IfReq, addr: [u8; 4]) {
    r.data = [0; 24];
    r.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    r.data[4..8].copy_from_slice(&addr);
}

fn ioctl(fd: &OwnedFd, req: libc::c_ulong, r: &mut IfReq) -> io::Result<()> {
    // SAFETY: these SIOC* requests read and write one `struct ifreq` (40 bytes), which
    // `IfReq` is; it lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req as _, r as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `name` up with `addr`/24 (in the current thread's namespace).
fn configure(name: &str, addr: [u8; 4]) -> io::Result<()> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let s = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut r = ifreq(name);
    sockaddr_in(&mut r, addr);
    ioctl(&s, SIOCSIFADDR, &mut r)?;
    sockaddr_in(&mut r, [255, 255, 255, 0]);
    ioctl(&s, SIOCSIFNETMASK, &mut r)?;
    r.data = [0; 24];
    ioctl(&s, SIOCGIFFLAGS, &mut r)?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(&s, SIOCSIFFLAGS, &mut r)
}

/// Runs in a thread of its own namespace. `Err` with a reason: skipped.
fn in_namespace() -> Result<(), String> {
    // SAFETY: unshare(2) with a flag value; affects only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "cannot create a network namespace: {}",
            io::Error::last_os_error()
        ));
    }
    let tap = Tap::open("vmmiotap0").map_err(|e| format!("cannot create a TAP device: {e}"))?;
    let name = tap.name().to_owned();
    configure(&name, [10, 0, 3, 1]).expect("configure the TAP's host side");
    let listener = TcpListener::bind("10.0.3.1:7").expect("listen in the namespace");
    listener.set_nonblocking(true).unwrap();

    let dev = NetDevice::new(Box::new(tap));
    let handle = dev.handle();
    let Window { io, hal, .. } = window(TransportVersion::Modern, Box::new(dev));
    let mut net = Net::new(Transport::probe(io).unwrap().unwrap(), hal).unwrap();
    let mac = EthernetAddress(net.mac());
    let mut iface = Interface::new(
        Config::new(HardwareAddress::Ethernet(mac)),
        &mut net,
        smoltcp::time::Instant::from_millis(0),
    );
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::v4(10, 0, 3, 2), 24)).unwrap();
    });
    let mut sockets = SocketSet::new(Vec::new());
    let sock = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
        tcp::SocketBuffer::new(vec![0; 64 * 1024]),
    ));
    let cx = iface.context();
    sockets
        .get_mut::<tcp::Socket>(sock)
        .connect(cx, (IpAddress::v4(10, 0, 3, 1), 7), 40000)
        .unwrap();

    let start = Instant::now();
    let mut host: Option<TcpStream> = None;
    let mut pending: Vec<u8> = Vec::new();
    let (mut sent, mut got) = (0usize, 0usize);
    let mut buf = vec![0u8; 64 * 1024];
    let pattern = |i: usize| (i.wrapping_mul(131) >> 3) as u8;
    while got < TOTAL {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stuck at {got} of {TOTAL} bytes; device {:?}",
            handle.stats()
        );
        let now = smoltcp::time::Instant::from_micros(start.elapsed().as_micros() as i64);
        iface.poll(now, &mut net, &mut sockets);
        net.transport()
            .io_mut()
            .transport
            .poll_backends(Duration::from_millis(1))
            .unwrap();
        // The host side: a plain echo server on the kernel's TCP.
        if host.is_none() {
            if let Ok((s, _)) = listener.accept() {
                s.set_nonblocking(true).unwrap();
                host = Some(s);
            }
        }
        if let Some(h) = host.as_mut() {
            if pending.is_empty() {
                match h.read(&mut buf) {
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("host read: {e}"),
                }
            }
            match h.write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("host write: {e}"),
            }
        }
        // The guest side.
        let s = sockets.get_mut::<tcp::Socket>(sock);
        if s.can_send() && sent < TOTAL {
            sent += s
                .send(|room| {
                    let n = room.len().min(TOTAL - sent);
                    for (k, b) in room[..n].iter_mut().enumerate() {
                        *b = pattern(sent + k);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if s.can_recv() {
            let n = s.recv_slice(&mut buf).unwrap();
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, pattern(got + k), "byte {}", got + k);
            }
            got += n;
        }
    }
    let stats = handle.stats();
    assert!(stats.rx_frames > 0 && stats.tx_frames > 0, "{stats:?}");
    eprintln!("tap echo: {got} bytes; device {stats:?}");
    Ok(())
}

#[test]
fn tcp_echo_through_a_tap_in_a_private_namespace() {
    let r = std::thread::spawn(in_namespace).join().unwrap();
    if let Err(why) = r {
        eprintln!("SKIPPED tcp_echo_through_a_tap_in_a_private_namespace: {why}");
    }
}
