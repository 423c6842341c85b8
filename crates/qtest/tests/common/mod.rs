//! Helpers shared by the qtest integration tests.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::time::{Duration, Instant};

use vmmio_qtest::{Device, Mode, Qemu, QemuBuilder, RingFeatures};

/// For a function `$name(mode: Mode)`, defines `mod $name` with two
/// tests, `legacy` and `modern`, each calling it with its mode: every test
/// runs against both of QEMU's register layouts, each with its own QEMU.
macro_rules! both_modes {
    ($(#[$meta:meta])* $name:ident) => {
        mod $name {
            $(#[$meta])*
            #[test]
            fn legacy() {
                super::$name(vmmio_qtest::Mode::Legacy)
            }
            $(#[$meta])*
            #[test]
            fn modern() {
                super::$name(vmmio_qtest::Mode::Modern)
            }
        }
    };
}
pub(crate) use both_modes;

/// Starts QEMU in `mode` with `devices`, offering `ring` features.
pub fn start(mode: Mode, ring: RingFeatures, devices: &[Device]) -> Qemu {
    let mut builder = QemuBuilder::new(mode).ring_features(ring);
    for d in devices {
        builder = builder.device(d.clone());
    }
    builder
        .start()
        .unwrap_or_else(|e| panic!("QEMU did not start: {e}"))
}

/// Polls `done` every millisecond for up to 30 seconds of wall-clock time
/// (QEMU completes requests in milliseconds; the margin is for loaded CI
/// machines); returns whether it became true.
pub fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A small deterministic generator (xorshift64*), so a failing run can be
/// replayed: the seed is in the test.
pub struct Xorshift(u64);

impl Xorshift {
    /// A generator from a non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
