//! The loopback vsock path against a plain Unix socket pair: one
//! connection's guest-to-host throughput (`vmmio-driver` vsock ->
//! `MmioTransport` -> `vmmio-devices` vsock -> a host Unix stream), and
//! the connection setup rate (connect, established, clean close) against
//! `connect` + `accept` + close on a Unix listener.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vmmio_device::TransportVersion;
use vmmio_devices::vsock::Vsock as Device;
use vmmio_driver::vsock::{ConnId, ConnState, Vsock, HOST_CID};
use vmmio_driver::Transport;
use vmmio_integration::{window, GuestHal, Loopback, Mem};

/// Bytes moved per call of the throughput workloads.
pub const TRANSFER: usize = 1 << 20;
/// Bytes per `write` on the socket pair (the driver's packets carry at
/// most `vmmio_driver::vsock::MAX_TX_PAYLOAD` bytes each; the pair gets
/// its best case).
const PAIR_CHUNK: usize = 64 * 1024;
/// Pump rounds without progress before a workload gives up (a bug).
const STALL: u32 = 1_000_000;

fn stalled() -> io::Error {
    io::Error::other("vsock loopback made no progress")
}

/// A driver and device in loopback, the device's host side in a temporary
/// directory with a host program listening on port 1234.
pub struct Loop {
    vs: Vsock<Loopback, GuestHal>,
    listener: UnixListener,
    dir: PathBuf,
}

impl Loop {
    /// Sets it up (Version 2 window, default options).
    ///
    /// # Errors
    /// Host socket setup failing.
    pub fn new() -> io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vmmio-bench-vsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("v.sock");
        let dev = Device::<Mem>::new(3, &path).map_err(io::Error::other)?;
        let listener = UnixListener::bind(dir.join("v.sock_1234"))?;
        let w = window(TransportVersion::Modern, Box::new(dev));
        let t = Transport::probe(w.io)
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("no device"))?;
        let vs = Vsock::new(t, w.hal).map_err(io::Error::other)?;
        Ok(Self { vs, listener, dir })
    }

    fn pump(&mut self) -> io::Result<()> {
        self.vs.poll().map_err(io::Error::other)?;
        self.vs
            .transport()
            .io_mut()
            .transport
            .poll_backends(Duration::ZERO)?;
        Ok(())
    }

    /// Opens a connection to host port 1234 and returns both ends.
    ///
    /// # Errors
    /// The connection failing or stalling.
    pub fn connect(&mut self) -> io::Result<(ConnId, UnixStream)> {
        let id = self.vs.connect(HOST_CID, 1234).map_err(io::Error::other)?;
        for _ in 0..STALL {
            match self.vs.state(id) {
                Some(ConnState::Connected) => {
                    let (s, _) = self.listener.accept()?;
                    s.set_nonblocking(true)?;
                    return Ok((id, s));
                }
                Some(_) => self.pump()?,
                None => return Err(io::Error::other("refused")),
            }
        }
        Err(stalled())
    }

    /// Closes `id` cleanly and waits until it is gone.
    ///
    /// # Errors
    /// The close stalling.
    pub fn close(&mut self, id: ConnId) -> io::Result<()> {
        self.vs.close(id).map_err(io::Error::other)?;
        for _ in 0..STALL {
            if self.vs.state(id).is_none() {
                return Ok(());
            }
            self.pump()?;
        }
        Err(stalled())
    }

    /// One connection setup and teardown: connect, established, host
    /// accepts, guest closes, RST. Returns 1.
    ///
    /// # Errors
    /// As [`Loop::connect`] and [`Loop::close`].
    pub fn setup(&mut self) -> io::Result<u64> {
        let (id, _s) = self.connect()?;
        self.close(id)?;
        Ok(1)
    }

    /// Moves `data` from the guest to the host end `host` of `id`; returns
    /// the bytes moved.
    ///
    /// # Errors
    /// A host read failing, or the transfer stalling.
    pub fn transfer(&mut self, id: ConnId, host: &mut UnixStream, data: &[u8]) -> io::Result<u64> {
        let mut sink = vec![0u8; PAIR_CHUNK];
        let (mut sent, mut got, mut idle) = (0usize, 0usize, 0u32);
        while got < data.len() {
            let mut moved = false;
            if sent < data.len() {
                let n = self.vs.send(id, &data[sent..]).map_err(io::Error::other)?;
                sent += n;
                moved |= n > 0;
            }
            loop {
                match host.read(&mut sink) {
                    Ok(0) => return Err(io::Error::other("early end of stream")),
                    Ok(n) => {
                        got += n;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            self.pump()?;
            idle = if moved { 0 } else { idle + 1 };
            if idle > STALL {
                return Err(stalled());
            }
        }
        Ok(got as u64)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peer of [`Loop::transfer`]: the same bytes through a Unix socket
/// pair, written and read in one thread.
///
/// # Errors
/// A socket error.
pub fn pair_transfer(a: &mut UnixStream, b: &mut UnixStream, data: &[u8]) -> io::Result<u64> {
    use std::io::Write;
    let mut sink = vec![0u8; PAIR_CHUNK];
    let (mut sent, mut got) = (0usize, 0usize);
    while got < data.len() {
        if sent < data.len() {
            let end = (sent + PAIR_CHUNK).min(data.len());
            match a.write(&data[sent..end]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        match b.read(&mut sink) {
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got as u64)
}

/// The peer of [`Loop::setup`]: `connect` to a Unix listener, `accept`,
/// close both. Returns 1.
///
/// # Errors
/// A socket error.
pub fn pair_setup(listener: &UnixListener, path: &std::path::Path) -> io::Result<u64> {
    let c = UnixStream::connect(path)?;
    let (s, _) = listener.accept()?;
    drop(c);
    drop(s);
    Ok(1)
}
