//! Transmit: the driver's frames to the backend (virtio v1.4 §5.1.6.2
//! "Packet Transmission").

use vm_memory::GuestMemory;
use vmmio_device::InterruptCause;
use vmmio_spec::net::{hdr_len, NetHdr, HDR_F_NEEDS_CSUM, HDR_GSO_NONE};

use super::{csum, Counters, Net, Sent};
use crate::chain::{ChainLayout, Region, MAX_BATCHES};

const TX: usize = super::TRANSMITQ as usize;

/// Why a transmit chain was dropped.
enum Drop {
    /// The driver sent something the spec does not allow, or we do not
    /// take: logged at the malformed rate.
    Malformed(String),
    /// The backend failed.
    Host(std::io::Error),
}

impl<M: GuestMemory> Net<M> {
    /// Sends every available transmit chain the backend takes, then
    /// notifies the driver once per batch if it wants it.
    pub(super) fn transmit(&mut self) {
        if self.tx_blocked {
            return;
        }
        let max_frame = self.max_frame_len();
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let Some(size) = active.queues[TX].as_ref().map(|q| q.size()) else {
            return;
        };
        let batch = u32::from(size).max(1);
        for _ in 0..MAX_BATCHES {
            let mut served = 0u32;
            while served < batch {
                match self.transmit_one(max_frame) {
                    Some(true) => served += 1,
                    Some(false) | None => break,
                }
            }
            if served > 0 {
                self.tx_notify();
            }
            if served < batch {
                return;
            }
        }
        // Stopped at the cap with chains perhaps left: re-arm the driver's
        // notifications, and if chains are there already (the driver will
        // not notify for those), wake ourselves to serve them next.
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Some(q) = active.queues[TX].as_mut() {
            match q.enable_notification(&active.mem) {
                Ok(true) => self.more.signal(),
                Ok(false) => {}
                Err(e) => self.break_queue(TX, &e),
            }
        }
    }

    fn tx_notify(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if let Some(q) = active.queues[TX].as_mut() {
            if q.needs_notification(&active.mem).unwrap_or(true) {
                active.interrupt.raise(InterruptCause::UsedBuffer);
            }
        }
    }

    /// Pops and sends one chain. `Some(true)`: a chain was used;
    /// `Some(false)`: the ring is empty or the backend is busy; `None`:
    /// the queue is not served.
    fn transmit_one(&mut self, max_frame: usize) -> Option<bool> {
        let Self {
            active,
            chain,
            tx_buf,
            backend,
            tx_blocked,
            shared,
            logs,
            ..
        } = self;
        let active = active.as_mut()?;
        if active.broken[TX] {
            return None;
        }
        let queue = active.queues[TX].as_mut()?;
        let mem = &active.mem;
        match queue.pop_into(mem, chain) {
            Ok(true) => {}
            Ok(false) => return Some(false),
            Err(e) => {
                self.break_queue(TX, &e);
                return None;
            }
        }
        let hlen = hdr_len(active.features);
        let counters = &shared.counters;
        let result =
            read_frame(mem, chain.descriptors(), hlen, max_frame, tx_buf).and_then(|(hdr, len)| {
                let frame = &mut tx_buf[..len];
                if hdr.flags & HDR_F_NEEDS_CSUM != 0 && !backend.takes_hdr() {
                    let start = usize::from(hdr.csum_start.get());
                    let offset = usize::from(hdr.csum_offset.get());
                    if !csum::complete(frame, start, offset) {
                        return Err(Drop::Malformed(format!(
                            "checksum at {start} + {offset} past a frame of {len} bytes"
                        )));
                    }
                }
                match backend.send(&hdr, frame) {
                    Ok(s) => Ok((s, len)),
                    Err(e) => Err(Drop::Host(e)),
                }
            });
        match result {
            Ok((Sent::Busy, _)) => {
                // Leave the chain in the ring until the backend has room.
                queue.undo_pop();
                *tx_blocked = true;
                return Some(false);
            }
            Ok((Sent::Done, len)) => {
                Counters::add(&counters.tx_frames, 1);
                Counters::add(&counters.tx_bytes, len as u64);
            }
            Err(Drop::Malformed(why)) => {
                Counters::add(&counters.tx_dropped, 1);
                log::log!(
                    logs.malformed.level(),
                    "virtio-net: transmit chain dropped: {why}"
                );
            }
            Err(Drop::Host(e)) => {
                Counters::add(&counters.tx_dropped, 1);
                log::log!(logs.host.level(), "virtio-net: backend write failed: {e}");
            }
        }
        // The device writes nothing into transmit buffers.
        if let Err(e) = queue.add_used(mem, chain.head_index(), 0) {
            self.break_queue(TX, &e);
            return None;
        }
        Some(true)
    }
}

/// Checks a transmit chain's shape and reads its header and frame; the
/// frame goes to the start of `buf`.
fn read_frame<M: GuestMemory>(
    mem: &M,
    descs: &[vmmio_device::queue::Descriptor],
    hlen: usize,
    max_frame: usize,
    buf: &mut [u8],
) -> Result<(NetHdr, usize), Drop> {
    let layout = ChainLayout::split(descs).map_err(|e| Drop::Malformed(e.to_string()))?;
    if !layout.writable.is_empty() {
        return Err(Drop::Malformed("device-writable descriptor".into()));
    }
    let hlen64 = hlen as u64;
    if layout.readable_len <= hlen64 {
        return Err(Drop::Malformed(format!(
            "{} bytes: no frame after the {hlen}-byte header",
            layout.readable_len
        )));
    }
    let len = layout.readable_len - hlen64;
    if len > max_frame as u64 || len > buf.len() as u64 {
        return Err(Drop::Malformed(format!(
            "frame of {len} bytes, more than {max_frame}"
        )));
    }
    // Checked just above: fits.
    let len = len as usize;
    let mut hb = [0u8; 12];
    Region::new(layout.readable, 0, hlen64)
        .read_into(mem, &mut hb[..hlen])
        .map_err(|e| Drop::Malformed(e.to_string()))?;
    let hdr = NetHdr::from_bytes(&hb[..hlen]).unwrap_or_default();
    // No GSO was offered (§5.1.6.2.1: the driver MUST NOT use it).
    if hdr.gso_type != HDR_GSO_NONE {
        return Err(Drop::Malformed(format!("gso_type {:#x}", hdr.gso_type)));
    }
    Region::new(layout.readable, hlen64, len as u64)
        .read_into(mem, &mut buf[..len])
        .map_err(|e| Drop::Malformed(e.to_string()))?;
    Ok((hdr, len))
}
