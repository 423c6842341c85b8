//! Network loopback: two vmmio-driver `Net` drivers, each against its own
//! vmmio-devices `Net` device, the two devices' `-netdev stream` backends
//! joined by a Unix socket pair. Two smoltcp stacks run TCP over that
//! link; every byte is checked end to end. Version 1 and 2 × EVENT_IDX ×
//! INDIRECT_DESC × MRG_RXBUF (with a 9000-byte MTU, so frames span
//! several receive buffers). The devices' sockets are polled with
//! `MmioTransport::poll_backends` (the synchronous embedder's hook).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use vmmio_device::TransportVersion;
use vmmio_devices::net::{Net as NetDevice, NetHandle, Stream};
use vmmio_driver::net::{Net, FEATURES};
use vmmio_driver::Transport;
use vmmio_integration::{window, GuestHal, Loopback, Window};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};
use vmmio_spec::net::F_MRG_RXBUF;

#[derive(Clone, Copy, Debug)]
struct Cfg {
    version: TransportVersion,
    event_idx: bool,
    indirect: bool,
    mrg: bool,
}

fn configs() -> Vec<Cfg> {
    let mut v = Vec::new();
    for version in [TransportVersion::Legacy, TransportVersion::Modern] {
        for event_idx in [false, true] {
            for indirect in [false, true] {
                for mrg in [false, true] {
                    v.push(Cfg {
                        version,
                        event_idx,
                        indirect,
                        mrg,
                    });
                }
            }
        }
    }
    v
}

/// One side: a driver over a window with a net device.
struct Side {
    net: Net<Loopback, GuestHal>,
    win_line: std::sync::Arc<vmmio_integration::Line>,
    seen_irqs: u32,
    handle: NetHandle,
    iface: Interface,
    sockets: SocketSet<'static>,
    tcp: SocketHandle,
}

impl Side {
    fn new(cfg: Cfg, sock: UnixStream, last: u8) -> Self {
        // With MRG_RXBUF a jumbo MTU makes every full-size frame span
        // several of the driver's 2 KiB receive buffers.
        let mtu = if cfg.mrg { 9000 } else { 1500 };
        let dev = NetDevice::new(Box::new(Stream::new(sock).unwrap()))
            .with_mac([0x02, 0, 0, 0, 0, last])
            .with_mtu(mtu);
        let handle = dev.handle();
        let Window { io, hal, line } = window(cfg.version, Box::new(dev));
        let mut t = Transport::probe(io).unwrap().unwrap();
        let mut mask = 0;
        if cfg.event_idx {
            mask |= bit(VIRTIO_F_EVENT_IDX);
        }
        if cfg.indirect {
            mask |= bit(VIRTIO_F_INDIRECT_DESC);
        }
        t.set_transport_features(mask);
        let wanted = if cfg.mrg {
            FEATURES
        } else {
            FEATURES & !bit(F_MRG_RXBUF)
        };
        let mut net = Net::with_features(t, hal, wanted).unwrap();
        assert_eq!(net.mrg_rxbuf(), cfg.mrg, "{cfg:?}");
        assert_eq!(net.mac(), [0x02, 0, 0, 0, 0, last]);
        assert!(net.link_up());
        assert_eq!(net.mtu(), usize::from(mtu));
        let t = net.transport();
        assert_eq!(t.has_feature(VIRTIO_F_EVENT_IDX), cfg.event_idx);
        assert_eq!(t.has_feature(VIRTIO_F_INDIRECT_DESC), cfg.indirect);

        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(net.mac())));
        config.random_seed = u64::from(last);
        let mut iface = Interface::new(config, &mut net, Instant::from_millis(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::v4(10, 0, 0, last), 24))
                .unwrap();
        });
        let sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        let mut sockets = SocketSet::new(Vec::new());
        let tcp = sockets.add(sock);
        Self {
            net,
            win_line: line,
            seen_irqs: 0,
            handle,
            iface,
            sockets,
            tcp,
        }
    }

    fn poll(&mut self, now: Instant) {
        // Acknowledge interrupts as a guest's handler would.
        let irqs = self
            .win_line
            .count
            .load(std::sync::atomic::Ordering::SeqCst);
        if irqs != self.seen_irqs {
            self.seen_irqs = irqs;
            self.net.handle_interrupt().unwrap();
        }
        self.iface.poll(now, &mut self.net, &mut self.sockets);
        // The device side: frames between the two stream backends.
        self.net
            .transport()
            .io_mut()
            .transport
            .poll_backends(Duration::ZERO)
            .unwrap();
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.tcp)
    }
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Sends `total` bytes from A (10.0.0.1) to B (10.0.0.2) over TCP and
/// checks each byte at B. Returns the two sides.
fn transfer(cfg: Cfg, total: u64) -> (Side, Side) {
    let (sa, sb) = UnixStream::pair().unwrap();
    let mut a = Side::new(cfg, sa, 1);
    let mut b = Side::new(cfg, sb, 2);
    b.socket().listen(5000).unwrap();
    let cx = a.iface.context();
    a.sockets
        .get_mut::<tcp::Socket>(a.tcp)
        .connect(cx, (IpAddress::v4(10, 0, 0, 2), 5000), 49152)
        .unwrap();
    let start = std::time::Instant::now();
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    // Bounded: at least one byte a round in practice; the bound only
    // stops a broken build from hanging CI.
    let mut rounds = 0u64;
    while recvd < total {
        rounds += 1;
        assert!(
            rounds < 50_000_000 && start.elapsed() < Duration::from_secs(600),
            "{cfg:?}: stuck at {recvd} of {total} bytes"
        );
        let now = Instant::from_micros(start.elapsed().as_micros() as i64);
        a.poll(now);
        b.poll(now);
        let s = a.socket();
        if s.can_send() && sent < total {
            let n = s
                .send(|room| {
                    let n = room.len().min((total - sent) as usize);
                    for (i, r) in room[..n].iter_mut().enumerate() {
                        *r = pattern(sent + i as u64);
                    }
                    (n, n)
                })
                .unwrap();
            sent += n as u64;
        }
        let s = b.socket();
        if s.can_recv() {
            let n = s.recv_slice(&mut buf).unwrap();
            for (i, &byte) in buf[..n].iter().enumerate() {
                let at = recvd + i as u64;
                assert_eq!(byte, pattern(at), "{cfg:?}: byte {at}");
            }
            recvd += n as u64;
        }
    }
    assert_eq!(sent, total);
    (a, b)
}

/// Bytes per combination: 64 MiB for the Version 2 combinations and the
/// Version 1 one with every feature; 4 MiB for the other Version 1 ones
/// (the same data path, to keep the test's run time small).
/// `VMMIO_NET_TEST_BYTES` replaces both (mutation runs use a debug build
/// and one MiB, so that each mutant's run takes seconds).
fn size(cfg: Cfg) -> u64 {
    if let Some(n) = std::env::var("VMMIO_NET_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if cfg.version == TransportVersion::Modern || (cfg.event_idx && cfg.indirect && cfg.mrg) {
        64 << 20
    } else {
        4 << 20
    }
}

#[test]
fn tcp_over_two_smoltcp_stacks_in_every_combination() {
    for cfg in configs() {
        let total = size(cfg);
        let (a, b) = transfer(cfg, total);
        let (da, db) = (a.handle.stats(), b.handle.stats());
        // Every frame A's driver queued went out of A's device and into
        // B's device; nothing dropped anywhere.
        assert_eq!(da.tx_dropped + db.tx_dropped, 0, "{cfg:?}");
        assert_eq!(da.rx_dropped + db.rx_dropped, 0, "{cfg:?}");
        assert!(da.tx_bytes > total, "{cfg:?}");
        assert_eq!(a.net.stats().rx_errors + b.net.stats().rx_errors, 0);
        assert_eq!(a.net.stats().tx_frames, da.tx_frames, "{cfg:?}");
    }
}

#[test]
fn link_state_reaches_the_driver_through_a_config_interrupt() {
    let cfg = Cfg {
        version: TransportVersion::Modern,
        event_idx: true,
        indirect: true,
        mrg: true,
    };
    let (sa, _sb) = UnixStream::pair().unwrap();
    let mut a = Side::new(cfg, sa, 1);
    // smoltcp counts the Ethernet header in the MTU it is given.
    let caps = smoltcp::phy::Device::capabilities(&a.net);
    assert_eq!(caps.max_transmission_unit, a.net.mtu() + 14);
    assert_eq!(caps.max_burst_size, Some(vmmio_driver::net::TX_BUFFERS));
    assert!(a.net.link_up());
    a.handle.set_link_up(false);
    let ev = a.net.handle_interrupt().unwrap();
    assert!(ev.config_changed);
    assert!(!a.net.link_up());
    a.handle.set_link_up(true);
    a.net.handle_interrupt().unwrap();
    assert!(a.net.link_up());
}

#[test]
fn raw_frames_cross_the_link_and_oversized_ones_are_refused() {
    for version in [TransportVersion::Legacy, TransportVersion::Modern] {
        let cfg = Cfg {
            version,
            event_idx: false,
            indirect: false,
            mrg: false,
        };
        let (sa, sb) = UnixStream::pair().unwrap();
        let mut a = Side::new(cfg, sa, 1);
        let mut b = Side::new(cfg, sb, 2);
        let frame: Vec<u8> = (0..1514u32).map(|i| i as u8).collect();
        a.net.transmit(&frame).unwrap();
        a.net.transmit(&frame[..60]).unwrap();
        assert!(matches!(
            a.net.transmit(&vec![0u8; 1519]),
            Err(vmmio_driver::Error::FrameTooLong {
                len: 1519,
                max: 1518
            })
        ));
        a.poll(Instant::from_millis(0));
        b.poll(Instant::from_millis(0));
        let got = b.net.receive(|f| f.to_vec()).unwrap();
        assert_eq!(got.as_deref(), Some(&frame[..]), "{version:?}");
        let got = b.net.receive(|f| f.to_vec()).unwrap();
        assert_eq!(got.as_deref(), Some(&frame[..60]));
        assert_eq!(b.net.receive(|f| f.len()).unwrap(), None);
    }
}
