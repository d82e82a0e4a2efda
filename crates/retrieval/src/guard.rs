//! Memory-mapped files that another process truncates while we read them.
//!
//! Reading a page of a mapping past the end of its (now shorter) file raises SIGBUS, which
//! kills the process: one `cp` over a served index's vectors file would take the server down.
//! Every file this crate maps is mapped through [`GuardedMap`], which registers the mapping
//! with a process-wide SIGBUS handler (Linux). When a fault lies inside a registered mapping,
//! the handler maps anonymous zero pages over the rest of it (so the faulting read, and every
//! later one, reads zeros) and marks the mapping damaged; whoever read from it checks the mark
//! afterwards ([`GuardedMap::check`]) and returns [`RetrievalError::ChangedWhileMapped`]
//! instead of results computed from zeros. A fault anywhere else goes to the handler that was
//! installed before ours (Rust's stack-overflow handler, or the default action), as if ours
//! were not there.
//!
//! The cost on the read path is one atomic load per check; none per element.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Result, RetrievalError};

/// A read-only memory map of a whole file, registered with the SIGBUS guard for its lifetime.
pub(crate) struct GuardedMap {
    // Declared before `map`, so it is dropped (unregistered) before the pages are unmapped.
    slot: Option<usize>,
    map: memmap2::Mmap,
    path: PathBuf,
}

impl GuardedMap {
    /// Maps `file` (read from `path`), pre-faulting its pages when `populate` (Linux).
    pub(crate) fn map(file: &File, path: &Path, populate: bool) -> std::io::Result<Self> {
        let mut mo = memmap2::MmapOptions::new();
        #[cfg(target_os = "linux")]
        if populate {
            mo.populate();
        }
        #[cfg(not(target_os = "linux"))]
        let _ = populate;
        // SAFETY: a `Mmap` hands out `&[u8]` over the file's pages, which Rust requires not to
        // change while borrowed. This crate never writes a file after it is renamed into place
        // (a new build writes new files), so only another process can change it:
        // - truncating it (`cp` over it, `truncate`) would make reads fault with SIGBUS; the
        //   mapping is registered below, so the guard replaces the lost pages with zeros and
        //   marks it damaged, and every reader checks the mark before trusting what it read;
        // - writing into it in place changes the bytes we read. Nothing here turns changed bytes
        //   into unsafety: every offset read from a mapped file is bounds-checked before use,
        //   and text is copied or UTF-8 checked by the safe API. Values may be garbage, as
        //   with any file damaged on disk (the checksum at open catches damage done before).
        let map = unsafe { mo.map(file) }?;
        let slot = registry::register(map.as_ptr() as usize, map.len());
        if slot.is_none() && !map.is_empty() && registry::ENABLED {
            return Err(std::io::Error::other(format!(
                "more than {} memory-mapped index files are open at once",
                registry::SLOTS
            )));
        }
        Ok(Self {
            slot,
            map,
            path: path.to_path_buf(),
        })
    }

    /// Whether the file was truncated under the mapping since it was made: everything read
    /// from it may be zeros (or, on other systems, the process is gone already).
    pub(crate) fn check(&self) -> Result<()> {
        match self.slot {
            Some(i) if registry::damaged(i) => Err(RetrievalError::ChangedWhileMapped {
                path: self.path.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The mapped file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl std::ops::Deref for GuardedMap {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl Drop for GuardedMap {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            registry::unregister(i);
        }
    }
}

#[cfg(target_os = "linux")]
mod registry {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
    use std::sync::OnceLock;

    pub(super) const ENABLED: bool = true;
    /// Mappings guarded at once: an index holds two, a server reopening one holds four.
    pub(super) const SLOTS: usize = 1024;

    /// One registered mapping: `start..start + len` (`start` 0: free or being filled).
    struct Slot {
        claimed: AtomicBool,
        start: AtomicUsize,
        len: AtomicUsize,
        damaged: AtomicBool,
    }

    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Slot = Slot {
        claimed: AtomicBool::new(false),
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        damaged: AtomicBool::new(false),
    };
    static TABLE: [Slot; SLOTS] = [FREE; SLOTS];
    /// The SIGBUS action before ours, for faults that are not ours.
    static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
    static PAGE: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn register(start: usize, len: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        install();
        let i = TABLE.iter().position(|s| {
            s.claimed
                .compare_exchange(false, true, AcqRel, Relaxed)
                .is_ok()
        })?;
        let s = &TABLE[i];
        s.damaged.store(false, Release);
        s.len.store(len, Release);
        s.start.store(start, Release);
        Some(i)
    }

    pub(super) fn unregister(i: usize) {
        let s = &TABLE[i];
        s.start.store(0, Release);
        s.len.store(0, Release);
        s.claimed.store(false, Release);
    }

    pub(super) fn damaged(i: usize) -> bool {
        TABLE[i].damaged.load(Acquire)
    }

    /// Installs the handler once, remembering the action it replaces.
    fn install() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            PAGE.store(if page > 0 { page as usize } else { 4096 }, Relaxed);
            // SAFETY: a zeroed `sigaction` is a valid value of that plain C struct; the calls
            // get valid pointers to locals. The previous action is read (and stored) before
            // ours is installed, so the handler always finds it.
            unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                    return;
                }
                let _ = PREVIOUS.set(old);
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut());
            }
        });
    }

    /// The registered slot whose mapping holds `addr`.
    fn find(addr: usize) -> Option<&'static Slot> {
        TABLE.iter().find(|s| {
            let start = s.start.load(Acquire);
            let len = s.len.load(Acquire);
            // Re-read: a slot refilled between the loads is not trusted.
            start != 0 && addr >= start && addr - start < len && s.start.load(Acquire) == start
        })
    }

    /// Only async-signal-safe work: atomics, `mmap`, `sigaction`.
    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: with SA_SIGINFO the kernel passes a valid `siginfo_t`; for SIGBUS its
        // address field is the faulting address.
        let addr = unsafe { (*info).si_addr() } as usize;
        if let Some(slot) = find(addr) {
            let page = PAGE.load(Relaxed);
            let from = addr & !(page - 1);
            let start = slot.start.load(Acquire);
            let end = (start + slot.len.load(Acquire)).next_multiple_of(page);
            // SAFETY: `from..end` lies inside a mapping that is registered, so alive (it is
            // unregistered before it is unmapped) and read-only to us; replacing its pages with
            // private zero pages changes what readers see, never whether the memory exists.
            let p = unsafe {
                libc::mmap(
                    from as *mut libc::c_void,
                    end - from,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                slot.damaged.store(true, Release);
                return;
            }
        }
        chain(sig, info, ctx);
    }

    /// Hands a fault that is not ours to the action installed before ours.
    fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let Some(old) = PREVIOUS.get() else {
            return default(sig);
        };
        let h = old.sa_sigaction;
        if h == libc::SIG_DFL || h == libc::SIG_IGN {
            return default(sig);
        }
        if old.sa_flags & libc::SA_SIGINFO != 0 {
            type Action = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
            // SAFETY: with SA_SIGINFO set, a handler that is neither SIG_DFL nor SIG_IGN is a
            // three-argument handler; it is called as the kernel would have called it.
            let f = unsafe { std::mem::transmute::<libc::sighandler_t, Action>(h) };
            f(sig, info, ctx);
        } else {
            type Handler = extern "C" fn(libc::c_int);
            // SAFETY: without SA_SIGINFO the handler takes the signal number alone.
            let f = unsafe { std::mem::transmute::<libc::sighandler_t, Handler>(h) };
            f(sig);
        }
    }

    /// Restores the default action and returns: the faulting instruction runs again and the
    /// process dies of SIGBUS, as it would have without us.
    fn default(sig: libc::c_int) {
        // SAFETY: a zeroed `sigaction` with SIG_DFL is valid; `sigaction` is async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = libc::SIG_DFL;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod registry {
    //! Elsewhere nothing is guarded: a truncated file faults as it always has.
    pub(super) const ENABLED: bool = false;
    pub(super) const SLOTS: usize = 0;

    pub(super) fn register(_: usize, _: usize) -> Option<usize> {
        None
    }

    pub(super) fn unregister(_: usize) {}

    pub(super) fn damaged(_: usize) -> bool {
        false
    }
}

/// What tells one version of a file from another without reading it: device, inode, length
/// and modification time. A rebuilt index renames new files into place, so every one of its
/// files gets a new identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileId {
    dev_ino: (u64, u64),
    len: u64,
    mtime: Option<std::time::SystemTime>,
}

impl FileId {
    pub(crate) fn of(md: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let dev_ino = {
            use std::os::unix::fs::MetadataExt;
            (md.dev(), md.ino())
        };
        #[cfg(not(unix))]
        let dev_ino = (0, 0);
        Self {
            dev_ino,
            len: md.len(),
            mtime: md.modified().ok(),
        }
    }

    /// The identity of `path` now (`None` when it cannot be stat'ed).
    pub(crate) fn now(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|md| Self::of(&md))
    }
}
