//! The Internet checksum (RFC 1071) as virtio-net's partial checksums use
//! it (virtio v1.4 §5.1.6.2): the ones' complement sum from `csum_start`
//! to the end of the packet, stored at `csum_start + csum_offset`.

/// Ones' complement sum of `data` as big-endian 16-bit words (an odd last
/// byte is padded with zero), folded to 16 bits.
pub(crate) fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // Folded above: fits.
    acc as u16
}

/// Completes a partial checksum in place: sums `frame[start..]` (which
/// holds the pseudo-header sum at `start + offset`, as the sender left it)
/// and stores the complement there, big-endian; a result of 0 is stored as
/// 0xffff (the same value in ones' complement, and the only valid form for
/// UDP).
///
/// Returns false, changing nothing, when `start + offset + 2` is past the
/// end of `frame`.
pub(crate) fn complete(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let Some(at) = start.checked_add(offset) else {
        return false;
    };
    match at.checked_add(2) {
        Some(end) if end <= frame.len() => {}
        _ => return false,
    }
    let c = !sum(&frame[start..]);
    let c = if c == 0 { 0xffff } else { c };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example_and_completion() {
        // RFC 1071 §3's example words sum to 0xddf2.
        assert_eq!(
            sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(sum(&[0xff]), 0xff00);
        let mut f = [0u8, 1, 0xf2, 3, 0, 0, 0xf6, 0xf7];
        assert!(complete(&mut f, 0, 4));
        // The whole range now sums to 0xffff (verifies).
        assert_eq!(sum(&f), 0xffff);
        assert!(!complete(&mut f, 0, 7));
        assert!(!complete(&mut f, usize::MAX, 1));
    }
}
