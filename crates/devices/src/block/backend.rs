//! The storage behind a block device.
//!
//! [`Backend`] is what the request processor calls: positioned reads and
//! writes straight between the storage and guest memory
//! ([`VolatileSlice`]s, no intermediate buffer), a durability barrier, and
//! the optional discard / write-zeroes operations. [`FileBackend`] serves a
//! file or raw image; tests inject recording backends.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileSlice, WriteVolatile};

/// Storage for a block device: a byte-addressed array of [`Backend::len`]
/// bytes.
///
/// Offsets and lengths are in bytes. The device only calls the data methods
/// for ranges inside `[0, len)` that it has already checked. An `Err` becomes
/// a `VIRTIO_BLK_S_IOERR` status for the request (virtio v1.4 §5.2.6), it
/// never stops the device.
pub trait Backend: Send {
    /// Size of the storage in bytes. The device's capacity is this divided
    /// by 512, rounded down (virtio v1.4 §5.2.4, `capacity`).
    fn len(&self) -> u64;

    /// Whether the storage is empty (`len() == 0`).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills all of `dst` from the storage starting at byte `offset`.
    ///
    /// # Errors
    /// The host I/O error; [`io::ErrorKind::UnexpectedEof`] if the storage
    /// ends before `dst` is full.
    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()>;

    /// Writes all of `src` to the storage starting at byte `offset`.
    ///
    /// # Errors
    /// The host I/O error; [`io::ErrorKind::WriteZero`] if the storage
    /// accepts no more bytes.
    fn write_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()>;

    /// Makes every write that returned before this call durable
    /// (`fdatasync` for a file). Used for `VIRTIO_BLK_T_FLUSH` and for
    /// write-through operation (virtio v1.4 §5.2.6.2).
    ///
    /// # Errors
    /// The host I/O error.
    fn flush(&mut self) -> io::Result<()>;

    /// Whether [`Backend::discard`] does something useful. The device
    /// offers `VIRTIO_BLK_F_DISCARD` only if this and the device option are
    /// both true. Default: false.
    fn supports_discard(&self) -> bool {
        false
    }

    /// Hints that `len` bytes at `offset` are no longer needed; later reads
    /// of them may return anything (virtio v1.4 §5.2.6, discard).
    ///
    /// # Errors
    /// The host I/O error. Default: [`io::ErrorKind::Unsupported`].
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Whether [`Backend::write_zeroes`] is implemented. The device offers
    /// `VIRTIO_BLK_F_WRITE_ZEROES` only if this and the device option are
    /// both true. Default: false.
    fn supports_write_zeroes(&self) -> bool {
        false
    }

    /// Sets `len` bytes at `offset` to zero; later reads of them return
    /// zeroes (virtio v1.4 §5.2.6.2).
    ///
    /// # Errors
    /// The host I/O error. Default: [`io::ErrorKind::Unsupported`].
    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Zeroes written by [`FileBackend::write_zeroes`], 64 KiB at a time.
static ZEROES: [u8; 64 * 1024] = [0; 64 * 1024];

/// A [`Backend`] over a regular file or raw disk image.
///
/// Data moves between the file and guest memory with `read(2)`/`write(2)`
/// directly on the guest pages (through vm-memory), after an `lseek(2)` that
/// is skipped when the file offset is already right (sequential I/O).
/// `flush` is `fdatasync(2)`. `discard` is accepted and does nothing (the
/// spec lets discarded sectors read back as anything); `write_zeroes`
/// writes zeroes with `pwrite(2)`.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    /// Size in bytes, taken when the backend was made.
    len: u64,
    /// The file offset as last left by this backend, or `None` when unknown
    /// (after an error). Saves an `lseek` per sequential request.
    pos: Option<u64>,
}

impl FileBackend {
    /// Opens `path` for reading, and for writing unless `read_only`.
    ///
    /// # Errors
    /// The host error from `open(2)` or `fstat(2)`.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        Self::new(file)
    }

    /// Wraps an open file; its size is read once, now.
    ///
    /// # Errors
    /// The host error from `fstat(2)`.
    pub fn new(file: File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            pos: None,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn seek_to(&mut self, offset: u64) -> io::Result<()> {
        if self.pos != Some(offset) {
            self.pos = None;
            self.file.seek(SeekFrom::Start(offset))?;
            self.pos = Some(offset);
        }
        Ok(())
    }

    fn advance(&mut self, n: usize) {
        // `n` is at most the slice length, which fits u64; the offset stays
        // below `len` plus one slice, far from u64::MAX.
        self.pos = self.pos.and_then(|p| p.checked_add(n as u64));
    }
}

impl Backend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        self.seek_to(offset)?;
        let mut done = 0usize;
        // Each round moves at least one byte or returns: at most `dst.len()`
        // rounds, plus retries on EINTR.
        while done < dst.len() {
            let mut rest = dst.offset(done).map_err(io::Error::other)?;
            match self.file.read_volatile(&mut rest) {
                Ok(0) => {
                    self.pos = None;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => {
                    done = done.saturating_add(n);
                    self.advance(n);
                }
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pos = None;
                    return Err(into_io(e));
                }
            }
        }
        Ok(())
    }

    fn write_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        self.seek_to(offset)?;
        let mut done = 0usize;
        while done < src.len() {
            let rest = src.offset(done).map_err(io::Error::other)?;
            match self.file.write_volatile(&rest) {
                Ok(0) => {
                    self.pos = None;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => {
                    done = done.saturating_add(n);
                    self.advance(n);
                }
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pos = None;
                    return Err(into_io(e));
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn discard(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut done = 0u64;
        // At most len / 64 KiB rounds.
        while done < len {
            let n = (len - done).min(ZEROES.len() as u64);
            let at = offset
                .checked_add(done)
                .ok_or(io::ErrorKind::InvalidInput)?;
            // `n <= 64 KiB`, so the index is in bounds of ZEROES.
            self.file.write_all_at(&ZEROES[..n as usize], at)?;
            done += n;
        }
        Ok(())
    }
}

/// Unwraps the host error vm-memory carries, keeping others as their text.
fn into_io(e: vm_memory::VolatileMemoryError) -> io::Error {
    match e {
        vm_memory::VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// A [`Backend`] in host memory, for tests and scratch disks.
#[derive(Clone, Debug, Default)]
pub struct MemoryBackend {
    data: Vec<u8>,
}

impl MemoryBackend {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self { data: vec![0; len] }
    }

    /// A disk holding `data`.
    pub fn from_vec(data: Vec<u8>) -> Self {
        Self { data }
    }

    /// The disk contents.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    fn range(&self, offset: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= self.data.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(start..end)
    }
}

impl Backend for MemoryBackend {
    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        let r = self.range(offset, dst.len())?;
        dst.copy_from(&self.data[r]);
        Ok(())
    }

    fn write_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        let r = self.range(offset, src.len())?;
        src.copy_to(&mut self.data[r]);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn supports_discard(&self) -> bool {
        true
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_zeroes(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let r = self.range(offset, len)?;
        self.data[r].fill(0);
        Ok(())
    }
}
