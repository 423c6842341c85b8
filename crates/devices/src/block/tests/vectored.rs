//! Vectored data transfer: a request whose data spans several descriptors
//! is one backend call (one `preadv` / `pwritev` for a file), and the file
//! backend's vectored I/O moves every byte, past the 1024-iovec limit too.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// Counts the backend calls of each kind.
#[derive(Default)]
struct Calls {
    single: AtomicU32,
    vectored: AtomicU32,
}

struct Counting {
    inner: MemoryBackend,
    calls: Arc<Calls>,
}

impl Backend for Counting {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        self.calls.single.fetch_add(1, Ordering::SeqCst);
        self.inner.read_at(offset, dst)
    }
    fn write_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: &VolatileSlice<'_, B>,
    ) -> io::Result<()> {
        self.calls.single.fetch_add(1, Ordering::SeqCst);
        self.inner.write_at(offset, src)
    }
    fn read_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dsts: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        self.calls.vectored.fetch_add(1, Ordering::SeqCst);
        let mut at = offset;
        for d in dsts {
            self.inner.read_at(at, d)?;
            at += d.len() as u64;
        }
        Ok(())
    }
    fn write_vectored_at<B: BitmapSlice>(
        &mut self,
        offset: u64,
        srcs: &[VolatileSlice<'_, B>],
    ) -> io::Result<()> {
        self.calls.vectored.fetch_add(1, Ordering::SeqCst);
        let mut at = offset;
        for s in srcs {
            self.inner.write_at(at, s)?;
            at += s.len() as u64;
        }
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_request_over_three_data_descriptors_is_one_backend_call() {
    let calls = Arc::new(Calls::default());
    let backend = Counting {
        inner: MemoryBackend::from_vec(image(8)),
        calls: calls.clone(),
    };
    let mut fx = fixture(backend, BlockOptions::default(), FEATURES);
    // OUT: header, three data descriptors (512, 1024, 512 bytes), status.
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::OUT, 2), GuestAddress(h))
        .unwrap();
    let parts: Vec<u64> = [512u32, 1024, 512]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let a = fx.ring.alloc(u64::from(len));
            fx.mem
                .write_slice(&vec![0xa0 + i as u8; len as usize], GuestAddress(a))
                .unwrap();
            a
        })
        .collect();
    let st = fx.ring.alloc(1);
    fx.submit_raw(&[
        desc(h, 16, false),
        desc(parts[0], 512, false),
        desc(parts[1], 1024, false),
        desc(parts[2], 512, false),
        desc(st, 1, true),
    ]);
    assert_eq!(fx.notify()[0].1, 1);
    assert_eq!(fx.mem.read_obj::<u8>(GuestAddress(st)).unwrap(), status::OK);
    let data = fx.dev.backend().inner.data();
    assert!(data[2 * 512..3 * 512].iter().all(|&b| b == 0xa0));
    assert!(data[3 * 512..5 * 512].iter().all(|&b| b == 0xa1));
    assert!(data[5 * 512..6 * 512].iter().all(|&b| b == 0xa2));
    // IN back into three descriptors.
    let h = fx.ring.alloc(16);
    fx.mem
        .write_slice(&header(types::IN, 2), GuestAddress(h))
        .unwrap();
    let back: Vec<u64> = (0..3).map(|_| fx.ring.alloc(1024)).collect();
    let st = fx.ring.alloc(1);
    fx.submit_raw(&[
        desc(h, 16, false),
        desc(back[0], 1024, true),
        desc(back[1], 512, true),
        desc(back[2], 512, true),
        desc(st, 1, true),
    ]);
    assert_eq!(fx.notify()[0].1, 2049);
    let mut got = vec![0u8; 1024];
    fx.mem.read_slice(&mut got, GuestAddress(back[0])).unwrap();
    assert!(got[..512].iter().all(|&b| b == 0xa0) && got[512..].iter().all(|&b| b == 0xa1));
    assert_eq!(calls.vectored.load(Ordering::SeqCst), 2);
    assert_eq!(
        calls.single.load(Ordering::SeqCst),
        0,
        "one call per request, not per descriptor"
    );
}

#[test]
fn file_backend_vectored_io_moves_every_byte_past_the_iovec_limit() {
    let path = temp_path("vectored.img");
    std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
    let mut file = FileBackend::open(&path, false).unwrap();
    let m = mem();
    // 1500 slices (more than one preadv takes) of 1..=1000 bytes, packed
    // one after the other in guest memory from 64 KiB.
    let lens: Vec<usize> = (0..1500).map(|i| 1 + (i * 37) % 1000).collect();
    let total: usize = lens.iter().sum();
    let pattern: Vec<u8> = (0..total).map(|i| (i * 13 + 7) as u8).collect();
    let base = 64 << 10;
    m.write_slice(&pattern, GuestAddress(base)).unwrap();
    let mut slices = Vec::new();
    let mut at = base;
    for &len in &lens {
        let mut it = m
            .get_slices(GuestAddress(at), len, vm_memory::Permissions::ReadWrite)
            .unwrap();
        slices.push(it.next().unwrap().unwrap());
        at += len as u64;
    }
    file.write_vectored_at(4321, &slices).unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[4321..4321 + total] == pattern[..]);
    assert!(on_disk[..4321].iter().all(|&b| b == 0));
    m.write_slice(&vec![0u8; total], GuestAddress(base))
        .unwrap();
    file.read_vectored_at(4321, &slices).unwrap();
    let mut back = vec![0u8; total];
    m.read_slice(&mut back, GuestAddress(base)).unwrap();
    assert!(back == pattern);
    // Past the end of the file: an error, not a hang.
    let end = (4 << 20) - 10;
    assert!(file.read_vectored_at(end, &slices[..3]).is_err());
    std::fs::remove_file(&path).unwrap();
}
