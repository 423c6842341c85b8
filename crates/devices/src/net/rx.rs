//! Receive: frames from the backend into the driver's receive buffers
//! (virtio v1.4 §5.1.6.3 "Setting Up Receive Buffers", §5.1.6.4
//! "Processing of Incoming Packets").

use vm_memory::GuestMemory;
use vmmio_device::InterruptCause;
use vmmio_spec::features::bit;
use vmmio_spec::net::{
    hdr_len, NetHdr, F_GUEST_CSUM, F_MRG_RXBUF, F_MTU, HDR_F_DATA_VALID, HDR_F_NEEDS_CSUM, HDR_SIZE,
};
use vmmio_spec::Le16;

use super::{csum, Counters, Net};
use crate::chain::{ChainLayout, Region};

/// What became of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placed {
    /// In receive buffers, made used.
    Done,
    /// Dropped (counted): too long, malformed, or the queue broke.
    Dropped,
    /// Not enough receive buffers posted: keep the frame, try again when
    /// the driver posts more.
    NoRoom,
}

const RX: usize = super::RECEIVEQ as usize;

impl<M: GuestMemory> Net<M> {
    /// Delivers backlog frames while receive buffers last.
    pub(super) fn drain_backlog(&mut self) {
        // Bounded by the backlog length: each round removes a frame or stops.
        while let Some(mut frame) = self.backlog.pop_front() {
            match self.receive_one(&frame.hdr, &mut frame.data) {
                Placed::Done | Placed::Dropped => {
                    self.backlog_bytes = self.backlog_bytes.saturating_sub(frame.data.len());
                }
                Placed::NoRoom => {
                    self.backlog.push_front(frame);
                    break;
                }
            }
        }
        self.rx_notify();
    }

    /// Sends the driver a used-buffer notification for the receive queue
    /// if it wants one for the buffers used since the last call.
    pub(super) fn rx_notify(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(q) = active.queues[RX].as_mut() else {
            return;
        };
        if active.broken[RX] {
            return;
        }
        match q.needs_notification(&active.mem) {
            Ok(false) => {}
            // On error, notify anyway: a spurious interrupt is harmless.
            Ok(true) | Err(_) => active.interrupt.raise(InterruptCause::UsedBuffer),
        }
    }

    /// Puts one frame in receive buffers. `data` may be changed (a partial
    /// checksum completed for a driver without GUEST_CSUM).
    pub(super) fn receive_one(&mut self, hdr: &NetHdr, data: &mut [u8]) -> Placed {
        let max_frame = self.max_frame_len();
        let Some(active) = self.active.as_mut() else {
            return Placed::NoRoom;
        };
        if active.broken[RX] || active.queues[RX].is_none() {
            return Placed::NoRoom;
        }
        let features = active.features;
        let counters = &self.shared.counters;
        let drop = |why: &str, limiter: &mut crate::chain::LogLimiter| {
            Counters::add(&counters.rx_dropped, 1);
            log::log!(limiter.level(), "virtio-net: received frame dropped: {why}");
            Placed::Dropped
        };
        if data.is_empty() {
            return drop("empty frame", &mut self.logs.malformed);
        }
        // §5.1.4.1: with MTU negotiated, nothing longer than MTU + header.
        if features & bit(F_MTU) != 0 && data.len() > max_frame {
            return drop("longer than the MTU", &mut self.logs.malformed);
        }
        let mut out = NetHdr::default();
        if hdr.flags & HDR_F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start.get());
            let offset = usize::from(hdr.csum_offset.get());
            if features & bit(F_GUEST_CSUM) != 0 {
                let end = start.saturating_add(offset).saturating_add(2);
                if end > data.len() {
                    return drop("checksum position past the frame", &mut self.logs.malformed);
                }
                out.flags = HDR_F_NEEDS_CSUM;
                out.csum_start = hdr.csum_start;
                out.csum_offset = hdr.csum_offset;
            } else if !csum::complete(data, start, offset) {
                // §5.1.6.4: without GUEST_CSUM, flags 0 and a full checksum.
                return drop("checksum position past the frame", &mut self.logs.malformed);
            }
        } else if hdr.flags & HDR_F_DATA_VALID != 0 && features & bit(F_GUEST_CSUM) != 0 {
            out.flags = HDR_F_DATA_VALID;
        }
        let hlen = hdr_len(features);
        let mrg = features & bit(F_MRG_RXBUF) != 0;
        // `data.len() <= MAX_FRAME_LEN`: no overflow.
        let need = (hlen + data.len()) as u64;

        // Gather buffers until the frame fits (one without MRG_RXBUF).
        let Self {
            active,
            chain,
            rx_descs,
            rx_bufs,
            used,
            logs,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return Placed::NoRoom;
        };
        let Some(queue) = active.queues[RX].as_mut() else {
            return Placed::NoRoom;
        };
        let mem = &active.mem;
        rx_descs.clear();
        rx_bufs.clear();
        let mut total = 0u64;
        let mut fault: Option<String> = None;
        // At most `size` buffers: a queue never holds more.
        while total < need && rx_bufs.len() < usize::from(queue.size()) {
            if !mrg && !rx_bufs.is_empty() {
                break;
            }
            match queue.pop_into(mem, chain) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    fault = Some(e.to_string());
                    break;
                }
            }
            let layout = match ChainLayout::split(chain.descriptors()) {
                Ok(l) if l.readable.is_empty() => l,
                Ok(_) => {
                    fault = Some("receive buffer with a device-readable part".into());
                    break;
                }
                Err(e) => {
                    fault = Some(e.to_string());
                    break;
                }
            };
            // §5.1.6.3.1: with MRG_RXBUF every buffer holds at least a header.
            if mrg && layout.writable_len < HDR_SIZE as u64 {
                fault = Some(format!(
                    "receive buffer of {} bytes, smaller than the header",
                    layout.writable_len
                ));
                break;
            }
            let first = rx_descs.len();
            rx_descs.extend_from_slice(layout.writable);
            rx_bufs.push((
                chain.head_index(),
                first,
                layout.writable.len(),
                layout.writable_len,
            ));
            total = total.saturating_add(layout.writable_len);
        }
        if let Some(f) = fault {
            // Give back what this frame popped, then stop the queue.
            for _ in 0..rx_bufs.len() {
                queue.undo_pop();
            }
            self.break_queue(RX, &f);
            Counters::add(&self.shared.counters.rx_dropped, 1);
            return Placed::Dropped;
        }
        if total < need {
            for _ in 0..rx_bufs.len() {
                queue.undo_pop();
            }
            if !mrg && !rx_bufs.is_empty() {
                // One buffer is all a frame may use, and it is too small.
                Counters::add(&self.shared.counters.rx_dropped, 1);
                log::log!(
                    logs.malformed.level(),
                    "virtio-net: frame of {} bytes dropped: receive buffer of {total} bytes",
                    data.len()
                );
                return Placed::Dropped;
            }
            return Placed::NoRoom;
        }

        // Fill: header then frame, each buffer but the last completely.
        // At most `size` (<= 32768) buffers.
        out.num_buffers = Le16::new(rx_bufs.len() as u16);
        let hdr_bytes = out.to_bytes();
        let hdr_bytes = &hdr_bytes[..hlen];
        used.clear();
        let mut pos = 0u64;
        let mut write_err = None;
        for &(head, first, count, len) in rx_bufs.iter() {
            let take = len.min(need - pos);
            let descs = &rx_descs[first..first + count];
            let r = write_stream(mem, descs, pos, take, hdr_bytes, data);
            if let Err(e) = r {
                write_err = Some(e.to_string());
                break;
            }
            pos += take;
            // `take <= need <= 64 KiB + 12`.
            used.push((head, take as u32));
        }
        if let Some(e) = write_err {
            for _ in 0..rx_bufs.len() {
                queue.undo_pop();
            }
            self.break_queue(RX, &e);
            Counters::add(&self.shared.counters.rx_dropped, 1);
            return Placed::Dropped;
        }
        // §5.1.6.4: all buffers of one frame become used together.
        if let Err(e) = queue.add_used_batch(mem, used) {
            self.break_queue(RX, &e);
            Counters::add(&self.shared.counters.rx_dropped, 1);
            return Placed::Dropped;
        }
        Counters::add(&self.shared.counters.rx_frames, 1);
        Counters::add(&self.shared.counters.rx_bytes, data.len() as u64);
        Placed::Done
    }
}

/// Writes bytes `[pos, pos + take)` of the stream `hdr ++ data` into the
/// start of the buffer made of `descs`.
fn write_stream<M: GuestMemory>(
    mem: &M,
    descs: &[vmmio_device::queue::Descriptor],
    pos: u64,
    take: u64,
    hdr: &[u8],
    data: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let hlen = hdr.len() as u64;
    let mut done = 0u64;
    if pos < hlen {
        let h = (hlen - pos).min(take);
        // `pos + h <= hlen <= 12`.
        Region::new(descs, 0, h).write_from(mem, &hdr[pos as usize..(pos + h) as usize])?;
        done = h;
    }
    if done < take {
        // Frame bytes from `pos + done - hlen`; all within `data` because
        // `pos + take <= hlen + data.len()`.
        let from = (pos + done - hlen) as usize;
        let n = (take - done) as usize;
        Region::new(descs, done, take - done).write_from(mem, &data[from..from + n])?;
    }
    Ok(())
}
