//! The driver (`vmmio-driver`) against the real device backends
//! (`vmmio-devices`) through a loopback window: what the driver writes to a
//! `Block` over a file is in that file byte for byte, the entropy device
//! returns varying bytes, and console bytes cross in both directions. Every
//! test runs in Version 1 and Version 2, EVENT_IDX on and off, indirect
//! descriptors on and off.

use std::io::{Read, Seek, SeekFrom, Write};

use vmmio_device::{ExecMode, TransportVersion};
use vmmio_devices::{BlockOptions, IoEngine};
use vmmio_driver::blk::Block;
use vmmio_driver::console::Console;
use vmmio_driver::rng::Entropy;
use vmmio_driver::{Transport, Version};
use vmmio_integration::{window_in, Loopback, Mem, Window};
use vmmio_spec::features::{bit, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC};

#[derive(Clone, Copy, Debug)]
struct Cfg {
    exec: ExecMode,
    version: TransportVersion,
    event_idx: bool,
    indirect: bool,
}

/// The block engines each block test runs over.
const ENGINES: [IoEngine; 2] = [IoEngine::Sync, IoEngine::IoUring];

/// A block device over `path` with `engine`, behind a window run as `cfg`
/// says; a synchronous window delivers backend events while the driver
/// waits (the io_uring engine completes through them).
fn block_window(cfg: Cfg, engine: IoEngine, path: &std::path::Path, read_only: bool) -> Window {
    let dev = vmmio_devices::Block::<Mem, _>::from_path_with_options(
        path,
        BlockOptions {
            read_only,
            engine,
            ..BlockOptions::default()
        },
    )
    .unwrap();
    assert_eq!(dev.engine(), engine);
    let mut w = window_in(cfg.exec, cfg.version, Box::new(dev));
    w.io.poll_backends = true;
    w
}

/// Every ring configuration in both execution modes.
fn configs() -> impl Iterator<Item = Cfg> {
    [ExecMode::Sync, ExecMode::Worker]
        .into_iter()
        .flat_map(|exec| {
            [TransportVersion::Legacy, TransportVersion::Modern]
                .into_iter()
                .map(move |version| (exec, version))
        })
        .flat_map(|(exec, version)| {
            [(false, false), (false, true), (true, false), (true, true)]
                .into_iter()
                .map(move |(event_idx, indirect)| Cfg {
                    exec,
                    version,
                    event_idx,
                    indirect,
                })
        })
}

/// Probes the window and restricts the driver to `cfg`'s ring features,
/// then checks after initialisation that exactly those were negotiated.
fn probe(cfg: Cfg, io: Loopback) -> Transport<Loopback> {
    let mut t = Transport::probe(io).expect("probe").expect("a device");
    let mut mask = 0;
    if cfg.event_idx {
        mask |= bit(VIRTIO_F_EVENT_IDX);
    }
    if cfg.indirect {
        mask |= bit(VIRTIO_F_INDIRECT_DESC);
    }
    t.set_transport_features(mask);
    t
}

fn check(cfg: Cfg, t: &Transport<Loopback>) {
    let version = match cfg.version {
        TransportVersion::Legacy => Version::Legacy,
        TransportVersion::Modern => Version::Modern,
    };
    assert_eq!(t.version(), version, "{cfg:?}");
    assert_eq!(t.has_feature(VIRTIO_F_EVENT_IDX), cfg.event_idx, "{cfg:?}");
    assert_eq!(
        t.has_feature(VIRTIO_F_INDIRECT_DESC),
        cfg.indirect,
        "{cfg:?}"
    );
}

/// Deterministic bytes that differ per seed and per position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn block_writes_land_in_the_backing_file_byte_for_byte() {
    const SECTORS: u64 = 2048; // 1 MiB image
    let runs = ENGINES
        .into_iter()
        .flat_map(|e| configs().map(move |c| (e, c)));
    for (i, (engine, cfg)) in runs.enumerate() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let initial = pattern(1000 + i as u64, (SECTORS * 512) as usize);
        file.write_all(&initial).unwrap();
        file.flush().unwrap();

        let w = block_window(cfg, engine, file.path(), false);
        let mut b = Block::new(probe(cfg, w.io), w.hal).unwrap();
        check(cfg, b.transport());
        assert_eq!(b.capacity(), SECTORS, "{cfg:?}");
        assert!(!b.read_only());

        // What the device presents is the file as it was.
        let mut first = vec![0u8; 64 * 1024];
        b.read_blocks(0, &mut first).unwrap();
        assert_eq!(first[..], initial[..first.len()], "{cfg:?}");

        // Writes of several shapes, including one larger than a request.
        let mut expected = initial.clone();
        for (n, (sector, len)) in [(0u64, 512usize), (7, 4096), (100, 300 * 512), (2047, 512)]
            .into_iter()
            .enumerate()
        {
            let data = pattern(n as u64 + 10 * i as u64, len);
            b.write_blocks(sector, &data).unwrap();
            let at = (sector * 512) as usize;
            expected[at..at + len].copy_from_slice(&data);
        }
        b.flush().unwrap();

        let mut on_disk = Vec::new();
        let mut f = file.reopen().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut on_disk).unwrap();
        assert_eq!(on_disk.len(), expected.len(), "{cfg:?}");
        assert!(
            on_disk == expected,
            "{cfg:?}: file differs from what the driver wrote"
        );
    }
}

#[test]
fn read_only_block_refuses_writes_and_keeps_the_file() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    let initial = pattern(7, 64 * 512);
    file.write_all(&initial).unwrap();
    for (engine, cfg) in ENGINES
        .into_iter()
        .flat_map(|e| configs().map(move |c| (e, c)))
    {
        let w = block_window(cfg, engine, file.path(), true);
        let mut b = Block::new(probe(cfg, w.io), w.hal).unwrap();
        assert!(b.read_only(), "{engine:?} {cfg:?}");
        assert!(b.write_blocks(0, &[0xaa; 512]).is_err(), "{cfg:?}");
        let mut back = vec![0u8; 512];
        b.read_blocks(0, &mut back).unwrap();
        assert_eq!(back[..], initial[..512], "{cfg:?}");
    }
    let mut on_disk = Vec::new();
    file.reopen().unwrap().read_to_end(&mut on_disk).unwrap();
    assert!(on_disk == initial);
}

#[test]
fn block_past_the_16_bit_index_wrap_on_a_file() {
    // 70,000 requests through an 8-entry queue, Version 2 with EVENT_IDX
    // and Version 1 without: the ring index wraps at 65536.
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&vec![0u8; 64 * 512]).unwrap();
    // Every such config on the synchronous engine; the io_uring engine
    // (completions through backend events) on the synchronous window with
    // EVENT_IDX, the case where a missed completion would hang.
    let runs = configs()
        .filter(|c| (c.version == TransportVersion::Modern) == c.event_idx && !c.indirect)
        .map(|c| (IoEngine::Sync, c))
        .chain(
            configs()
                .filter(|c| c.exec == ExecMode::Sync && c.event_idx && !c.indirect)
                .filter(|c| c.version == TransportVersion::Modern)
                .map(|c| (IoEngine::IoUring, c)),
        );
    for (engine, cfg) in runs {
        let w = block_window(cfg, engine, file.path(), false);
        let mut b = Block::with_queue_size(probe(cfg, w.io), w.hal, 8).unwrap();
        let mut buf = vec![0u8; 512];
        for r in 0..35_000u32 {
            let sector = u64::from(r % 64);
            buf[..4].copy_from_slice(&r.to_le_bytes());
            b.write_blocks(sector, &buf).unwrap();
            buf[..4].fill(0);
            b.read_blocks(sector, &mut buf).unwrap();
            assert_eq!(
                buf[..4],
                r.to_le_bytes(),
                "{engine:?} {cfg:?} round trip {r}"
            );
        }
    }
}

#[test]
fn entropy_device_returns_varying_bytes() {
    for cfg in configs() {
        let w = window_in(
            cfg.exec,
            cfg.version,
            Box::new(vmmio_devices::Rng::<Mem>::new()),
        );
        let mut e = Entropy::new(probe(cfg, w.io), w.hal).unwrap();
        check(cfg, e.transport());
        let mut buf = vec![0u8; 4096];
        e.fill(&mut buf).unwrap();
        vmmio_integration::assert_uniform_bytes(&buf, &format!("{cfg:?}"));
    }
}

#[test]
fn console_bytes_cross_both_ways() {
    for cfg in configs() {
        let (dev, captured) = vmmio_devices::Console::<Mem>::capture();
        let input = dev.input_handle();
        let w = window_in(cfg.exec, cfg.version, Box::new(dev));
        let mut c = Console::new(probe(cfg, w.io), w.hal).unwrap();
        check(cfg, c.transport());
        let text = pattern(3, 5000);
        c.write(b"hello from the driver\n").unwrap();
        c.write(&text).unwrap();
        {
            let out = captured.lock().unwrap();
            assert_eq!(&out[..22], b"hello from the driver\n", "{cfg:?}");
            assert!(out[22..] == text[..], "{cfg:?}");
        }
        input.push(b"typed on the host");
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        // A worker-mode device delivers asynchronously: bound by a
        // generous deadline, not a read count.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while got.len() < 17 && std::time::Instant::now() < deadline {
            let n = c.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(got, b"typed on the host", "{cfg:?}");
    }
}
