//! Our entropy driver against QEMU's `virtio-rng-device`.

mod common;

use common::{both_modes, start};
use vmmio_driver::rng::Entropy;
use vmmio_qtest::{Device, Mode, RingFeatures};

fn entropy_returns_varying_bytes(mode: Mode) {
    let qemu = start(mode, RingFeatures::default(), &[Device::Rng]);
    let mut rng = Entropy::new(qemu.transport(0), qemu.hal())
        .unwrap_or_else(|e| panic!("{mode:?}: entropy init failed: {e}; {}", qemu.stderr()));
    let mut first = [0u8; 256];
    let n = rng
        .read(&mut first)
        .unwrap_or_else(|e| panic!("{mode:?}: read: {e}"));
    assert!(n > 0 && n <= first.len(), "{mode:?}: read returned {n}");
    let mut a = [0u8; 512];
    let mut b = [0u8; 512];
    rng.fill(&mut a)
        .unwrap_or_else(|e| panic!("{mode:?}: fill: {e}"));
    rng.fill(&mut b)
        .unwrap_or_else(|e| panic!("{mode:?}: fill: {e}"));
    assert!(a.iter().any(|&x| x != a[0]), "{mode:?}: constant bytes");
    assert_ne!(a, b, "{mode:?}: two fills returned the same bytes");
    // 512 random bytes take at least 100 distinct values with overwhelming
    // probability; a stuck or patterned source does not.
    let mut seen = [false; 256];
    for &x in &a {
        seen[usize::from(x)] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count();
    assert!(distinct >= 100, "{mode:?}: only {distinct} distinct values");
}

both_modes!(entropy_returns_varying_bytes);
