//! The CPU time one invocation uses, and its wall-clock timeout.
//!
//! Epoch ticks say *when* to look at a guest, not how long it ran: on a busy
//! machine a tick can find the guest's thread descheduled, or the guest just
//! back from the run queue, and counting ticks then charges it far less (or
//! more) than it used. So the invocation's own time is measured: the time
//! spent inside `poll` of its future — instantiating, running wasm, and in
//! host calls that complete at once. Time suspended is not charged, whether
//! the guest waits for I/O in a host call or for a worker thread after
//! yielding its slice. The epoch callback compares the measured time with
//! the CPU limit on every tick (see `state::store`).
//!
//! The first poll is measured on the wall clock and charged at most one
//! epoch tick: most invocations finish within it in microseconds, and one
//! that computes longer is stopped at the first tick (which ends the poll),
//! so it cannot have used more CPU than that — more wall time only means the
//! operating system descheduled the thread. Later polls — a guest that
//! computed past a tick, or came back from I/O — are measured with the
//! thread's CPU clock (a system call, a few per millisecond of guest CPU).
//! So a busy machine neither ends a guest early nor lets it run past its
//! limit.
//!
//! The wall-clock timeout (`timeout_ms`) covers what epochs cannot
//! interrupt: time blocked in host calls (outbound HTTP). It is charged the
//! invocation's CPU time plus the time it spent blocked in host calls, not
//! the time it waited for a CPU (in the run queue after a yield, or with its
//! thread descheduled): that wait is the machine's doing, and a computing
//! guest is already bounded by its CPU limit. So however many invocations
//! share the workers, a spinning guest is ended by its CPU deadline, not by
//! the timeout; on an idle machine the two clocks agree.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::engine::EPOCH_TICK;

/// No poll in progress / no reading / no yield pending.
const NONE: u64 = u64::MAX;

/// Most a poll measured on the wall clock is charged: one epoch tick, the
/// longest a guest computes before the epoch callback ends the poll.
const WALL_POLL_CAP_NS: u64 = EPOCH_TICK.as_nanos() as u64;

/// CPU time the calling thread has used, in nanoseconds, where the platform
/// tells.
#[cfg(unix)]
fn thread_cpu_ns() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64)
}

#[cfg(not(unix))]
fn thread_cpu_ns() -> Option<u64> {
    None
}

/// The CPU time of one invocation, shared by the future that polls it and
/// the store's epoch callback (which runs inside a poll, on its thread).
#[derive(Debug)]
pub struct CpuClock {
    origin: Instant,
    /// Nanoseconds used in finished polls.
    busy: AtomicU64,
    /// When the current poll began on the wall clock (ns since `origin`), or
    /// `NONE` between polls.
    poll_wall: AtomicU64,
    /// The polling thread's CPU clock when the current poll began, or `NONE`
    /// when this poll is measured on the wall clock (the first poll, or a
    /// platform without a thread CPU clock).
    poll_cpu: AtomicU64,
    /// Whether a poll has begun before (the first is measured on the wall
    /// clock).
    polled: AtomicBool,
    /// Set by the epoch callback when the guest yields its slice, so the
    /// suspension that follows is known to be a wait for the CPU.
    yielding: AtomicBool,
    /// When the guest was suspended waiting for I/O (ns since `origin`), or
    /// `NONE`.
    blocked_since: AtomicU64,
    /// Nanoseconds spent suspended waiting for I/O.
    blocked: AtomicU64,
}

impl Default for CpuClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            busy: AtomicU64::new(0),
            poll_wall: AtomicU64::new(NONE),
            poll_cpu: AtomicU64::new(NONE),
            polled: AtomicBool::new(false),
            yielding: AtomicBool::new(false),
            blocked_since: AtomicU64::new(NONE),
            blocked: AtomicU64::new(0),
        }
    }
}

impl CpuClock {
    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Nanoseconds used by the poll in progress (0 between polls).
    fn this_poll(&self) -> u64 {
        let wall = self.poll_wall.load(Ordering::Relaxed);
        if wall == NONE {
            return 0;
        }
        let cpu = self.poll_cpu.load(Ordering::Relaxed);
        match (cpu, thread_cpu_ns()) {
            (start, Some(now)) if start != NONE => now.saturating_sub(start),
            _ => self.now().saturating_sub(wall).min(WALL_POLL_CAP_NS),
        }
    }

    /// CPU time used so far, including the poll in progress.
    pub fn used(&self) -> Duration {
        Duration::from_nanos(self.busy.load(Ordering::Relaxed) + self.this_poll())
    }

    /// What the timeout is charged: CPU time used plus time blocked in host
    /// calls, so far.
    fn charged(&self) -> Duration {
        let mut blocked = self.blocked.load(Ordering::Relaxed);
        let since = self.blocked_since.load(Ordering::Relaxed);
        if since != NONE {
            blocked += self.now().saturating_sub(since);
        }
        self.used() + Duration::from_nanos(blocked)
    }

    /// Called by the epoch callback before it yields the guest's slice: the
    /// suspension that follows is a wait for the CPU, not for I/O.
    pub fn yielding(&self) {
        self.yielding.store(true, Ordering::Relaxed);
    }

    fn enter(&self) {
        let now = self.now();
        let since = self.blocked_since.swap(NONE, Ordering::Relaxed);
        if since != NONE {
            self.blocked
                .fetch_add(now.saturating_sub(since), Ordering::Relaxed);
        }
        let cpu = if self.polled.swap(true, Ordering::Relaxed) {
            thread_cpu_ns().unwrap_or(NONE)
        } else {
            NONE
        };
        self.poll_cpu.store(cpu, Ordering::Relaxed);
        self.poll_wall.store(now, Ordering::Relaxed);
    }

    fn leave(&self, pending: bool) {
        self.busy.fetch_add(self.this_poll(), Ordering::Relaxed);
        self.poll_wall.store(NONE, Ordering::Relaxed);
        let yielded = self.yielding.swap(false, Ordering::Relaxed);
        if pending && !yielded {
            self.blocked_since.store(self.now(), Ordering::Relaxed);
        }
    }
}

/// Polls `call` while `clock` measures it, until it finishes (`Some`) or
/// its CPU time plus its time blocked in host calls reach `timeout` (`None`).
pub async fn metered<F: Future>(call: F, clock: &CpuClock, timeout: Duration) -> Option<F::Output> {
    let mut call = pin!(call);
    let mut expiry = pin!(tokio::time::sleep(timeout));
    std::future::poll_fn(|cx| {
        clock.enter();
        let polled = call.as_mut().poll(cx);
        clock.leave(polled.is_pending());
        if let Poll::Ready(out) = polled {
            return Poll::Ready(Some(out));
        }
        // The timer runs on the wall clock; when it fires, the time charged
        // so far decides whether the timeout is really spent.
        while expiry.as_mut().poll(cx).is_ready() {
            let charged = clock.charged();
            if charged >= timeout {
                return Poll::Ready(None);
            }
            expiry
                .as_mut()
                .reset(tokio::time::Instant::now() + (timeout - charged));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that burns `slices` slices of CPU, yielding between them as
    /// a guest does at each epoch tick, then sleeps `io` as if in a host call.
    async fn guest(clock: &CpuClock, slices: u32, slice: Duration, io: Duration) {
        for _ in 0..slices {
            let start = thread_cpu_ns().unwrap();
            while thread_cpu_ns().unwrap() - start < slice.as_nanos() as u64 {
                std::hint::spin_loop();
            }
            clock.yielding();
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(io).await;
    }

    #[test]
    fn the_thread_cpu_clock_ignores_sleeping() {
        let before = thread_cpu_ns().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_ns().unwrap() - before;
        assert!(slept < 10_000_000, "{slept} ns");
    }

    #[tokio::test]
    async fn counts_time_in_polls_not_time_suspended() {
        let clock = CpuClock::default();
        let slice = Duration::from_millis(5);
        let io = Duration::from_millis(500);
        let out = metered(guest(&clock, 4, slice, io), &clock, Duration::from_secs(5)).await;
        assert!(out.is_some());
        let used = clock.used();
        // The first slice is charged one tick at most; the others in full.
        assert!(used >= slice * 3 + EPOCH_TICK, "{used:?}");
        assert!(used < io / 2, "the sleep is not charged: {used:?}");
    }

    #[tokio::test]
    async fn a_descheduled_thread_is_not_charged() {
        // The thread sleeps inside polls, as if the OS had descheduled it.
        let clock = CpuClock::default();
        let descheduled = async {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(20));
                clock.yielding();
                tokio::task::yield_now().await;
            }
        };
        metered(descheduled, &clock, Duration::from_secs(5))
            .await
            .unwrap();
        let used = clock.used();
        assert!(used < Duration::from_millis(10), "{used:?}");
    }

    #[tokio::test]
    async fn the_wall_clock_ends_a_guest_blocked_in_a_host_call() {
        let clock = CpuClock::default();
        let io = Duration::from_secs(30);
        let started = Instant::now();
        let out = metered(
            guest(&clock, 0, Duration::ZERO, io),
            &clock,
            Duration::from_millis(50),
        )
        .await;
        assert!(out.is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_the_cpu_does_not_count_toward_the_wall_clock() {
        // Another task holds the only thread for 30 ms after each of the
        // guest's slices: the guest waits 8 x 30 ms for the CPU, far beyond
        // its 100 ms timeout, and still finishes.
        let clock = CpuClock::default();
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let hog = {
            let done = done.clone();
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(30));
                    tokio::task::yield_now().await;
                }
            })
        };
        let slice = Duration::from_millis(1);
        let started = Instant::now();
        let out = metered(
            guest(&clock, 8, slice, Duration::ZERO),
            &clock,
            Duration::from_millis(100),
        )
        .await;
        done.store(true, Ordering::Relaxed);
        hog.await.unwrap();
        assert!(out.is_some(), "used {:?}", clock.used());
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
}
