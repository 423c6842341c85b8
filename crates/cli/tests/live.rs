//! Live configuration changes seen by Linux: `vmmio boot --api-sock` on the default guest,
//! a disk resized through the control socket while the guest's init waits for it.
//!
//! `VMMIO_GUEST_DIR=DIR` uses `DIR/Image` and `DIR/initramfs.cpio` instead of running
//! `guest/build.sh`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Bytes of the disk at boot, and after the host grows it.
const BEFORE: u64 = 1 << 20;
const AFTER: u64 = 4 << 20;

/// virtio v1.4 §5.2.4 / §2.5: the host grows the image file and asks for
/// `{"resize_disk": {"index": 0}}`; Linux's virtio_blk gets the configuration change
/// interrupt, re-reads `capacity` ("[vda] new size") and the init sees the new size in
/// /sys/block/vda/size and reads the new last sector.
#[test]
fn linux_sees_a_disk_resized_through_the_api_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = dir.path().join("disk.img");
    let sock = dir.path().join("api.sock");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(BEFORE))
        .expect("disk image");
    let guest = vmmio_machine::guest::default_guest_dir().expect("the default guest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmmio"))
        .arg("boot")
        .arg("--kernel")
        .arg(guest.join("Image"))
        .arg("--initrd")
        .arg(guest.join("initramfs.cpio"))
        .arg("--disk")
        .arg(&image)
        .arg("--api-sock")
        .arg(&sock)
        .args(["--no-rng", "--no-console", "--no-stdin", "--timeout", "240"])
        .args(["--append", "vmmio.tests=blkresize"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run vmmio");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let mut answer = String::new();
    for line in rx.iter() {
        let waiting = line.contains("vmmio-init: blkresize waiting");
        log.push(line);
        if waiting {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .and_then(|f| f.set_len(AFTER))
                .expect("grow the image");
            let mut api = UnixStream::connect(&sock).expect("connect to the api socket");
            api.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            api.write_all(b"{\"resize_disk\": {\"index\": 0}}\n")
                .expect("send");
            BufReader::new(api).read_line(&mut answer).expect("answer");
        }
    }
    let status = child.wait().expect("wait");
    reader.join().expect("reader");
    let log = log.join("\n");
    for l in log
        .lines()
        .filter(|l| l.contains("vda") || l.contains("blkresize"))
    {
        eprintln!("{l}");
    }
    assert_eq!(
        answer.trim(),
        format!("{{\"ok\":{{\"capacity\":{}}}}}", AFTER / 512),
        "{log}"
    );
    assert!(
        log.contains("virtio_blk virtio0: [vda] new size"),
        "no resize message from Linux:\n{log}"
    );
    assert!(
        log.contains(&format!("vmmio-init: blkresize OK sectors={}", AFTER / 512)),
        "{log}"
    );
    assert!(status.success(), "{status:?}\n{log}");
}
