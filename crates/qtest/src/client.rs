//! The qtest line protocol over a unix socket.
//!
//! QEMU started with `-qtest unix:PATH,server=on` reads one command per line
//! (`readl 0xADDR`, `writel 0xADDR 0xVALUE`, ...) and answers each with one
//! line starting with `OK` or `FAIL`. When interrupts are intercepted it may
//! also send unsolicited `IRQ raise N` / `IRQ lower N` lines at any time;
//! [`QtestClient`] skips them.
//!
//! Every read is bounded by the client's timeout, so a QEMU that died or
//! hangs makes a test fail with [`QtestError::Timeout`] or
//! [`QtestError::Closed`] instead of hanging the test run.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a qtest exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QtestError {
    /// The socket failed for a reason other than a timeout.
    #[error("qtest socket I/O failed during `{command}`")]
    Io {
        /// The command being sent or answered.
        command: String,
        /// What the socket said.
        #[source]
        source: io::Error,
    },
    /// QEMU sent no complete answer within the client's timeout.
    #[error("QEMU did not answer `{command}` within {timeout:?}")]
    Timeout {
        /// The command left unanswered.
        command: String,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// QEMU closed the connection (it exited or crashed).
    #[error("QEMU closed the qtest connection during `{command}`")]
    Closed {
        /// The command left unanswered.
        command: String,
    },
    /// QEMU answered `FAIL ...`.
    #[error("QEMU refused `{command}`: {reply}")]
    Refused {
        /// The refused command.
        command: String,
        /// QEMU's answer line, without the line end.
        reply: String,
    },
    /// QEMU's answer is not of the form the command calls for.
    #[error("QEMU's answer to `{command}` is malformed: {reply:?}")]
    Malformed {
        /// The command answered.
        command: String,
        /// QEMU's answer line, without the line end.
        reply: String,
    },
}

/// A connection to QEMU's qtest server: guest-physical loads and stores of
/// 1, 2, 4 and 8 bytes, answered synchronously.
///
/// Addresses are guest-physical. Values are as the guest would see them
/// (little-endian for x86 targets), already converted by QEMU.
#[derive(Debug)]
pub struct QtestClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    irq_lines_skipped: u64,
}

impl QtestClient {
    /// Connects to the qtest socket at `path`; every later answer must
    /// arrive within `timeout`.
    ///
    /// # Errors
    ///
    /// [`QtestError::Io`] if the socket cannot be connected or configured.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QtestError> {
        let io_err = |source| QtestError::Io {
            command: format!("connect {}", path.display()),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io_err)?;
        Self::from_stream(stream, timeout).map_err(io_err)
    }

    /// Wraps an already connected stream (used by [`QtestClient::connect`]
    /// and by tests that play QEMU's side).
    ///
    /// # Errors
    ///
    /// The socket's error if the timeout cannot be set or the stream cannot
    /// be duplicated.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> io::Result<Self> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            timeout,
            irq_lines_skipped: 0,
        })
    }

    /// The timeout each answer must arrive within.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How many asynchronous `IRQ ...` lines were skipped so far.
    pub fn irq_lines_skipped(&self) -> u64 {
        self.irq_lines_skipped
    }

    /// Sends one command line (without line end) and returns what follows
    /// `OK` in the answer, trimmed (empty for commands that return nothing).
    ///
    /// # Errors
    ///
    /// [`QtestError::Refused`] on `FAIL`, [`QtestError::Malformed`] on any
    /// other answer, [`QtestError::Timeout`] / [`QtestError::Closed`] /
    /// [`QtestError::Io`] if no answer arrives.
    pub fn command(&mut self, command: &str) -> Result<String, QtestError> {
        let io_err = |source: io::Error| classify(command, self.timeout, source);
        self.writer
            .write_all(format!("{command}\n").as_bytes())
            .map_err(io_err)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| classify(command, self.timeout, e))?;
            if n == 0 {
                return Err(QtestError::Closed {
                    command: command.to_owned(),
                });
            }
            let line = line.trim_end();
            if line.starts_with("IRQ") {
                self.irq_lines_skipped += 1;
                if Instant::now() >= deadline {
                    return Err(QtestError::Timeout {
                        command: command.to_owned(),
                        timeout: self.timeout,
                    });
                }
                continue;
            }
            if line == "OK" {
                return Ok(String::new());
            }
            if let Some(rest) = line.strip_prefix("OK ") {
                return Ok(rest.trim().to_owned());
            }
            if line.starts_with("FAIL") {
                return Err(QtestError::Refused {
                    command: command.to_owned(),
                    reply: line.to_owned(),
                });
            }
            return Err(QtestError::Malformed {
                command: command.to_owned(),
                reply: line.to_owned(),
            });
        }
    }

    fn read(&mut self, verb: &str, addr: u64) -> Result<u64, QtestError> {
        let command = format!("{verb} {addr:#x}");
        let reply = self.command(&command)?;
        reply
            .strip_prefix("0x")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .ok_or(QtestError::Malformed { command, reply })
    }

    fn write(&mut self, verb: &str, addr: u64, value: u64) -> Result<(), QtestError> {
        let command = format!("{verb} {addr:#x} {value:#x}");
        let reply = self.command(&command)?;
        if reply.is_empty() {
            Ok(())
        } else {
            Err(QtestError::Malformed { command, reply })
        }
    }

    /// Loads one byte at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`], plus [`QtestError::Malformed`] if the
    /// value does not fit in a byte.
    pub fn readb(&mut self, addr: u64) -> Result<u8, QtestError> {
        let v = self.read("readb", addr)?;
        narrow(v, addr, "readb")
    }

    /// Loads 2 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::readb`].
    pub fn readw(&mut self, addr: u64) -> Result<u16, QtestError> {
        let v = self.read("readw", addr)?;
        narrow(v, addr, "readw")
    }

    /// Loads 4 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::readb`].
    pub fn readl(&mut self, addr: u64) -> Result<u32, QtestError> {
        let v = self.read("readl", addr)?;
        narrow(v, addr, "readl")
    }

    /// Loads 8 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`].
    pub fn readq(&mut self, addr: u64) -> Result<u64, QtestError> {
        self.read("readq", addr)
    }

    /// Stores one byte at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`].
    pub fn writeb(&mut self, addr: u64, value: u8) -> Result<(), QtestError> {
        self.write("writeb", addr, value.into())
    }

    /// Stores 2 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`].
    pub fn writew(&mut self, addr: u64, value: u16) -> Result<(), QtestError> {
        self.write("writew", addr, value.into())
    }

    /// Stores 4 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`].
    pub fn writel(&mut self, addr: u64, value: u32) -> Result<(), QtestError> {
        self.write("writel", addr, value.into())
    }

    /// Stores 8 bytes at guest-physical `addr`.
    ///
    /// # Errors
    ///
    /// As [`QtestClient::command`].
    pub fn writeq(&mut self, addr: u64, value: u64) -> Result<(), QtestError> {
        self.write("writeq", addr, value)
    }
}

fn narrow<T: TryFrom<u64>>(value: u64, addr: u64, verb: &str) -> Result<T, QtestError> {
    T::try_from(value).map_err(|_| QtestError::Malformed {
        command: format!("{verb} {addr:#x}"),
        reply: format!("OK {value:#x}"),
    })
}

fn classify(command: &str, timeout: Duration, source: io::Error) -> QtestError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => QtestError::Timeout {
            command: command.to_owned(),
            timeout,
        },
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::UnexpectedEof => QtestError::Closed {
            command: command.to_owned(),
        },
        _ => QtestError::Io {
            command: command.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::thread;

    /// Plays QEMU: answers each line with the next scripted reply, after
    /// checking the line is the expected command.
    fn fake(script: Vec<(&'static str, &'static str)>) -> (QtestClient, thread::JoinHandle<()>) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let handle = thread::spawn(move || {
            let mut reader = BufReader::new(theirs.try_clone().expect("clone"));
            let mut writer = theirs;
            for (expect, reply) in script {
                let mut line = String::new();
                if reader.read_line(&mut line).expect("read") == 0 {
                    return;
                }
                assert_eq!(line.trim_end(), expect);
                writer.write_all(reply.as_bytes()).expect("write");
            }
        });
        let client = QtestClient::from_stream(ours, Duration::from_millis(500)).expect("client");
        (client, handle)
    }

    #[test]
    fn readl_parses_hex_and_skips_irq_lines() {
        let (mut c, h) = fake(vec![(
            "readl 0xfeb00000",
            "IRQ raise 5\nIRQ lower 5\nOK 0x0000000074726976\n",
        )]);
        assert_eq!(c.readl(0xfeb0_0000).expect("readl"), 0x7472_6976);
        assert_eq!(c.irq_lines_skipped(), 2);
        h.join().expect("fake");
    }

    #[test]
    fn write_expects_bare_ok() {
        let (mut c, h) = fake(vec![
            ("writel 0x10 0x5", "OK\n"),
            ("writeb 0x11 0x1", "OK 0x1\n"),
        ]);
        c.writel(0x10, 5).expect("writel");
        assert!(matches!(
            c.writeb(0x11, 1),
            Err(QtestError::Malformed { .. })
        ));
        h.join().expect("fake");
    }

    #[test]
    fn fail_is_refused_and_oversized_value_is_malformed() {
        let (mut c, h) = fake(vec![
            ("bogus", "FAIL Unknown command 'bogus'\n"),
            ("readb 0x1", "OK 0x100\n"),
            ("readw 0x2", "OK zz\n"),
        ]);
        assert!(matches!(
            c.command("bogus"),
            Err(QtestError::Refused { .. })
        ));
        assert!(matches!(c.readb(1), Err(QtestError::Malformed { .. })));
        assert!(matches!(c.readw(2), Err(QtestError::Malformed { .. })));
        h.join().expect("fake");
    }

    #[test]
    fn silence_times_out_and_hangup_is_closed() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut c = QtestClient::from_stream(ours, Duration::from_millis(50)).expect("client");
        let start = Instant::now();
        assert!(matches!(c.readl(0), Err(QtestError::Timeout { .. })));
        assert!(start.elapsed() < Duration::from_secs(5));
        drop(theirs);
        let e = c.readl(0).expect_err("peer is gone");
        assert!(
            matches!(e, QtestError::Closed { .. }),
            "unexpected error {e:?}"
        );
    }
}
