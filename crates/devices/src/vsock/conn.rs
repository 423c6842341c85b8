//! One vsock stream connection: its state, the credit accounting of
//! virtio v1.4 §5.10.6.3 "Buffer Space Management" in both directions, and
//! the bytes waiting on either side.
//!
//! Counters are free-running `u32`s compared with wrapping arithmetic, as
//! the spec's `peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use vmmio_spec::vsock::{SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// A host program connected and asked for a guest port: the device
    /// owes or has sent REQUEST and waits for RESPONSE or RST.
    Connecting,
    /// RESPONSE went one way or the other: data may flow.
    Established,
}

/// Control packets the device owes the guest for this connection. Flags,
/// not a queue: owing the same packet twice sends it once, so what a
/// connection can owe is bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Owed {
    /// REQUEST (host-initiated connection).
    pub(crate) request: bool,
    /// RESPONSE (guest-initiated connection accepted).
    pub(crate) response: bool,
    /// SHUTDOWN with these flags (0: none owed).
    pub(crate) shutdown: u32,
    /// CREDIT_UPDATE (any packet sent carries the credit, so sending any
    /// packet of this connection pays it).
    pub(crate) credit_update: bool,
}

/// A connection between a guest port and a host Unix stream.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The host program's end.
    pub(crate) stream: UnixStream,
    /// Host-side (CID 2) port.
    pub(crate) local_port: u32,
    /// Guest-side port.
    pub(crate) peer_port: u32,
    pub(crate) state: State,
    pub(crate) owed: Owed,
    /// Receive buffer space the device grants the guest, in bytes.
    pub(crate) buf_alloc: u32,
    /// Payload bytes from the guest handed to the host stream.
    pub(crate) fwd_cnt: u32,
    /// Payload bytes received from the guest.
    pub(crate) rx_cnt: u32,
    /// The `fwd_cnt` the guest last heard.
    pub(crate) fwd_cnt_sent: u32,
    /// The guest's receive buffer space (its last `buf_alloc`).
    pub(crate) peer_buf_alloc: u32,
    /// The guest's last `fwd_cnt`.
    pub(crate) peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest.
    pub(crate) tx_cnt: u32,
    /// Guest payload the host stream did not take yet; at most
    /// `buf_alloc` bytes (the guest's credit).
    pub(crate) to_host: VecDeque<u8>,
    /// The `OK <port>\n` line owed to a host program that connected, not
    /// counted as guest payload.
    pub(crate) handshake: Vec<u8>,
    /// Bytes read from the host stream, not yet in an rx buffer; at most
    /// the guest's free credit when they were read.
    pub(crate) staged: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent (permanent, §5.10.6.5).
    pub(crate) peer_shutdown: u32,
    /// The host stream reached end of file (or failed to read).
    pub(crate) host_eof: bool,
    /// Write side of the host stream shut down.
    pub(crate) host_write_closed: bool,
    /// The host stream may have bytes to read.
    pub(crate) host_readable: bool,
    /// When the connection was created (for the handshake timeout).
    pub(crate) since: std::time::Instant,
}

impl Conn {
    /// A connection over `stream` granting `buf_alloc` bytes of credit.
    pub(crate) fn new(
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        state: State,
        buf_alloc: u32,
    ) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            owed: Owed::default(),
            buf_alloc,
            fwd_cnt: 0,
            rx_cnt: 0,
            fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            to_host: VecDeque::new(),
            handshake: Vec::new(),
            staged: VecDeque::new(),
            peer_shutdown: 0,
            host_eof: false,
            host_write_closed: false,
            host_readable: false,
            since: std::time::Instant::now(),
        }
    }

    /// Records the credit carried by any packet of this flow (§5.10.6.3:
    /// every packet of a stream flow carries valid `buf_alloc`/`fwd_cnt`).
    pub(crate) fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the device may still send the guest:
    /// `peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`, 0 when the guest's
    /// numbers are inconsistent (a `fwd_cnt` ahead of what was sent).
    pub(crate) fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Credit the guest still has: payload bytes it may send before it
    /// hears a newer `fwd_cnt`.
    pub(crate) fn own_free(&self) -> u32 {
        // `rx_cnt - fwd_cnt <= buf_alloc` holds: `accept_payload` refuses
        // more.
        self.buf_alloc
            .saturating_sub(self.rx_cnt.wrapping_sub(self.fwd_cnt))
    }

    /// Whether the guest may still receive (it did not shut down its
    /// receive side) and the host still sends.
    pub(crate) fn reads_host(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_F_RECEIVE == 0
    }

    /// Whether the host stream should be polled for reading: the guest has
    /// credit and nothing read is waiting. Also while the stream is known
    /// readable: the device reads at most two stages per run, and only a
    /// wakeup makes it run again (the guest may not notify for a while).
    pub(crate) fn wants_read(&self) -> bool {
        self.reads_host() && self.staged.is_empty() && self.peer_free() > 0
    }

    /// Whether bytes wait for room in the host stream.
    pub(crate) fn wants_write(&self) -> bool {
        !self.handshake.is_empty() || !self.to_host.is_empty()
    }

    /// Whether the connection has a packet for an rx buffer now.
    pub(crate) fn has_packet(&self) -> bool {
        self.owed.request
            || self.owed.response
            || self.owed.shutdown != 0
            || self.owed.credit_update
            || (!self.staged.is_empty() && self.peer_free() > 0)
    }

    /// The guest sent `len` payload bytes: checks them against the credit
    /// it was given.
    ///
    /// # Errors
    /// `Err(())` when `len` exceeds the guest's credit: the connection
    /// must be reset (§5.10.6.3: the driver MUST only send within it).
    pub(crate) fn accept_payload(&mut self, len: u32) -> Result<(), ()> {
        if len > self.own_free() {
            return Err(());
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(len);
        Ok(())
    }

    /// Bytes handed to the host stream: advances `fwd_cnt` and owes a
    /// CREDIT_UPDATE once the guest's view lags by a quarter of
    /// `buf_alloc` (so a guest that used up its credit always hears back
    /// once the bytes moved on).
    pub(crate) fn forwarded(&mut self, n: u32) {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n);
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= (self.buf_alloc / 4).max(1) {
            self.owed.credit_update = true;
        }
    }

    /// Writes `data` (guest payload) to the host stream, keeping what it
    /// does not take in `to_host` behind earlier bytes.
    ///
    /// # Errors
    /// The host stream's write error other than `WouldBlock`.
    pub(crate) fn send_to_host(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        if self.handshake.is_empty() && self.to_host.is_empty() {
            done = write_some(&mut self.stream, data)?;
            // `done <= data.len() <= u32::MAX` (a packet's `len`).
            self.forwarded(u32::try_from(done).unwrap_or(u32::MAX));
        }
        self.to_host.extend(&data[done..]);
        Ok(())
    }

    /// Writes waiting bytes to the host stream until it would block; then,
    /// when nothing waits and the guest will send no more, shuts the
    /// stream's write side.
    ///
    /// # Errors
    /// The host stream's write error other than `WouldBlock`.
    pub(crate) fn flush_to_host(&mut self) -> io::Result<()> {
        while !self.handshake.is_empty() {
            let n = write_some(&mut self.stream, &self.handshake)?;
            if n == 0 {
                return Ok(());
            }
            self.handshake.drain(..n);
        }
        // At most `buf_alloc / 1` rounds: each writes a non-empty slice.
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                return Ok(());
            }
            self.to_host.drain(..n);
            self.forwarded(u32::try_from(n).unwrap_or(u32::MAX));
        }
        if self.peer_shutdown & SHUTDOWN_F_SEND != 0 && !self.host_write_closed {
            self.host_write_closed = true;
            // The host may have gone already; nothing more to do then.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether the guest shut down both directions and every byte it sent
    /// reached the host: the device answers with RST (§5.10.6.5 clean
    /// disconnect).
    pub(crate) fn closed_by_peer(&self) -> bool {
        self.peer_shutdown & (SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND)
            == (SHUTDOWN_F_RECEIVE | SHUTDOWN_F_SEND)
            && !self.wants_write()
    }
}

/// One non-blocking write: the bytes taken, 0 when the stream is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        return match stream.write(data) {
            Ok(0) if !data.is_empty() => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(buf_alloc: u32) -> Conn {
        let (a, _b) = UnixStream::pair().unwrap();
        Conn::new(a, 1, 2, State::Established, buf_alloc)
    }

    /// §5.10.6.3: `peer_free = peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`,
    /// across the 32-bit wrap, and 0 (never more) when the guest's numbers
    /// make no sense.
    #[test]
    fn peer_free_follows_the_spec_formula_across_wrap() {
        let mut c = conn(100);
        c.tx_cnt = 5u32.wrapping_sub(10); // sent 2^32 - 5 bytes
        c.peer_credit(64, 5u32.wrapping_sub(30));
        assert_eq!(c.peer_free(), 64 - 20);
        // fwd_cnt ahead of what was sent: no credit, no overflow.
        c.peer_credit(64, c.tx_cnt.wrapping_add(1));
        assert_eq!(c.peer_free(), 0);
        c.peer_credit(u32::MAX, c.tx_cnt);
        assert_eq!(c.peer_free(), u32::MAX);
    }

    #[test]
    fn payload_beyond_the_granted_credit_is_refused() {
        let mut c = conn(100);
        assert!(c.accept_payload(60).is_ok());
        assert!(c.accept_payload(41).is_err());
        assert!(c.accept_payload(40).is_ok());
        assert_eq!(c.own_free(), 0);
        c.forwarded(30);
        assert!(c.owed.credit_update, "a quarter of buf_alloc moved on");
        assert_eq!(c.own_free(), 30);
        assert!(c.accept_payload(31).is_err());
    }
}
