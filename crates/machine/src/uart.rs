//! An ns16550a UART: the guest's serial console.
//!
//! Registers follow the National Semiconductor PC16550D data sheet ("Register
//! Addresses", `reg-shift` 0, one byte per register): RBR/THR/DLL at 0, IER/DLM at 1,
//! IIR/FCR at 2, LCR at 3, MCR at 4, LSR at 5, MSR at 6, SCR at 7; DLAB (LCR bit 7) selects
//! the divisor latch. Transmission is instantaneous (THR is always empty), received bytes
//! come from a queue fed by [`ConsoleInput`]. The interrupt output (PLIC source
//! [`crate::layout::UART_IRQ`]) is high while an enabled condition holds: received data
//! available (IER bit 0) or transmitter holding register empty (IER bit 1; cleared by reading
//! IIR or writing THR, set again when the byte has gone, i.e. at once).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::plic::IrqLine;

/// Upper bound of buffered, unread input bytes; further input is dropped (a stuck guest must
/// not make the host grow without bound).
const RX_CAPACITY: usize = 64 * 1024;

mod reg {
    pub const RBR_THR_DLL: u64 = 0;
    pub const IER_DLM: u64 = 1;
    pub const IIR_FCR: u64 = 2;
    pub const LCR: u64 = 3;
    pub const MCR: u64 = 4;
    pub const LSR: u64 = 5;
    pub const MSR: u64 = 6;
    pub const SCR: u64 = 7;
}

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO: u8 = 0xc0;

struct UartState {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    fcr: u8,
    thre_pending: bool,
    rx: VecDeque<u8>,
    out: Box<dyn Write + Send>,
    irq: IrqLine,
}

impl UartState {
    fn update_irq(&self) {
        let rx = self.ier & IER_RDI != 0 && !self.rx.is_empty();
        let tx = self.ier & IER_THRI != 0 && self.thre_pending;
        self.irq.set_level(rx || tx);
    }

    fn emit(&mut self, byte: u8) {
        // A console sink that fails (closed pipe) must not stop the guest.
        if let Err(e) = self.out.write_all(&[byte]).and_then(|()| self.out.flush()) {
            log::debug!("uart: console output failed: {e}");
        }
    }

    fn push_input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.rx.len() >= RX_CAPACITY {
                log::warn!("uart: input buffer full, dropping input");
                break;
            }
            self.rx.push_back(b);
        }
        self.update_irq();
    }
}

/// The UART, shared between the bus (guest accesses), SBI console calls and input feeders.
#[derive(Clone)]
pub(crate) struct Uart {
    state: Arc<Mutex<UartState>>,
}

impl Uart {
    pub(crate) fn new(out: Box<dyn Write + Send>, irq: IrqLine) -> Self {
        Self {
            state: Arc::new(Mutex::new(UartState {
                ier: 0,
                lcr: 0,
                mcr: 0,
                scr: 0,
                dll: 0,
                dlm: 0,
                fcr: 0,
                thre_pending: false,
                rx: VecDeque::new(),
                out,
                irq,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, UartState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a byte to the console sink directly (SBI legacy console putchar).
    pub(crate) fn console_putchar(&self, byte: u8) {
        self.lock().emit(byte);
    }

    /// Takes a received byte (SBI legacy console getchar).
    pub(crate) fn console_getchar(&self) -> Option<u8> {
        let mut s = self.lock();
        let b = s.rx.pop_front();
        s.update_irq();
        b
    }

    /// Writes `bytes` to the console sink directly, flushed once (SBI DBCN console_write).
    pub(crate) fn console_write(&self, bytes: &[u8]) {
        let mut s = self.lock();
        if let Err(e) = s.out.write_all(bytes).and_then(|()| s.out.flush()) {
            log::debug!("uart: console output failed: {e}");
        }
    }

    /// Takes up to `max` received bytes (SBI DBCN console_read); none waiting gives an
    /// empty vector.
    pub(crate) fn console_read(&self, max: usize) -> Vec<u8> {
        let mut s = self.lock();
        let n = max.min(s.rx.len());
        let bytes: Vec<u8> = s.rx.drain(..n).collect();
        s.update_irq();
        bytes
    }

    /// A handle that feeds input bytes.
    pub(crate) fn input(&self) -> ConsoleInput {
        ConsoleInput { uart: self.clone() }
    }

    /// Guest load from register `offset`. Only byte accesses are meaningful (`reg-io-width`
    /// 1); a wider load reads the register at `offset` into its first byte.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut s = self.lock();
        let dlab = s.lcr & LCR_DLAB != 0;
        let v = match offset {
            reg::RBR_THR_DLL if dlab => s.dll,
            reg::RBR_THR_DLL => {
                let b = s.rx.pop_front().unwrap_or(0);
                s.update_irq();
                b
            }
            reg::IER_DLM if dlab => s.dlm,
            reg::IER_DLM => s.ier,
            reg::IIR_FCR => {
                let fifo = if s.fcr & 1 != 0 { IIR_FIFO } else { 0 };
                let id = if s.ier & IER_RDI != 0 && !s.rx.is_empty() {
                    IIR_RDI
                } else if s.ier & IER_THRI != 0 && s.thre_pending {
                    // Reading IIR with THRE as the source clears it.
                    s.thre_pending = false;
                    s.update_irq();
                    IIR_THRI
                } else {
                    IIR_NONE
                };
                id | fifo
            }
            reg::LCR => s.lcr,
            reg::MCR => s.mcr,
            reg::LSR => LSR_THRE | LSR_TEMT | if s.rx.is_empty() { 0 } else { LSR_DR },
            reg::MSR => {
                if s.mcr & MCR_LOOP != 0 {
                    // Loopback: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2.
                    let m = s.mcr;
                    ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
                } else {
                    // DCD, DSR and CTS asserted: a terminal is always attached.
                    0xb0
                }
            }
            reg::SCR => s.scr,
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = v;
        }
    }

    /// Guest store to register `offset`; the first byte of `data` is the value.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let mut s = self.lock();
        let dlab = s.lcr & LCR_DLAB != 0;
        match offset {
            reg::RBR_THR_DLL if dlab => s.dll = v,
            reg::RBR_THR_DLL => {
                if s.mcr & MCR_LOOP != 0 {
                    s.push_input(&[v]);
                } else {
                    s.emit(v);
                }
                s.thre_pending = true;
            }
            reg::IER_DLM if dlab => s.dlm = v,
            reg::IER_DLM => {
                let old = s.ier;
                s.ier = v & 0x0f;
                if old & IER_THRI == 0 && s.ier & IER_THRI != 0 {
                    // THR is empty: enabling its interrupt raises it at once.
                    s.thre_pending = true;
                }
            }
            reg::IIR_FCR => {
                if v & 0x02 != 0 {
                    s.rx.clear();
                }
                s.fcr = v & 0xc1;
            }
            reg::LCR => s.lcr = v,
            reg::MCR => s.mcr = v & 0x1f,
            reg::SCR => s.scr = v,
            _ => log::debug!("uart: store to read-only offset {offset:#x} ignored"),
        }
        s.update_irq();
    }
}

/// Feeds bytes to the guest console's receive queue (and so to the guest's `ttyS0` or SBI
/// getchar). Cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ConsoleInput {
    uart: Uart,
}

impl ConsoleInput {
    /// Appends `bytes` to the receive queue and raises the receive interrupt if enabled.
    /// Bytes beyond 64 KiB of unread input are dropped.
    pub fn push(&self, bytes: &[u8]) {
        self.uart.lock().push_input(bytes);
    }
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleInput")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plic::IrqShared;

    use crate::tests::Sink;

    fn uart() -> (Uart, Sink, IrqLine) {
        let sink = Sink::default();
        let irq = IrqLine::new(Arc::new(IrqShared::default()), 10);
        (Uart::new(Box::new(sink.clone()), irq.clone()), sink, irq)
    }

    fn rd(u: &Uart, off: u64) -> u8 {
        let mut b = [0u8; 1];
        u.read(off, &mut b);
        b[0]
    }

    #[test]
    fn transmit_and_thre_interrupt() {
        let (u, sink, irq) = uart();
        u.write(reg::RBR_THR_DLL, b"h");
        u.write(reg::RBR_THR_DLL, b"i");
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        assert_eq!(rd(&u, reg::LSR), LSR_THRE | LSR_TEMT);
        assert!(!irq.level());
        u.write(reg::IER_DLM, &[IER_THRI]);
        assert!(irq.level());
        assert_eq!(rd(&u, reg::IIR_FCR), IIR_THRI);
        assert!(!irq.level(), "reading IIR clears THRE");
        assert_eq!(rd(&u, reg::IIR_FCR), IIR_NONE);
        u.write(reg::RBR_THR_DLL, b"!");
        assert!(irq.level());
    }

    #[test]
    fn receive_and_interrupt_priority() {
        let (u, _sink, irq) = uart();
        u.write(reg::IIR_FCR, &[0x01]);
        u.write(reg::IER_DLM, &[IER_RDI | IER_THRI]);
        u.input().push(b"ab");
        assert_eq!(rd(&u, reg::LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&u, reg::IIR_FCR), IIR_RDI | IIR_FIFO);
        assert_eq!(rd(&u, reg::RBR_THR_DLL), b'a');
        assert_eq!(rd(&u, reg::RBR_THR_DLL), b'b');
        assert_eq!(rd(&u, reg::LSR) & LSR_DR, 0);
        assert_eq!(rd(&u, reg::IIR_FCR), IIR_THRI | IIR_FIFO);
        assert_eq!(rd(&u, reg::IIR_FCR), IIR_NONE | IIR_FIFO);
        assert!(!irq.level());
        assert_eq!(rd(&u, reg::RBR_THR_DLL), 0, "empty queue reads 0");
    }

    #[test]
    fn divisor_latch_scratch_and_loopback() {
        let (u, sink, _irq) = uart();
        u.write(reg::LCR, &[LCR_DLAB | 3]);
        u.write(reg::RBR_THR_DLL, &[0x12]);
        u.write(reg::IER_DLM, &[0x34]);
        assert_eq!(rd(&u, reg::RBR_THR_DLL), 0x12);
        assert_eq!(rd(&u, reg::IER_DLM), 0x34);
        u.write(reg::LCR, &[3]);
        assert_eq!(rd(&u, reg::IER_DLM), 0, "IER untouched by DLM writes");
        u.write(reg::SCR, &[0x5a]);
        assert_eq!(rd(&u, reg::SCR), 0x5a);
        u.write(reg::MCR, &[MCR_LOOP | 0x0a]);
        assert_eq!(rd(&u, reg::MSR) & 0xf0, 0x90);
        u.write(reg::RBR_THR_DLL, b"x");
        assert_eq!(rd(&u, reg::RBR_THR_DLL), b'x');
        assert!(sink.0.lock().unwrap().is_empty());
    }
}
