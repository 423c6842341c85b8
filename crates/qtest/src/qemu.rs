//! Starting and stopping one QEMU instance per test.
//!
//! [`QemuBuilder`] runs `qemu-system-x86_64 -M microvm` with the qtest
//! server on a unix socket, guest RAM in a shared file, a firmware that
//! only halts the vCPU (see [`HALT_FIRMWARE_SIZE`]) and the requested
//! virtio-mmio devices. [`Qemu`] owns the
//! process, the temp dir (socket, RAM file, disk images, console output),
//! the [`QtestClient`] and the [`GuestRam`] mapping; dropping it kills and
//! reaps QEMU, also when a test panics.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmmio_driver::Transport;

use crate::client::{QtestClient, QtestError};
use crate::glue::{qtest_limits, QtestHal, QtestWindow};
use crate::memory::{GuestRam, RamError};

/// The QEMU binary the harness runs, looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Guest-physical address of the first virtio-mmio slot of QEMU's
/// `microvm` machine.
pub const MICROVM_MMIO_BASE: u64 = 0xfeb0_0000;

/// Distance in bytes between two `microvm` virtio-mmio slots (each window
/// is this long, config space included).
pub const MICROVM_SLOT_STRIDE: u64 = 0x200;

/// Number of virtio-mmio slots of the `microvm` machine. Every slot answers
/// with MagicValue and Version; empty ones read DeviceID 0.
pub const MICROVM_SLOTS: usize = 24;

/// Guest-physical base of `microvm` virtio-mmio slot `slot`
/// (`0..MICROVM_SLOTS`).
pub fn slot_base(slot: usize) -> u64 {
    MICROVM_MMIO_BASE + slot as u64 * MICROVM_SLOT_STRIDE
}

/// Size in bytes of the firmware image the harness gives QEMU (`-bios`;
/// QEMU wants a multiple of 64 KiB). It is all zeros except at the x86
/// reset vector, its last 16 bytes, which hold `cli; hlt; jmp back to hlt`:
/// the vCPU stops for good at once.
///
/// Why not `-S`: with the machine stopped, QEMU's virtio devices do not
/// process requests (the entropy device leaves them pending until the VM
/// runs). Debian's QEMU has no `qtest` accelerator, so TCG would otherwise
/// run QEMU's default firmware at full speed.
pub const HALT_FIRMWARE_SIZE: usize = 64 << 10;

/// The firmware image described at [`HALT_FIRMWARE_SIZE`].
pub fn halt_firmware() -> Vec<u8> {
    // cli (fa); hlt (f4); jmp short -3, back to the hlt (eb fd).
    const RESET_CODE: [u8; 4] = [0xfa, 0xf4, 0xeb, 0xfd];
    let mut image = vec![0u8; HALT_FIRMWARE_SIZE];
    let reset = HALT_FIRMWARE_SIZE - 16;
    image[reset..reset + RESET_CODE.len()].copy_from_slice(&RESET_CODE);
    image
}

/// Which register layout QEMU's virtio-mmio proxies present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Version 1, QEMU's default (`virtio-mmio.force-legacy=true`).
    Legacy,
    /// Version 2 (`-global virtio-mmio.force-legacy=false`).
    Modern,
}

impl Mode {
    /// Both modes, for tests that loop over them.
    pub const BOTH: [Mode; 2] = [Mode::Legacy, Mode::Modern];

    /// The `Version` register value QEMU presents in this mode.
    pub fn version(self) -> u32 {
        match self {
            Mode::Legacy => vmmio_spec::mmio::VERSION_LEGACY,
            Mode::Modern => vmmio_spec::mmio::VERSION_MODERN,
        }
    }
}

/// Transport features QEMU offers for every device (QEMU's `event_idx`,
/// `indirect_desc` and `queue_reset` device properties; all on by
/// default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFeatures {
    /// Offer VIRTIO_F_EVENT_IDX (feature bit 29).
    pub event_idx: bool,
    /// Offer VIRTIO_F_INDIRECT_DESC (feature bit 28).
    pub indirect_desc: bool,
    /// Offer VIRTIO_F_RING_RESET (feature bit 40; Version 2 only). Note
    /// that QEMU 10's virtio-mmio offers it but ignores `QueueReset`.
    pub queue_reset: bool,
    /// Offer VIRTIO_F_RING_PACKED (feature bit 34, the `packed` property;
    /// Version 2 only, off by default as in QEMU).
    pub packed: bool,
}

impl Default for RingFeatures {
    fn default() -> Self {
        Self {
            event_idx: true,
            indirect_desc: true,
            queue_reset: true,
            packed: false,
        }
    }
}

/// One device on QEMU's command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// `virtio-blk-device` on a fresh raw image file of `size_bytes` bytes
    /// (a multiple of 512), filled with zeros, optionally with a serial
    /// number (what VIRTIO_BLK_T_GET_ID returns, at most 20 bytes).
    Block {
        /// Image size in bytes.
        size_bytes: u64,
        /// The `serial=` property, if any.
        serial: Option<String>,
    },
    /// `virtio-rng-device` (entropy from the host's default backend).
    Rng,
    /// `virtio-serial-device` with one `virtconsole` (port 0) whose chardev
    /// writes to a file the test can read: [`Qemu::console_output`].
    Console,
    /// `virtio-net-device` on `-netdev stream,server=off` connecting to the
    /// Unix socket listening at `socket` (the test holds the listener and
    /// accepts QEMU's connection; frames are preceded by their length as
    /// a 4-byte big-endian number), with MAC address `mac`.
    Net {
        /// Path of the Unix socket the test listens on.
        socket: std::path::PathBuf,
        /// The device's MAC address.
        mac: [u8; 6],
    },
    /// `vhost-user-vsock-device` talking vhost-user over the Unix socket
    /// at `socket`, where a backend (rust-vmm's `vhost-device-vsock`)
    /// listens; the guest RAM is a shared memory backend, as vhost-user
    /// needs. Ring feature options do not apply (the backend decides).
    VhostUserVsock {
        /// Path of the vhost-user socket the backend listens on.
        socket: std::path::PathBuf,
    },
}

impl Device {
    /// The virtio device ID (virtio v1.4 §5) this device presents.
    pub fn device_id(&self) -> u32 {
        match self {
            Device::Block { .. } => 2,
            Device::Rng => 4,
            Device::Console => 3,
            Device::Net { .. } => 1,
            Device::VhostUserVsock { .. } => 19,
        }
    }
}

/// Why QEMU could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Creating the temp dir, an image or the RAM file failed.
    #[error("cannot prepare {what}")]
    Setup {
        /// What was being prepared.
        what: String,
        /// The file system's error.
        #[source]
        source: std::io::Error,
    },
    /// Spawning QEMU failed (other than its binary being missing, which
    /// panics).
    #[error("cannot spawn QEMU")]
    Spawn(#[source] std::io::Error),
    /// QEMU exited before the qtest connection was made.
    #[error("QEMU exited early ({status}); its stderr:\n{stderr}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The qtest socket did not appear or accept within the start timeout.
    #[error("QEMU's qtest socket did not accept within {0:?}")]
    ConnectTimeout(Duration),
    /// The qtest connection failed.
    #[error("qtest connection failed")]
    Qtest(#[from] QtestError),
    /// Mapping guest RAM failed.
    #[error("cannot map guest RAM")]
    Ram(#[from] RamError),
}

/// Builds the QEMU command line and starts it: see [`QemuBuilder::start`].
#[derive(Clone, Debug)]
pub struct QemuBuilder {
    mode: Mode,
    devices: Vec<Device>,
    ring: RingFeatures,
    ram_bytes: u64,
    start_timeout: Duration,
    reply_timeout: Duration,
    binary: String,
}

impl QemuBuilder {
    /// A machine in `mode` with no devices, 64 MiB of RAM, QEMU's default
    /// ring features, 60 s to start and 30 s per qtest answer (generous:
    /// tests run QEMUs in parallel on small, shared CI machines; a healthy
    /// QEMU starts in about 0.1 s).
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            devices: Vec::new(),
            ring: RingFeatures::default(),
            ram_bytes: 64 << 20,
            start_timeout: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(30),
            binary: QEMU_BINARY.to_owned(),
        }
    }

    /// Runs `binary` (a name looked up on `PATH`, or a path) instead of
    /// [`QEMU_BINARY`].
    pub fn qemu_binary(mut self, binary: &str) -> Self {
        self.binary = binary.to_owned();
        self
    }

    /// Adds a device. QEMU fills `microvm`'s slots from the last one down,
    /// in command-line order: see [`Qemu::slot_of`].
    pub fn device(mut self, device: Device) -> Self {
        self.devices.push(device);
        self
    }

    /// Sets the ring features every device offers.
    pub fn ring_features(mut self, ring: RingFeatures) -> Self {
        self.ring = ring;
        self
    }

    /// Sets the guest RAM size in bytes (a multiple of 1 MiB, above
    /// [`crate::memory::ALLOC_START`]).
    pub fn ram_bytes(mut self, bytes: u64) -> Self {
        self.ram_bytes = bytes;
        self
    }

    /// The arguments passed to QEMU (after the binary name), for a temp dir
    /// at `dir`.
    pub fn args(&self, dir: &Path) -> Vec<String> {
        let on_off = |b: bool| if b { "on" } else { "off" };
        let ring = format!(
            "event_idx={},indirect_desc={},queue_reset={},packed={}",
            on_off(self.ring.event_idx),
            on_off(self.ring.indirect_desc),
            on_off(self.ring.queue_reset),
            on_off(self.ring.packed)
        );
        let mut args: Vec<String> = vec![
            "-M".into(),
            "microvm".into(),
            // The vCPU halts at its first instruction: no firmware writes
            // guest RAM and no emulated CPU burns a core, yet the machine is
            // running (QEMU's devices do no work while it is stopped).
            "-bios".into(),
            firmware_path(dir).display().to_string(),
            "-qtest".into(),
            format!("unix:{},server=on,wait=on", socket_path(dir).display()),
            "-qtest-log".into(),
            "/dev/null".into(),
            // QMP, for commands that change a device while the test runs.
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_path(dir).display()),
            "-display".into(),
            "none".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-m".into(),
            format!("{}M", self.ram_bytes >> 20),
            "-object".into(),
            format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share=on",
                self.ram_bytes >> 20,
                ram_path(dir).display()
            ),
            "-machine".into(),
            "memory-backend=mem".into(),
        ];
        if self.mode == Mode::Modern {
            args.push("-global".into());
            args.push("virtio-mmio.force-legacy=false".into());
        }
        for (i, device) in self.devices.iter().enumerate() {
            match device {
                Device::Block { serial, .. } => {
                    args.push("-drive".into());
                    args.push(format!(
                        "id=d{i},file={},format=raw,if=none",
                        image_path(dir, i).display()
                    ));
                    let mut dev = format!("virtio-blk-device,drive=d{i},{ring}");
                    if let Some(serial) = serial {
                        let _ = write!(dev, ",serial={serial}");
                    }
                    args.push("-device".into());
                    args.push(dev);
                }
                Device::Rng => {
                    args.push("-device".into());
                    args.push(format!("virtio-rng-device,{ring}"));
                }
                Device::Console => {
                    args.push("-chardev".into());
                    args.push(format!(
                        "file,id=c{i},path={}",
                        console_path(dir, i).display()
                    ));
                    args.push("-device".into());
                    args.push(format!("virtio-serial-device,{ring}"));
                    args.push("-device".into());
                    args.push(format!("virtconsole,chardev=c{i}"));
                }
                Device::Net { socket, mac } => {
                    args.push("-netdev".into());
                    args.push(format!(
                        "stream,id=n{i},server=off,addr.type=unix,addr.path={}",
                        socket.display()
                    ));
                    let mac = mac
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":");
                    args.push("-device".into());
                    args.push(format!("virtio-net-device,netdev=n{i},mac={mac},{ring}"));
                }
                Device::VhostUserVsock { socket } => {
                    args.push("-chardev".into());
                    args.push(format!("socket,id=v{i},path={}", socket.display()));
                    args.push("-device".into());
                    args.push(format!("vhost-user-vsock-device,chardev=v{i}"));
                }
            }
        }
        args
    }

    /// Starts QEMU and connects to its qtest socket.
    ///
    /// # Panics
    ///
    /// If the QEMU binary ([`QEMU_BINARY`] unless overridden) is not found:
    /// a missing QEMU is a test failure, never a skip. Install it with
    /// `./scripts/install-deps.sh`.
    ///
    /// # Errors
    ///
    /// [`HarnessError`] if the files cannot be prepared, QEMU exits early or
    /// does not accept the connection within the start timeout.
    pub fn start(self) -> Result<Qemu, HarnessError> {
        let setup = |what: &str| {
            let what = what.to_owned();
            move |source| HarnessError::Setup { what, source }
        };
        let dir = tempfile::Builder::new()
            .prefix("vmmio-qtest-")
            .tempdir()
            .map_err(setup("temp dir"))?;
        fs::write(firmware_path(dir.path()), halt_firmware()).map_err(setup("firmware"))?;
        let mut images = Vec::new();
        let mut consoles = Vec::new();
        for (i, device) in self.devices.iter().enumerate() {
            match device {
                Device::Block { size_bytes, .. } => {
                    let path = image_path(dir.path(), i);
                    File::create(&path)
                        .and_then(|f| f.set_len(*size_bytes))
                        .map_err(setup("disk image"))?;
                    images.push(path);
                }
                Device::Console => consoles.push(console_path(dir.path(), i)),
                Device::Rng | Device::Net { .. } | Device::VhostUserVsock { .. } => {}
            }
        }
        let ram_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(ram_path(dir.path()))
            .map_err(setup("RAM file"))?;
        ram_file
            .set_len(self.ram_bytes)
            .map_err(setup("RAM file"))?;
        let stderr_file = File::create(stderr_path(dir.path())).map_err(setup("stderr file"))?;

        let mut command = Command::new(&self.binary);
        command
            .args(self.args(dir.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_file);
        let die_with_parent = || {
            // SAFETY: prctl(PR_SET_PDEATHSIG, sig) takes one integer argument
            // and touches no memory of ours; it is async-signal-safe.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY:
        // - the hook runs in the child between fork and exec and calls only
        //   prctl(2), which is async-signal-safe; it allocates nothing and
        //   takes no lock.
        // JUSTIFICATION: QEMU does not exit when the qtest socket closes, so
        // without this a test binary killed from outside (a timeout) would
        // leave QEMU running; std has no safe way to ask for PDEATHSIG.
        unsafe {
            command.pre_exec(die_with_parent);
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{} is not on PATH: the qtest tests need QEMU \
                 (Debian package qemu-system-x86; run ./scripts/install-deps.sh)",
                self.binary
            ),
            Err(e) => return Err(HarnessError::Spawn(e)),
        };
        // From here on `Qemu`'s Drop kills and reaps the child on every path.
        let mut qemu = Qemu {
            child,
            client: None,
            ram: None,
            mode: self.mode,
            devices: self.devices.clone(),
            images,
            consoles,
            dir,
        };
        let client = qemu.connect(self.start_timeout, self.reply_timeout)?;
        qemu.client = Some(Arc::new(Mutex::new(client)));
        qemu.ram = Some(Arc::new(GuestRam::map(&ram_file, self.ram_bytes)?));
        Ok(qemu)
    }
}

fn firmware_path(dir: &Path) -> PathBuf {
    dir.join("halt.bin")
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("qtest.sock")
}

fn qmp_path(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

fn ram_path(dir: &Path) -> PathBuf {
    dir.join("ram")
}

fn stderr_path(dir: &Path) -> PathBuf {
    dir.join("qemu.stderr")
}

fn image_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("disk{index}.img"))
}

fn console_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("console{index}.out"))
}

/// A running QEMU with its qtest connection and shared guest RAM. Dropping
/// it kills QEMU (SIGKILL), reaps it and removes its temp dir.
///
/// QEMU is also killed if the thread that started it exits first
/// (`PR_SET_PDEATHSIG`), so keep a `Qemu` on the thread that built it.
#[derive(Debug)]
pub struct Qemu {
    child: Child,
    client: Option<Arc<Mutex<QtestClient>>>,
    ram: Option<Arc<GuestRam>>,
    mode: Mode,
    devices: Vec<Device>,
    images: Vec<PathBuf>,
    consoles: Vec<PathBuf>,
    // Last: removed after QEMU is gone.
    dir: tempfile::TempDir,
}

impl Qemu {
    fn connect(
        &mut self,
        start_timeout: Duration,
        reply_timeout: Duration,
    ) -> Result<QtestClient, HarnessError> {
        let socket = socket_path(self.dir.path());
        let deadline = Instant::now() + start_timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(HarnessError::Spawn)? {
                return Err(HarnessError::Exited {
                    status,
                    stderr: self.stderr(),
                });
            }
            if socket.exists() {
                match QtestClient::connect(&socket, reply_timeout) {
                    Ok(client) => return Ok(client),
                    Err(QtestError::Io { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::ConnectTimeout(start_timeout));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The register layout QEMU presents.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The devices on the command line, in order.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The shared qtest connection (one per QEMU; lock it per exchange).
    pub fn client(&self) -> Arc<Mutex<QtestClient>> {
        Arc::clone(self.client.as_ref().expect("set by QemuBuilder::start"))
    }

    /// Locks the qtest connection for direct use. A poisoned lock (a panic
    /// mid-exchange) is taken over: the next exchange fails if the stream
    /// is out of step.
    pub fn lock(&self) -> MutexGuard<'_, QtestClient> {
        self.client
            .as_ref()
            .expect("set by QemuBuilder::start")
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Guest RAM, shared with QEMU.
    pub fn ram(&self) -> Arc<GuestRam> {
        Arc::clone(self.ram.as_ref().expect("set by QemuBuilder::start"))
    }

    /// The `microvm` slot of the `index`-th device given to the builder:
    /// QEMU assigns slots from the last one down in command-line order
    /// (checked by the discovery test).
    ///
    /// # Panics
    ///
    /// If `index` is not a device index.
    pub fn slot_of(&self, index: usize) -> usize {
        assert!(index < self.devices.len(), "no device {index}");
        MICROVM_SLOTS - 1 - index
    }

    /// Guest-physical base of the window of the `index`-th device.
    ///
    /// # Panics
    ///
    /// If `index` is not a device index.
    pub fn window_of(&self, index: usize) -> u64 {
        slot_base(self.slot_of(index))
    }

    /// The register window of `microvm` slot `slot` as our driver's
    /// `RegisterIo`.
    pub fn window_at(&self, slot: usize) -> QtestWindow {
        QtestWindow::new(self.client(), slot_base(slot))
    }

    /// A DMA HAL over this QEMU's guest RAM.
    pub fn hal(&self) -> QtestHal {
        QtestHal::new(self.ram())
    }

    /// Our driver's transport for the `index`-th device, probed with
    /// [`qtest_limits`].
    ///
    /// # Panics
    ///
    /// If `index` is not a device index, or the probe fails or finds the
    /// slot empty (with the reason).
    pub fn transport(&self, index: usize) -> Transport<QtestWindow> {
        let slot = self.slot_of(index);
        match Transport::probe_with_limits(self.window_at(slot), qtest_limits()) {
            Ok(Some(t)) => t,
            Ok(None) => panic!("slot {slot} of device {index} reads DeviceID 0"),
            Err(e) => panic!("probe of slot {slot} (device {index}) failed: {e}"),
        }
    }

    /// Path of the raw image of the `n`-th block device (counting block
    /// devices only).
    ///
    /// # Panics
    ///
    /// If there are not that many block devices.
    pub fn image(&self, n: usize) -> &Path {
        &self.images[n]
    }

    /// Path of the file the `n`-th console's output goes to (counting
    /// consoles only).
    ///
    /// # Panics
    ///
    /// If there are not that many consoles.
    pub fn console_output(&self, n: usize) -> &Path {
        &self.consoles[n]
    }

    /// A new QMP connection to this QEMU (QEMU serves one at a time), its
    /// reads bounded by `timeout`. Block device `n` is QMP's `d<i>`, `i`
    /// its index in the device list (e.g. `block_resize` with `"device":
    /// "d0"`).
    ///
    /// # Errors
    /// [`crate::QmpError`] if the connection or the negotiation fails.
    pub fn qmp(&self, timeout: Duration) -> Result<crate::Qmp, crate::QmpError> {
        crate::Qmp::connect(&qmp_path(self.dir.path()), timeout)
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What QEMU printed on stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        fs::read_to_string(stderr_path(self.dir.path())).unwrap_or_default()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Errors mean the child is already gone; nothing else to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
