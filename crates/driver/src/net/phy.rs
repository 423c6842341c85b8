//! `smoltcp::phy::Device` for [`Net`] (cargo feature `smoltcp`): an
//! Ethernet-medium device whose receive token lends the frame the driver
//! just assembled and whose transmit token fills a transmit buffer.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use vmmio_spec::net::ETH_HLEN;

use super::{Net, NetStats, TxSide};
use crate::hal::Hal;
use crate::io::RegisterIo;
use crate::transport::Transport;

/// A received frame, lent to smoltcp.
pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// A transmit buffer for one frame.
pub struct TxToken<'a, R: RegisterIo, H: Hal + Clone> {
    tx: &'a mut TxSide<H>,
    transport: &'a mut Transport<R>,
    stats: &'a mut NetStats,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<T, F>(self, f: F) -> T
    where
        F: FnOnce(&[u8]) -> T,
    {
        f(self.frame)
    }
}

impl<R: RegisterIo, H: Hal + Clone> phy::TxToken for TxToken<'_, R, H> {
    fn consume<T, F>(self, len: usize, f: F) -> T
    where
        F: FnOnce(&mut [u8]) -> T,
    {
        let mut buf = core::mem::take(&mut self.tx.scratch);
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        match self.tx.send(self.transport, &buf) {
            Ok(()) => self.stats.tx_frames += 1,
            // smoltcp has no way to hear it: the frame is lost, as on a
            // wire, and TCP sends it again.
            Err(e) => log::debug!("virtio-net: frame of {len} bytes not sent: {e}"),
        }
        self.tx.scratch = buf;
        r
    }
}

impl<R: RegisterIo, H: Hal + Clone> phy::Device for Net<R, H> {
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, R, H>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        match self.next_frame() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                log::warn!("virtio-net: receive failed: {e}");
                return None;
            }
        }
        let tx = self.tx.as_mut()?;
        Some((
            RxToken { frame: &self.frame },
            TxToken {
                tx,
                transport: &mut self.transport,
                stats: &mut self.stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        if !self.can_transmit().unwrap_or(false) {
            return None;
        }
        Some(TxToken {
            tx: self.tx.as_mut()?,
            transport: &mut self.transport,
            stats: &mut self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        // smoltcp counts the Ethernet header in an Ethernet device's MTU.
        caps.max_transmission_unit = self.mtu + ETH_HLEN;
        caps.max_burst_size = Some(super::TX_BUFFERS);
        caps
    }
}
