//! How long a framed connection polls its socket before it sleeps (docs/dlm.md,
//! "Polling before sleeping").
//!
//! Why: on a virtual machine a process that sleeps in `epoll_wait` lets its vCPU
//! halt, and waking a halted vCPU costs far more than the lock operation itself
//! (measured: about 80 µs per wake-up, two per round trip, docs/BENCHMARKS.md). A
//! reader that keeps polling for a little while after its socket runs dry keeps its
//! vCPU running, so the answer to a request sent just now is picked up at once.
//!
//! The window adapts, with the rules of Linux's guest halt-polling governor
//! (cpuidle-haltpoll): when data came while polling, the window stays; when it came
//! after the reader went to sleep but within the longest window, polling would have
//! caught it, so the window grows (doubles, from [`GROW_START_NS`]); when it came
//! later than that, polling was wasted, so the window halves (below
//! [`GROW_START_NS`] it drops to zero: no polling). A connection used one request
//! after another keeps the full window; an idle one or one used every few
//! milliseconds soon polls not at all.
//!
//! Polling pays only when a CPU would otherwise idle: a reader that polls while
//! every CPU it may use is wanted takes one from the process it waits for, or from
//! anything else. So every [`SAMPLE_NS`] the reader also samples how many tasks
//! the system has ready to run; while they outnumber the CPUs the process may run
//! on, it does not poll (measured: polling on one shared CPU or beside a busy one
//! lost up to half the throughput before this rule, docs/BENCHMARKS.md). Counting
//! runnable tasks rather than this thread's run-queue wait matters: two polling
//! peers that the scheduler put on one CPU while another idles still gain from
//! polling (they take turns, as if pinned), where sleeping would cost a halted
//! vCPU's wake-up every time.
//!
//! Invariant: `0 <= window <= max`, and the window is 0 or at least
//! `min(GROW_START_NS, max)`.
//!
//! Pure: the caller passes the time, so the rules are tested without a clock.

/// The first non-zero window, in nanoseconds.
pub const GROW_START_NS: u64 = 10_000;
/// How often the number of runnable tasks is sampled.
pub const SAMPLE_NS: u64 = 2_000_000;

/// The polling window of one connection's reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollWindow {
    /// Longest window (the configuration's `poll_us`); 0 = never poll.
    max_ns: u64,
    /// Current window.
    window_ns: u64,
    /// When the reader last found its socket empty after reading something.
    idle_since_ns: Option<u64>,
    /// When the runnable tasks were last sampled.
    sampled_at_ns: Option<u64>,
    /// At the last sample, more tasks were runnable than there are CPUs to run them.
    contended: bool,
}

impl PollWindow {
    /// A window of at most `max_ns`, starting full.
    pub fn new(max_ns: u64) -> PollWindow {
        PollWindow { max_ns, window_ns: max_ns, idle_since_ns: None, sampled_at_ns: None, contended: false }
    }

    /// The current window.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Whether the CPUs were contended at the last sample.
    pub fn contended(&self) -> bool {
        self.contended
    }

    /// Whether a new sample of the runnable tasks is due at `now_ns` (never when
    /// polling is off).
    pub fn wants_sample(&self, now_ns: u64) -> bool {
        self.max_ns > 0 && self.sampled_at_ns.is_none_or(|at| now_ns.saturating_sub(at) >= SAMPLE_NS)
    }

    /// At `now_ns`, `runnable` tasks were ready to run (this one included) on a
    /// system where this process may use `cpus` CPUs.
    pub fn sample(&mut self, now_ns: u64, runnable: usize, cpus: usize) {
        self.contended = runnable > cpus;
        self.sampled_at_ns = Some(now_ns);
    }

    /// The socket is empty at `now_ns`: whether to try it again (poll) rather than
    /// sleep until the runtime says it is readable. The first call after data
    /// starts the idle period.
    pub fn keep_polling(&mut self, now_ns: u64) -> bool {
        let since = *self.idle_since_ns.get_or_insert(now_ns);
        !self.contended && now_ns.saturating_sub(since) < self.window_ns
    }

    /// Data was read at `now_ns`: adapt the window to how long the socket was idle.
    pub fn data(&mut self, now_ns: u64) {
        let Some(since) = self.idle_since_ns.take() else { return };
        let idle = now_ns.saturating_sub(since);
        if idle < self.window_ns {
            return;
        }
        if idle <= self.max_ns {
            self.window_ns = (self.window_ns.saturating_mul(2)).max(GROW_START_NS).min(self.max_ns);
        } else {
            self.window_ns /= 2;
            if self.window_ns < GROW_START_NS.min(self.max_ns) {
                self.window_ns = 0;
            }
        }
        debug_assert!(self.window_ns <= self.max_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u64 = 100_000;

    /// One idle period of `idle` ns starting at `*t`, ending with data; returns
    /// whether the reader was still polling when the data came.
    fn idle_then_data(w: &mut PollWindow, t: &mut u64, idle: u64) -> bool {
        let caught = w.keep_polling(*t) && w.keep_polling(*t + idle);
        *t += idle;
        w.data(*t);
        caught
    }

    #[test]
    fn back_to_back_requests_keep_the_full_window() {
        let mut w = PollWindow::new(MAX);
        let mut t = 0;
        for _ in 0..100 {
            assert!(idle_then_data(&mut w, &mut t, 20_000), "caught while polling");
            assert_eq!(w.window_ns(), MAX);
        }
    }

    #[test]
    fn an_idle_connection_stops_polling_and_a_busy_one_starts_again() {
        let mut w = PollWindow::new(MAX);
        let mut t = 0;
        let mut windows = Vec::new();
        for _ in 0..4 {
            idle_then_data(&mut w, &mut t, 5_000_000);
            windows.push(w.window_ns());
        }
        assert_eq!(windows, vec![50_000, 25_000, 12_500, 0], "halves, then stops");
        assert!(!w.keep_polling(t), "a window of 0 never polls");
        // Gaps the full window would have caught: grows from GROW_START_NS until
        // it catches them, then stays.
        let mut grown = Vec::new();
        for _ in 0..5 {
            idle_then_data(&mut w, &mut t, 60_000);
            grown.push(w.window_ns());
        }
        assert_eq!(grown, vec![GROW_START_NS, 20_000, 40_000, 80_000, 80_000]);
        assert!(idle_then_data(&mut w, &mut t, 60_000), "now caught while polling");
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut w = PollWindow::new(0);
        for t in [0, 10, 1_000_000] {
            assert!(!w.keep_polling(t));
            w.data(t + 5);
            assert_eq!(w.window_ns(), 0);
        }
    }

    #[test]
    fn a_maximum_below_the_grow_start_is_kept() {
        let mut w = PollWindow::new(5_000);
        let mut t = 0;
        idle_then_data(&mut w, &mut t, 1_000_000);
        assert_eq!(w.window_ns(), 0, "2.5 µs is below the smallest window of 5 µs");
        idle_then_data(&mut w, &mut t, 4_000);
        assert_eq!(w.window_ns(), 5_000, "grows back, capped at the maximum");
    }

    #[test]
    fn more_runnable_tasks_than_cpus_stop_polling_until_there_are_not() {
        let mut w = PollWindow::new(MAX);
        assert!(w.wants_sample(0));
        w.sample(0, 3, 2);
        assert!(w.contended());
        assert!(!w.wants_sample(SAMPLE_NS - 1));
        let mut t = 0;
        assert!(!idle_then_data(&mut w, &mut t, 20_000), "no polling while contended");
        assert_eq!(w.window_ns(), MAX, "the window itself is kept");
        assert!(w.wants_sample(SAMPLE_NS));
        w.sample(SAMPLE_NS, 2, 2);
        assert!(!w.contended(), "two polling peers on two CPUs");
        assert!(idle_then_data(&mut w, &mut t, 20_000));
        w.sample(2 * SAMPLE_NS, 2, 1);
        assert!(w.contended(), "two runnable tasks for the one CPU of a pinned process");
        assert!(!PollWindow::new(0).wants_sample(0), "no sampling when polling is off");
    }

    proptest! {
        /// Whatever the idle periods, the window stays within its bounds.
        #[test]
        fn the_window_stays_in_bounds(max in 0u64..1_000_000, idles in prop::collection::vec(0u64..3_000_000, 1..60)) {
            let mut w = PollWindow::new(max);
            let mut t = 0u64;
            for idle in idles {
                w.keep_polling(t);
                t += idle;
                w.data(t);
                let n = w.window_ns();
                prop_assert!(n <= max);
                prop_assert!(n == 0 || n >= GROW_START_NS.min(max), "window {} of max {}", n, max);
            }
        }
    }
}
