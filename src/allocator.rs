//! The `agentplane` binary's tuning of glibc's allocator (a module of `main.rs`, not of
//! the library).

use std::time::Duration;

/// glibc gives each thread that allocates an arena of its own, up to 8 per core, and
/// keeps what is freed in each: memory a websocket's setup allocated on one thread stays
/// with that thread's arena. Too few arenas make threads queue on their locks instead
/// (the SQLite statements run on blocking threads, whose rows the runtime's threads
/// free). Measured on 2 cores (`bench/api`, 1,000 idle subscribers, this release):
///
/// | arenas | nested reads | per idle subscriber |
/// |---|---|---|
/// | 4 | 441–505/s | 13.6–14.1 KiB |
/// | 8 | 535–544/s | 10.9–14.7 KiB |
/// | 16 (glibc's default) | 454/s | 19.5 KiB |
///
/// So the arenas are bounded to four per core (at least 8), unless `MALLOC_ARENA_MAX`
/// already chose.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt only sets an allocator parameter, before any other thread exists"
)]
pub(crate) fn bound_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let arenas = libc::c_int::try_from(cores.saturating_mul(4).max(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: sets one malloc tunable; no other thread runs yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, arenas);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn bound_malloc_arenas() {}

/// glibc keeps what the program frees in its arenas for reuse; only the top of each
/// heap shrinks by itself. After a burst (a thousand websockets set up at once, a load
/// run) most of it stays resident although nothing uses it: after a load run and 1,000
/// subscribers, the server held 174 MiB of RSS, 110 MiB after one `malloc_trim` (measured
/// with `gdb`). A thread of its own looks every `interval`: when the arenas hold 4 MiB or
/// more of freed memory (`mallinfo2`) and either that or the resident size grew by a MiB
/// since the last look, it returns their free pages to the system (`malloc_trim`). A
/// process whose memory does not move does nothing more.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "sysconf, mallinfo2 and malloc_trim read and trim glibc's own allocator state"
)]
pub(crate) fn start_memory_trimmer(interval: Option<Duration>) {
    const FREE_AT_LEAST: usize = 4 << 20;
    const MOVED_BY: usize = 1 << 20;
    let Some(interval) = interval else { return };
    // SAFETY: reads a constant of the system; no pointers.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let resident = move || -> Option<usize> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(page))
    };
    let spawned = std::thread::Builder::new()
        .name("memory-trim".into())
        .spawn(move || {
            let (mut last_resident, mut last_free): (usize, usize) = (0, 0);
            loop {
                std::thread::sleep(interval);
                let Some(now) = resident() else { return };
                // SAFETY: reads the allocator's statistics; takes and returns no pointers.
                let free = unsafe { libc::mallinfo2() }.fordblks;
                let moved = now >= last_resident.saturating_add(MOVED_BY)
                    || free >= last_free.saturating_add(MOVED_BY);
                (last_resident, last_free) = (now, free);
                if free < FREE_AT_LEAST || !moved {
                    continue;
                }
                let started = std::time::Instant::now();
                // SAFETY: glibc locks each arena while it trims it; callable from any thread.
                unsafe { libc::malloc_trim(0) };
                last_resident = resident().unwrap_or(now);
                tracing::debug!(
                    free_bytes = free,
                    resident_before = now,
                    resident_after = last_resident,
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    "returned freed memory to the system"
                );
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "the memory trimming thread did not start");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn start_memory_trimmer(_interval: Option<Duration>) {}
