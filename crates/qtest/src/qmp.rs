//! A minimal QMP client (QEMU Machine Protocol, one JSON object per line)
//! on the second control socket of a qtest QEMU: what a test needs to make
//! QEMU change a device while our driver runs (`block_resize`, ...).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or timed out.
    #[error("QMP socket")]
    Io(#[from] std::io::Error),
    /// QEMU sent something that is not JSON.
    #[error("QMP answer is not JSON: {0:?}")]
    Json(String),
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {error}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error object.
        error: Value,
    },
    /// The connection closed before the answer.
    #[error("QMP connection closed")]
    Closed,
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads QEMU's greeting and
    /// leaves capabilities negotiation; every later read waits at most
    /// `timeout`.
    ///
    /// # Errors
    /// [`QmpError`] if the socket or the negotiation fails.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let out = UnixStream::connect(path)?;
        out.set_read_timeout(Some(timeout))?;
        let mut qmp = Self {
            input: BufReader::new(out.try_clone()?),
            out,
        };
        qmp.read()?; // {"QMP": {...}}
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Json(line))
    }

    /// Runs `command` with `arguments` and returns its `return` value;
    /// asynchronous events that arrive meanwhile are skipped.
    ///
    /// # Errors
    /// [`QmpError::Command`] when QEMU answers with an error; the others
    /// when the exchange fails.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.out, "{request}")?;
        loop {
            let mut answer = self.read()?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = answer.get_mut("error") {
                return Err(QmpError::Command {
                    command: command.to_owned(),
                    error: error.take(),
                });
            }
            // An event ({"event": ...}): not ours.
        }
    }
}
