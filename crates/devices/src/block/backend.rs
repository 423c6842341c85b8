//! The storage behind a block device.
//!
//! [`Backend`] is what the request processor calls: positioned reads and
//! writes straight between the storage and guest memory
//! ([`VolatileSlice`]s, no intermediate buffer), a durability barrier, and
//! the optional discard / write-zeroes operations. [`FileBackend`] serves a
//! file or raw image; tests inject recording backends.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

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

    /// Fills the slices of `dsts`, in order, from the storage starting at
    /// byte `offset`: the data descriptors of one request. Default: one
    /// [`Backend::read_at`] per slice; [`FileBackend`] makes it one
    /// `preadv(2)`.
    ///
    /// # Errors
    /// As [`Backend::read_at`]; `InvalidInput` if the range overflows.
    fn read_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dsts: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let mut at = offset;
        for dst in dsts {
            self.read_at(at, dst)?;
            at = at
                .checked_add(dst.len() as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
        }
        Ok(())
    }

    /// Writes the slices of `srcs`, in order, to the storage starting at
    /// byte `offset`. Default: one [`Backend::write_at`] per slice;
    /// [`FileBackend`] makes it one `pwritev(2)`.
    ///
    /// # Errors
    /// As [`Backend::write_at`]; `InvalidInput` if the range overflows.
    fn write_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        srcs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let mut at = offset;
        for src in srcs {
            self.write_at(at, src)?;
            at = at
                .checked_add(src.len() as u64)
                .ok_or(io::ErrorKind::InvalidInput)?;
        }
        Ok(())
    }

    /// The host file descriptor behind the storage, when reads and writes
    /// at byte offsets of it are exactly this backend's `read_at` /
    /// `write_at` (and `fdatasync` its `flush`): the io_uring engine then
    /// submits them to the kernel directly. Default: `None` (always served
    /// synchronously); [`FileBackend`] gives its file's.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

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
/// Data moves between the file and guest memory with `pread(2)` /
/// `pwrite(2)` directly on the guest pages, and a request of several
/// descriptors with one `preadv(2)` / `pwritev(2)` (more only for short
/// transfers or past 1024 slices); no file offset to keep, no intermediate
/// buffer. `flush` is `fdatasync(2)`. `discard` is accepted
/// and does nothing (the spec lets discarded sectors read back as
/// anything); `write_zeroes` writes zeroes with `pwrite(2)`.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    /// Size in bytes, taken when the backend was made.
    len: u64,
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
        Ok(Self { file, len })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The file offset `done` bytes past `offset`, as `pread`/`pwrite` take it.
fn file_offset(offset: u64, done: usize) -> io::Result<libc::off_t> {
    offset
        .checked_add(done as u64)
        .and_then(|o| libc::off_t::try_from(o).ok())
        .ok_or_else(|| io::ErrorKind::InvalidInput.into())
}

impl Backend for FileBackend {
    fn len(&self) -> u64 {
        self.len
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // Keeps the host mapping of `dst` (and so `base`) valid until the
        // end of this function.
        let guard = dst.ptr_guard_mut();
        let base = guard.as_ptr();
        let mut done = 0usize;
        // Each round moves at least one byte or returns: at most
        // `dst.len()` rounds, plus retries on EINTR.
        while done < dst.len() {
            let at = file_offset(offset, done)?;
            // SAFETY:
            // - pointer validity: `base` is the start of `dst`, a
            //   `VolatileSlice` of `dst.len()` bytes of mapped guest memory
            //   (vm-memory guarantees this for every slice it hands out),
            //   and `guard` keeps that mapping alive across the call;
            //   `done < dst.len()`, so `base + done` and the
            //   `dst.len() - done` bytes after it lie inside `dst`;
            // - no Rust reference to that memory is made: the kernel writes
            //   it directly, as vm-memory's own `read_volatile` for files
            //   does; the guest may race with it, which changes only what
            //   the guest reads back, never host memory safety;
            // - `fd` is `self.file`'s open descriptor, borrowed for the call.
            // JUSTIFICATION: vm-memory's safe `read_volatile` for files is
            // `read(2)` at the file offset, which costs an extra `lseek(2)`
            // per random request; it has no positioned variant.
            let n = unsafe {
                libc::pread(
                    fd,
                    base.add(done).cast::<libc::c_void>(),
                    dst.len() - done,
                    at,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 => {
                    // `0 < n <= dst.len() - done`: the casts and the sum
                    // stay in range.
                    dst.bitmap().mark_dirty(done, n as usize);
                    done += n as usize;
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        // Part of `dst` may have been written: mark it all.
                        dst.bitmap().mark_dirty(0, dst.len());
                        return Err(e);
                    }
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
        let fd = self.file.as_raw_fd();
        let guard = src.ptr_guard();
        let base = guard.as_ptr();
        let mut done = 0usize;
        while done < src.len() {
            let at = file_offset(offset, done)?;
            // SAFETY: as in `read_at`: `base + done` and the
            // `src.len() - done` bytes after it lie inside `src`, mapped
            // guest memory kept alive by `guard`; the kernel only reads
            // them and no Rust reference to them is made.
            // JUSTIFICATION: as in `read_at` (saves an `lseek(2)`).
            let n = unsafe {
                libc::pwrite(
                    fd,
                    base.add(done).cast::<libc::c_void>(),
                    src.len() - done,
                    at,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                // `0 < n <= src.len() - done`.
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn read_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dsts: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        // The guards keep the host mappings of `dsts` valid until the end
        // of this function.
        let guards: Vec<_> = dsts.iter().map(|d| d.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .zip(dsts)
            .map(|(g, d)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: d.len(),
            })
            .collect();
        let result = vectored_io(self.file.as_raw_fd(), offset, &mut iov, Vectored::Read);
        // Written by the kernel (all of it on success, part on failure).
        for d in dsts {
            d.bitmap().mark_dirty(0, d.len());
        }
        result
    }

    fn write_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        srcs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        let guards: Vec<_> = srcs.iter().map(|s| s.ptr_guard()).collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .zip(srcs)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast_mut().cast(),
                iov_len: s.len(),
            })
            .collect();
        vectored_io(self.file.as_raw_fd(), offset, &mut iov, Vectored::Write)
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

/// Most iovecs one `preadv(2)` / `pwritev(2)` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Which way [`vectored_io`] moves the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vectored {
    /// File to memory (`preadv(2)`).
    Read,
    /// Memory to file (`pwritev(2)`).
    Write,
}

/// Moves the bytes of `iov` to or from `fd` at byte `offset`: one
/// `preadv(2)` / `pwritev(2)` per [`IOV_MAX`] entries, re-issued from where
/// a short transfer stopped (`iov` is advanced in place). Bounded: each
/// call moves at least one byte or returns.
///
/// The caller keeps every iovec's memory mapped (and, for reads, writable)
/// for the duration of the call.
fn vectored_io(
    fd: std::os::fd::RawFd,
    offset: u64,
    iov: &mut [libc::iovec],
    dir: Vectored,
) -> io::Result<()> {
    let mut first = 0usize;
    let mut done = 0usize;
    loop {
        while iov.get(first).is_some_and(|v| v.iov_len == 0) {
            first += 1;
        }
        let Some(rest) = iov.get(first..) else {
            return Ok(());
        };
        if rest.is_empty() {
            return Ok(());
        }
        let batch = &rest[..rest.len().min(IOV_MAX)];
        let at = file_offset(offset, done)?;
        // `batch.len() <= IOV_MAX`: fits a c_int.
        let count = batch.len() as libc::c_int;
        // SAFETY: every iovec of `batch` describes mapped guest memory the
        // caller keeps alive (its slice guards) for this call; the kernel
        // reads (pwritev) or writes (preadv) only those bytes and no Rust
        // reference to them exists; `fd` is open for the call.
        // JUSTIFICATION: std has no positioned vectored I/O on files, and
        // one system call per request instead of one per descriptor is the
        // point (issue 12).
        let n = unsafe {
            match dir {
                Vectored::Read => libc::preadv(fd, batch.as_ptr(), count, at),
                Vectored::Write => libc::pwritev(fd, batch.as_ptr(), count, at),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(match dir {
                Vectored::Read => io::ErrorKind::UnexpectedEof.into(),
                Vectored::Write => io::ErrorKind::WriteZero.into(),
            });
        }
        // `0 < n <=` the batch's total length.
        let mut n = n as usize;
        done += n;
        while n > 0 {
            let Some(cur) = iov.get_mut(first) else {
                break;
            };
            if n >= cur.iov_len {
                n -= cur.iov_len;
                first += 1;
            } else {
                // SAFETY: `n < iov_len`: the advanced base stays inside
                // the same buffer.
                cur.iov_base = unsafe { cur.iov_base.cast::<u8>().add(n).cast() };
                cur.iov_len -= n;
                n = 0;
            }
        }
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
