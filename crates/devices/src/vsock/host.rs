//! The host side of the vsock device on Unix sockets, in Firecracker's
//! "hybrid vsock" convention:
//!
//! - the device listens on `PATH`; a host program connects, writes
//!   `CONNECT <port>\n` and, once the guest accepted, reads
//!   `OK <host_port>\n`; from then on the stream is the guest's `port`;
//! - a guest connecting to the host (CID 2) port `P` reaches the host
//!   program listening on `PATH_P`.
//!
//! Every socket is non-blocking: nothing here waits for a host program.

use std::io::{self, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::conn::{Conn, State};
use super::{Proto, ACCEPT_BATCH, FIRST_LOCAL_PORT};

/// Longest `CONNECT <port>\n` line accepted, in bytes ("CONNECT " plus
/// ten digits plus a newline fits with room to spare).
pub(crate) const MAX_LINE: usize = 32;

/// The listening socket at `PATH`.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) listener: UnixListener,
    pub(crate) path: PathBuf,
}

impl Listener {
    /// Binds a non-blocking listener at `path`.
    pub(crate) fn bind(path: &Path) -> io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Accepts one waiting host program, non-blocking; `None` when none
    /// waits.
    pub(crate) fn accept(&self) -> io::Result<Option<UnixStream>> {
        match self.listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                Ok(Some(s))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `PATH_<port>`, where a host program serving host port `port`
    /// listens.
    pub(crate) fn port_path(&self, port: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Connects to the host program serving `port` without waiting: a
    /// listener whose backlog is full refuses (`WouldBlock`) instead of
    /// stalling the guest.
    pub(crate) fn connect_port(&self, port: u32) -> io::Result<UnixStream> {
        let socket = Socket::new(Domain::UNIX, Type::STREAM.nonblocking().cloexec(), None)?;
        socket.connect(&SockAddr::unix(self.port_path(port))?)?;
        Ok(UnixStream::from(socket))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // The path was created by `bind`; a host program must not find a
        // dead socket there next time.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What a host program's first line asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// No complete line yet.
    Incomplete,
    /// `CONNECT <port>\n`.
    Connect(u32),
    /// End of file, a read error, an over-long or malformed line: close.
    Failed,
}

/// A host program accepted on `PATH` that has not finished its
/// `CONNECT <port>\n` line.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) stream: UnixStream,
    line: Vec<u8>,
    /// When it was accepted.
    pub(crate) since: std::time::Instant,
}

impl Pending {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            line: Vec::with_capacity(MAX_LINE),
            since: std::time::Instant::now(),
        }
    }

    /// Reads the line byte by byte (so no byte after the newline, which
    /// belongs to the guest, is taken), at most [`MAX_LINE`] bytes.
    pub(crate) fn read_line(&mut self) -> Handshake {
        let mut b = [0u8; 1];
        while self.line.len() < MAX_LINE {
            match self.stream.read(&mut b) {
                Ok(0) => return Handshake::Failed,
                Ok(_) if b[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => self.line.push(b[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Incomplete,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Handshake::Failed,
            }
        }
        Handshake::Failed
    }
}

/// Parses `CONNECT <port>` (without the newline): decimal port, one
/// space, nothing else.
pub(crate) fn parse_connect(line: &[u8]) -> Handshake {
    let Some(digits) = line.strip_prefix(b"CONNECT ") else {
        return Handshake::Failed;
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Handshake::Failed;
    }
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(port) => Handshake::Connect(port),
        None => Handshake::Failed,
    }
}

/// How long the listener is left alone after `accept` failed for a host
/// reason (EMFILE, ENFILE, ENOBUFS, ...): the listening socket stays
/// readable while programs wait, so retrying at once would spin a core.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The host side of [`Proto`]: host programs knocking on `PATH` and the
/// handshake deadlines.
impl Proto {
    /// Drops handshakes older than the connect timeout: host programs
    /// that never finished their line, and host-initiated connections
    /// the guest never answered (RST, so the guest forgets them too).
    /// Ends an accept back-off that is over.
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        if self.accept_paused.is_some_and(|t| t <= now) {
            self.accept_paused = None;
        }
        let limit = self.opts.connect_timeout;
        self.pending
            .retain(|_, p| now.duration_since(p.since) < limit);
        let stale: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state == State::Connecting && now.duration_since(c.since) >= limit)
            .map(|(&t, _)| t)
            .collect();
        for t in stale {
            self.reset(t);
        }
    }

    /// The earliest instant [`Proto::expire`] has something to do: a
    /// handshake's deadline or the end of an accept back-off.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let limit = self.opts.connect_timeout;
        let handshakes = self.pending.values().map(|p| p.since).chain(
            self.conns
                .values()
                .filter(|c| c.state == State::Connecting)
                .map(|c| c.since),
        );
        handshakes
            // An unrepresentable deadline is no deadline.
            .filter_map(|since| since.checked_add(limit))
            .chain(self.accept_paused)
            .min()
    }

    /// The listener is listed (readable) unless accepting is backed off.
    pub(super) fn accepting(&self) -> bool {
        self.accept_paused.is_none()
    }

    /// Host programs knocking on `PATH`.
    pub(super) fn accept(&mut self) {
        if !self.accepting() {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    log::log!(
                        self.host_errors.level(),
                        "virtio-vsock: accept failed: {e}; not accepting for {} ms",
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.accept_paused = Instant::now().checked_add(ACCEPT_BACKOFF);
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= self.opts.max_connections {
                log::log!(
                    self.refused.level(),
                    "virtio-vsock: connection limit {} reached, host program disconnected",
                    self.opts.max_connections
                );
                continue;
            }
            let token = self.new_token();
            self.pending.insert(token, Pending::new(stream));
        }
    }

    /// A host program in its `CONNECT` line has bytes.
    pub(super) fn handshake(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        match p.read_line() {
            Handshake::Incomplete => {}
            Handshake::Failed => {
                self.pending.remove(&token);
            }
            Handshake::Connect(port) => {
                let Some(p) = self.pending.remove(&token) else {
                    return;
                };
                let Some(local) = self.local_port(port) else {
                    return;
                };
                let mut c = Conn::new(
                    p.stream,
                    local,
                    port,
                    State::Connecting,
                    self.opts.buf_alloc,
                );
                c.owed.request = true;
                // Same token: the stream keeps its registration.
                self.insert_at(token, c);
            }
        }
    }

    /// A free host port for a connection to guest port `peer`.
    fn local_port(&mut self, peer: u32) -> Option<u32> {
        // At most `max_connections + 1` tries find a free one.
        for _ in 0..=self.opts.max_connections {
            let p = self.next_local_port;
            self.next_local_port = p.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.by_addr.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }
}

/// An accept error about one connection, not the listener (the program
/// went away before it was accepted): try the next one.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 5000"), Handshake::Connect(5000));
        assert_eq!(
            parse_connect(b"CONNECT 4294967295"),
            Handshake::Connect(u32::MAX)
        );
        for bad in [
            &b"CONNECT 4294967296"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT 12 ",
            b"connect 12",
            b"CONNECT+12",
            b"",
        ] {
            assert_eq!(parse_connect(bad), Handshake::Failed, "{bad:?}");
        }
    }

    #[test]
    fn the_line_is_bounded_and_bytes_after_it_stay_in_the_stream() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = Pending::new(a);
        assert_eq!(p.read_line(), Handshake::Incomplete);
        std::io::Write::write_all(&mut b, b"CONNECT 7\nhello").unwrap();
        assert_eq!(p.read_line(), Handshake::Connect(7));
        let mut rest = [0u8; 5];
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"hello");

        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        std::io::Write::write_all(&mut b, &[b'C'; MAX_LINE + 1]).unwrap();
        assert_eq!(Pending::new(a).read_line(), Handshake::Failed);
    }
}
