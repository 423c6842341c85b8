//! The vsock listener under host fd exhaustion: `accept` failing with
//! EMFILE must not spin the thread that polls the device's fds (the
//! listening socket stays readable while host programs wait), and the
//! waiting programs are accepted once fds are available again.
//!
//! A binary of its own: it lowers `RLIMIT_NOFILE` for the whole process.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmmio_device::{Interrupt, InterruptCause, InterruptStatus, VirtioDevice};
use vmmio_devices::vsock::{Vsock, F_STREAM};

type Mem = GuestMemoryMmap<()>;

struct Line;
impl Interrupt for Line {
    fn trigger(&self, _cause: InterruptCause) {}
}

/// One round of a poll loop over the device's fds (as the worker's epoll
/// loop or `MmioTransport::poll_backends`): waits up to `timeout_ms`,
/// delivers `backend_event` for each ready fd. Returns how many.
fn poll_once(dev: &mut Vsock<Mem>, timeout_ms: i32) -> usize {
    let fds = dev.backend_fds();
    let mut pollfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|b| libc::pollfd {
            fd: b.fd,
            events: if b.readable { libc::POLLIN } else { 0 }
                | if b.writable { libc::POLLOUT } else { 0 },
            revents: 0,
        })
        .collect();
    // SAFETY: `pollfds` is a live, writable array of its length.
    let rc = unsafe { libc::poll(pollfds.as_mut_ptr(), pollfds.len() as _, timeout_ms) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
    let ready: Vec<u64> = fds
        .iter()
        .zip(&pollfds)
        .filter(|(_, p)| p.revents != 0)
        .map(|(b, _)| b.token)
        .collect();
    for &t in &ready {
        dev.backend_event(t);
    }
    ready.len()
}

fn set_fd_limit(soft: libc::rlim_t, hard: libc::rlim_t) {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `lim` is a valid rlimit for the call's duration.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn accept_failing_with_emfile_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v.sock");
    let mut dev = Vsock::<Mem>::new(3, &path).expect("vsock");
    let mem = Mem::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
    dev.activate(
        mem,
        InterruptStatus::new(Arc::new(Line)),
        Vec::new(),
        1 << F_STREAM,
    )
    .expect("activate");
    let listener = dev.backend_fds();
    assert_eq!(listener.len(), 1, "the listener alone");
    let listener = listener[0].fd;

    // Host programs waiting in the listen backlog.
    let mut programs: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    for p in &mut programs {
        p.write_all(b"CONNECT 5000\n").expect("line");
    }

    // No fd left for this process: `accept` fails with EMFILE.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid, writable rlimit.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }, 0);
    let lowest_free = std::fs::File::open("/dev/null")
        .expect("/dev/null")
        .as_raw_fd();
    set_fd_limit(lowest_free as libc::rlim_t, old.rlim_max);
    let mut wakeups = 0;
    for _ in 0..1000 {
        wakeups += poll_once(&mut dev, 0);
    }
    let listed = dev.backend_fds();
    set_fd_limit(old.rlim_cur, old.rlim_max);
    assert!(
        wakeups <= 2,
        "{wakeups} wakeups in 1000 polls: the failing listener keeps the poller spinning"
    );
    assert!(
        listed.iter().all(|b| b.fd != listener),
        "the listener is not waited on during the back-off"
    );
    assert_eq!(listed.len(), 1, "only the back-off timer is waited on");

    // Fds are back: after the back-off the three programs are accepted
    // and their lines read (host-initiated connections waiting for the
    // guest).
    let mut rounds = 0;
    while dev.connections() < 3 {
        rounds += 1;
        assert!(rounds < 20, "waiting programs never accepted");
        assert!(poll_once(&mut dev, 5_000) > 0, "no fd ready within 5 s");
    }
}
