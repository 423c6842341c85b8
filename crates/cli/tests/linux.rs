//! Linux's own virtio_mmio driver against vmmio's devices: `vmmio boot` on the software
//! machine with the default guest (Linux 6.1 + the vmmio init, from `guest/build.sh`), in
//! both register layouts (Version 2 and legacy Version 1) and both execution modes
//! (`--exec worker`, the default, and `--exec sync`; the 140,000-request test runs in
//! worker mode only, for CI time). The default boot, the disk-file test and the crash test
//! also run over both block engines (`--blk-backend sync` and `io-uring`).
//!
//! `VMMIO_GUEST_DIR=DIR` uses `DIR/Image` and `DIR/initramfs.cpio` instead of running the
//! build script (which builds the kernel on first use: many minutes; later runs hit its
//! cache).

mod common;

use std::process::{Command, Stdio};

use common::Run;

/// Both execution modes, as `--exec` values.
const EXEC_MODES: [&str; 2] = ["worker", "sync"];

/// Both block engines, as `--blk-backend` values (the default, `auto`, picks io-uring
/// where the kernel has it).
const BLK_BACKENDS: [&str; 2] = ["sync", "io-uring"];

/// Every execution mode with every block engine.
fn exec_and_backends() -> impl Iterator<Item = (&'static str, &'static str)> {
    EXEC_MODES
        .into_iter()
        .flat_map(|e| BLK_BACKENDS.into_iter().map(move |b| (e, b)))
}

/// `--stats` names the block engine that ran.
fn assert_engine(run: &Run, backend: &str) {
    let line = format!("vmmio: block device 0: {backend} engine");
    assert!(run.stderr.contains(&line), "no {line:?}:\n{}", run.dump());
}

/// The options every run here has: `--stats --no-stdin --timeout 240`.
const FIXED: [&str; 4] = ["--stats", "--no-stdin", "--timeout", "240"];

/// `vmmio boot --stats --no-stdin` on the default guest with `args`.
fn boot_command(args: &[&str]) -> Command {
    common::boot_command(&FIXED, args)
}

/// Runs `vmmio boot --stats --no-stdin` on the default guest with `args`.
fn boot(args: &[&str]) -> Run {
    common::boot(&FIXED, args)
}

/// The default run: Linux probes all three devices through its virtio_mmio driver and the
/// init's test of each passes.
fn assert_default_devices_work(run: &Run, version: &str) {
    assert_eq!(run.code, Some(0), "{}", run.dump());
    // virtio_blk's probe lines, through virtio_mmio.
    run.assert_has("virtio_blk virtio0: 1/0/0 default/read/poll queues");
    run.assert_has("virtio_blk virtio0: [vda] 131072 512-byte logical blocks (67.1 MB/64.0 MiB)");
    for line in [
        "vmmio-init: virtio virtio0 device=0x0002",
        "vmmio-init: virtio virtio1 device=0x0004",
        "vmmio-init: virtio virtio2 device=0x0003",
        "vmmio-init: virtio OK count=3",
    ] {
        run.assert_has(line);
    }
    run.assert_device_tests_passed();
    // --stats reports memory: the guest touched some RAM, and the peak RSS covers it.
    let mem_line = run
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("vmmio: peak RSS "))
        .unwrap_or_else(|| panic!("no memory stats:\n{}", run.dump()));
    let figures: Vec<f64> = mem_line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect();
    let [peak, guest, overhead] = figures[..] else {
        panic!("memory stats {mem_line:?}")
    };
    assert!(guest > 1.0 && peak >= guest, "{mem_line}");
    assert!((peak - guest - overhead).abs() < 0.2, "{mem_line}");
    run.assert_windows(&[2, 4, 3], version);
}

#[test]
fn linux_drives_version2_devices() {
    for (exec, backend) in exec_and_backends() {
        let run = boot(&["--exec", exec, "--blk-backend", backend]);
        assert_default_devices_work(&run, "Modern");
        assert_engine(&run, backend);
    }
}

#[test]
fn linux_drives_legacy_devices() {
    for exec in EXEC_MODES {
        let run = boot(&["--legacy", "--exec", exec]);
        assert_default_devices_work(&run, "Legacy");
    }
}

/// The guest init's disk pattern (guest/init.c `pattern_word`): a splitmix64 step of the
/// seed and the byte offset, one little-endian word per 8 bytes.
fn pattern_word(seed: u64, off: u64) -> u64 {
    let mut z = seed.wrapping_add(off.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const MIB: usize = 1 << 20;

/// The first MiB of `data` holds the guest init's pattern of `seed`.
fn check_pattern(data: &[u8], seed: u64, what: &str) {
    let expected: Vec<u8> = (0..MIB as u64 / 8)
        .flat_map(|i| pattern_word(seed, i * 8).to_le_bytes())
        .collect();
    if let Some(i) = (0..MIB).find(|&i| data[i] != expected[i]) {
        panic!(
            "{what}: disk byte {i} is {:#04x}, the guest wrote {:#04x}",
            data[i], expected[i]
        );
    }
}

#[test]
fn guest_writes_reach_the_disk_file_byte_for_byte() {
    for (exec, backend) in exec_and_backends() {
        guest_writes_reach_the_disk_file(exec, backend);
    }
}

fn guest_writes_reach_the_disk_file(exec: &str, backend: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("disk.img");
    // 16 MiB of 0xee: what the guest does not write must stay.
    std::fs::write(&path, vec![0xeeu8; 16 * MIB]).expect("write disk image");
    let seed: u64 = 0x5eed_0000_1234_abcd;
    let disk = path.to_str().expect("utf-8 temp path");
    let append = format!("vmmio.tests=virtio,blk vmmio.pattern_seed={seed:#x}");
    let run = boot(&[
        "--disk",
        disk,
        "--append",
        &append,
        "--exec",
        exec,
        "--blk-backend",
        backend,
    ]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    assert_engine(&run, backend);
    run.assert_has("vmmio-init: blk capacity sectors=32768 bytes=16777216");
    run.assert_has("vmmio-init: blk OK bytes=1048576");

    let data = std::fs::read(&path).expect("read disk image");
    assert_eq!(data.len(), 16 * MIB);
    check_pattern(&data, seed, exec);
    assert!(
        data[MIB..].iter().all(|&b| b == 0xee),
        "bytes past the first MiB changed"
    );
}

#[test]
fn read_only_disk_refuses_writes_and_a_fail_line_gives_exit_3() {
    for exec in EXEC_MODES {
        read_only_disk_refuses_writes(exec);
    }
}

fn read_only_disk_refuses_writes(exec: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ro.img");
    std::fs::write(&path, vec![0x5au8; 4 * MIB]).expect("write disk image");
    let spec = format!("{},ro", path.to_str().expect("utf-8 temp path"));
    let run = boot(&[
        "--disk",
        &spec,
        "--no-rng",
        "--append",
        "vmmio.tests=virtio,blk",
        "--exec",
        exec,
    ]);
    run.assert_has("vmmio-init: virtio OK count=2");
    // Linux marks a disk offered with VIRTIO_BLK_F_RO read-only: the open
    // succeeds, the first write is refused with EPERM (1) before any
    // request reaches the device (the image is unchanged, below).
    run.assert_has("vmmio-init: blk FAIL write errno=1");
    assert_eq!(run.code, Some(3), "{}", run.dump());
    let data = std::fs::read(&path).expect("read disk image");
    assert!(data.iter().all(|&b| b == 0x5a), "a read-only disk changed");
}

/// 70000 write+read round trips (140000 requests) through 16-entry queues: the 16-bit
/// `idx` of the available and used rings wraps twice, the ring position thousands of
/// times, and every reply is checked by the guest.
#[test]
fn many_block_requests_through_16_entry_queues() {
    let run = boot(&[
        "--queue-size",
        "16",
        "--append",
        "vmmio.tests=virtio,blkreqs vmmio.blkreqs=70000",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: blkreqs OK n=70000");
    run.assert_has("vmmio-init: summary ok=2 fail=0");
    eprintln!(
        "140000 block requests with --queue-size 16: {:.1} s",
        run.secs
    );
}

/// The legacy ring layout (QueueAlign padding) with small queues.
#[test]
fn legacy_small_queues_carry_block_requests() {
    for exec in EXEC_MODES {
        let run = boot(&[
            "--legacy",
            "--queue-size",
            "16",
            "--append",
            "vmmio.tests=virtio,blk,rng,hvc,blkreqs vmmio.blkreqs=3000",
            "--exec",
            exec,
        ]);
        assert_eq!(run.code, Some(0), "{exec}: {}", run.dump());
        run.assert_has("vmmio-init: blk OK bytes=1048576");
        run.assert_has("vmmio-init: rng OK bytes=4096");
        run.assert_has("vmmio-init: hvc OK");
        run.assert_has("vmmio-init: blkreqs OK n=3000");
    }
}

/// Crash durability: the guest writes a pattern, fsyncs and says so; the test SIGKILLs
/// vmmio the moment the line appears (the guest is still writing elsewhere) and finds the
/// pattern in the image. A device that acknowledged the guest's writes or its FLUSH
/// before the data reached the file fails this.
#[test]
fn synced_writes_survive_sigkill_at_the_marker() {
    use std::io::{BufRead, BufReader};
    for (exec, backend) in exec_and_backends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("crash.img");
        std::fs::write(&path, vec![0u8; 4 * MIB]).expect("write disk image");
        let seed: u64 = 0xc0ff_ee00_d15c_0001;
        let append = format!("vmmio.tests=crash vmmio.pattern_seed={seed:#x}");
        let disk = path.to_str().expect("utf-8 temp path");
        let mut child = boot_command(&[
            "--disk",
            disk,
            "--no-rng",
            "--no-console",
            "--append",
            &append,
            "--exec",
            exec,
            "--blk-backend",
            backend,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start vmmio");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut seen = Vec::new();
        let mut marker = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("console output");
            if line.contains("vmmio-init: crash SYNCED") {
                child.kill().expect("SIGKILL vmmio");
                marker = true;
                break;
            }
            seen.push(line);
        }
        let status = child.wait().expect("reap vmmio");
        assert!(
            marker,
            "{exec} {backend}: no marker ({status:?}):\n{}",
            seen.join("\n")
        );
        let data = std::fs::read(&path).expect("read disk image");
        check_pattern(&data, seed, exec);
    }
}

/// VIRTIO_F_RING_PACKED.
const RING_PACKED: u64 = 1 << 34;

/// `vmmio boot --packed`: Linux 6.1's virtio_ring negotiates packed rings with every
/// device (the window's negotiated bits and the guest's own
/// `/sys/bus/virtio/devices/*/features` both show bit 34) and every init test passes on
/// them, in both execution modes.
#[test]
fn linux_negotiates_packed_rings_with_every_device() {
    for exec in EXEC_MODES {
        let run = boot(&["--packed", "--exec", exec]);
        assert_eq!(run.code, Some(0), "{exec}: {}", run.dump());
        for line in [
            "vmmio-init: virtio OK count=3",
            "vmmio-init: blk OK bytes=1048576",
            "vmmio-init: rng OK bytes=4096",
            "vmmio-init: hvc OK",
            "virtio-console| vmmio-hvc: hello from the guest",
            "vmmio-init: features OK count=3",
            "vmmio-init: summary ok=5 fail=0",
        ] {
            run.assert_has(line);
        }
        for name in ["virtio0", "virtio1", "virtio2"] {
            let prefix = format!("vmmio-init: features {name} bits=");
            let line = run
                .stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no features line for {name}:\n{}", run.dump()));
            assert!(line.ends_with("ring_packed=1"), "{line}");
        }
        assert!(!run.stdout.contains("WARNING:"), "{}", run.dump());
        let windows = run.windows();
        assert_eq!(windows.len(), 3, "{}", run.dump());
        for (device, version, features) in windows {
            assert_eq!(version, "Modern");
            assert_ne!(features & RING_PACKED, 0, "device {device}: {features:#x}");
        }
    }
}

/// 70000 write+read round trips (140000 requests) through 16-entry packed rings: both
/// wrap counters flip thousands of times, and every reply is checked by the guest.
#[test]
fn many_block_requests_through_16_entry_packed_rings() {
    let run = boot(&[
        "--packed",
        "--queue-size",
        "16",
        "--append",
        "vmmio.tests=virtio,blkreqs,features vmmio.blkreqs=70000",
    ]);
    assert_eq!(run.code, Some(0), "{}", run.dump());
    run.assert_has("vmmio-init: blkreqs OK n=70000");
    run.assert_has("vmmio-init: summary ok=3 fail=0");
    let (_, _, features) = run.windows()[0];
    assert_ne!(features & RING_PACKED, 0, "{features:#x}");
    eprintln!(
        "140000 block requests with --packed --queue-size 16: {:.1} s",
        run.secs
    );
}
