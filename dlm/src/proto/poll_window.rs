//! How long a framed connection polls its socket before it sleeps (docs/dlm.md,
//! "Polling before sleeping").
//!
//! Why: on a virtual machine a process that sleeps in `epoll_wait` lets its vCPU
//! halt, and waking a halted vCPU costs far more than the lock operation itself
//! (measured: p50 130–160 µs per operation instead of 13–17 µs, docs/BENCHMARKS.md). A
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
//! milliseconds soon polls not at all. Once in [`PROBE_EVERY`] idle periods a
//! window of 0 polls for the longest window once, as a probe: the two ends of a
//! connection wait for each other, so when both windows have closed, the gaps
//! each sees are as long as two sleeping processes make them, which may exceed
//! the longest window and would keep both closed for good; a probe that catches
//! data opens the window fully again.
//!
//! Polling pays only when a CPU would otherwise idle: a reader that polls while
//! every CPU it may use is wanted takes one from the process it waits for, or from
//! anything else. So every [`SAMPLE_NS`] a polling reader also samples how many
//! tasks the system has ready to run; when they outnumber the CPUs the process may
//! run on in [`CROWDED_SAMPLES`] samples in a row, it pauses polling, for
//! [`PAUSE_MIN_NS`] the first time and twice as long each time the crowding is
//! still there when it resumes (up to [`PAUSE_MAX_NS`]); after [`CLEAR_NS`] without
//! crowding, the next pause is short again. Why all this: polling itself adds a
//! runnable task, so a plain rule "poll while runnable <= CPUs" flips on every
//! sample beside a busy process, and one sample catches passing kernel threads
//! (softirq work on loopback TCP, for one). Measured without any of it (in
//! `rgfs-dlm bench` runs against one daemon), polling lost up to half the
//! throughput when client and daemon were pinned to one CPU or beside a busy one.
//! Counting runnable tasks rather than this thread's waiting for a CPU matters:
//! two polling peers that the scheduler put on one CPU while another idles wait
//! for each other, yet do better polling (they take turns, as if pinned) than
//! sleeping, which costs a halted vCPU's wake-up.
//! A process restricted to one CPU never polls.
//!
//! Invariant: `0 <= window <= max`, and the window is 0 or at least
//! `min(GROW_START_NS, max)`.
//!
//! Pure: the caller passes the time, so the rules are tested without a clock.

/// The first non-zero window, in nanoseconds.
pub const GROW_START_NS: u64 = 10_000;
/// A closed window probes once in this many idle periods.
pub const PROBE_EVERY: u32 = 16;
/// How often a polling reader samples the number of runnable tasks.
pub const SAMPLE_NS: u64 = 2_000_000;
/// Crowded samples in a row that pause polling.
pub const CROWDED_SAMPLES: u32 = 2;
/// The first pause.
pub const PAUSE_MIN_NS: u64 = 8_000_000;
/// The longest pause.
pub const PAUSE_MAX_NS: u64 = 1_000_000_000;
/// Polling this long without a crowded sample makes the next pause short again.
pub const CLEAR_NS: u64 = 64_000_000;

/// The polling window of one connection's reader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PollWindow {
    /// Longest window (the configuration's `poll_us`); 0 = never poll.
    max_ns: u64,
    /// CPUs the process may run on.
    cpus: usize,
    /// Current window.
    window_ns: u64,
    /// When the reader last found its socket empty after reading something.
    idle_since_ns: Option<u64>,
    /// When the runnable tasks were last sampled.
    sampled_at_ns: Option<u64>,
    /// Samples in a row with more runnable tasks than CPUs.
    crowded_samples: u32,
    /// Since when polling has gone on without a crowded sample (pauses excluded).
    clear_since_ns: u64,
    /// No polling before this time.
    paused_until_ns: u64,
    /// The length of the next pause.
    pause_ns: u64,
    /// Nothing is expected on the socket soon (see [`PollWindow::set_waiting_elsewhere`]).
    waiting_elsewhere: bool,
    /// Idle periods begun with a window of 0.
    closed_periods: u32,
    /// The current idle period is a probe: it polls for `max_ns`.
    probing: bool,
}

impl PollWindow {
    /// A window of at most `max_ns`, starting full, for a process that may run on
    /// `cpus` CPUs. Restricted to one CPU, a poller can only hold up the task it
    /// waits for, or its other neighbours: it never polls (measured pinned:
    /// polling, even with the pauses, cost 15–35 % of the throughput, because the
    /// peer asleep at the sample made the CPU look free).
    pub fn new(max_ns: u64, cpus: usize) -> PollWindow {
        let max_ns = if cpus < 2 { 0 } else { max_ns };
        PollWindow { max_ns, cpus, window_ns: max_ns, idle_since_ns: None, sampled_at_ns: None, crowded_samples: 0, clear_since_ns: 0, paused_until_ns: 0, pause_ns: PAUSE_MIN_NS, waiting_elsewhere: false, closed_periods: 0, probing: false }
    }

    /// The current window.
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Whether polling is paused at `now_ns` because the CPUs are crowded.
    pub fn paused(&self, now_ns: u64) -> bool {
        now_ns < self.paused_until_ns
    }

    /// Whether a new sample of the runnable tasks is due at `now_ns` (never when
    /// polling is off or paused).
    pub fn wants_sample(&self, now_ns: u64) -> bool {
        self.max_ns > 0 && !self.paused(now_ns) && self.sampled_at_ns.is_none_or(|at| now_ns.saturating_sub(at) >= SAMPLE_NS)
    }

    /// At `now_ns`, `runnable` tasks were ready to run (this one included).
    pub fn sample(&mut self, now_ns: u64, runnable: usize) {
        self.sampled_at_ns = Some(now_ns);
        if runnable <= self.cpus {
            self.crowded_samples = 0;
            if now_ns.saturating_sub(self.clear_since_ns) >= CLEAR_NS {
                self.pause_ns = PAUSE_MIN_NS;
            }
            return;
        }
        self.clear_since_ns = now_ns;
        self.crowded_samples += 1;
        if self.crowded_samples >= CROWDED_SAMPLES {
            self.crowded_samples = 0;
            self.paused_until_ns = now_ns.saturating_add(self.pause_ns);
            // A pause is no clear spell: that starts when polling resumes.
            self.clear_since_ns = self.paused_until_ns;
            self.pause_ns = (self.pause_ns * 2).min(PAUSE_MAX_NS);
        }
    }

    /// Whether the other side waits for answers this side gets from elsewhere (the
    /// daemon: a session with operations in flight at a remote master or queued
    /// behind another client's lock), so that nothing is expected on the socket
    /// soon: no polling, and the idle period starts only once that is over, so
    /// the wait for the answer does not count as the client's silence.
    pub fn set_waiting_elsewhere(&mut self, waiting: bool) {
        self.waiting_elsewhere = waiting;
    }

    /// The socket is empty at `now_ns`: whether to try it again (poll) rather than
    /// sleep until the runtime says it is readable. The first call after data
    /// starts the idle period.
    pub fn keep_polling(&mut self, now_ns: u64) -> bool {
        if self.waiting_elsewhere {
            self.idle_since_ns = None;
            return false;
        }
        let since = match self.idle_since_ns {
            Some(since) => since,
            None => {
                self.probing = false;
                if self.window_ns == 0 && self.max_ns > 0 {
                    self.closed_periods = self.closed_periods.wrapping_add(1);
                    self.probing = self.closed_periods.is_multiple_of(PROBE_EVERY);
                }
                *self.idle_since_ns.insert(now_ns)
            }
        };
        let window = if self.probing { self.max_ns } else { self.window_ns };
        !self.paused(now_ns) && now_ns.saturating_sub(since) < window
    }

    /// Data was read at `now_ns`: adapt the window to how long the socket was idle.
    pub fn data(&mut self, now_ns: u64) {
        let Some(since) = self.idle_since_ns.take() else { return };
        let idle = now_ns.saturating_sub(since);
        if std::mem::take(&mut self.probing) {
            if idle < self.max_ns {
                self.window_ns = self.max_ns;
            }
            return;
        }
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
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        for _ in 0..100 {
            assert!(idle_then_data(&mut w, &mut t, 20_000), "caught while polling");
            assert_eq!(w.window_ns(), MAX);
        }
    }

    #[test]
    fn an_idle_connection_stops_polling_and_a_busy_one_starts_again() {
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        let mut windows = Vec::new();
        for _ in 0..4 {
            idle_then_data(&mut w, &mut t, 5_000_000);
            windows.push(w.window_ns());
        }
        assert_eq!(windows, vec![50_000, 25_000, 12_500, 0], "halves, then stops");
        assert!(!w.keep_polling(t), "a window of 0 does not poll");
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
    fn a_closed_window_probes_once_in_a_while_and_reopens_if_that_pays() {
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        while w.window_ns() > 0 {
            idle_then_data(&mut w, &mut t, 5_000_000);
        }
        // The other side is slow (300 µs) whatever this side does: one probe per
        // PROBE_EVERY periods, each wasted, and the window stays closed.
        let mut probes = 0;
        for _ in 0..64 {
            if w.keep_polling(t) {
                assert!(w.keep_polling(t + MAX - 1), "a probe polls for the longest window");
                probes += 1;
            }
            t += 300_000;
            w.data(t);
            assert_eq!(w.window_ns(), 0);
        }
        assert_eq!(probes, 64 / PROBE_EVERY as usize);
        // Now the other side answers in 20 µs if this side polls, in 300 µs if
        // both sleep (the case the grow rule alone never gets out of): the next
        // probe catches the answer and opens the window fully.
        let mut periods = 0;
        while w.window_ns() == 0 {
            periods += 1;
            assert!(periods <= PROBE_EVERY, "a probe within {PROBE_EVERY} periods");
            let polling = w.keep_polling(t);
            t += if polling { 20_000 } else { 300_000 };
            w.data(t);
        }
        assert_eq!(w.window_ns(), MAX);
    }

    #[test]
    fn a_zero_maximum_never_polls() {
        let mut w = PollWindow::new(0, 2);
        for t in [0, 10, 1_000_000] {
            assert!(!w.keep_polling(t));
            w.data(t + 5);
            assert_eq!(w.window_ns(), 0);
        }
    }

    #[test]
    fn a_maximum_below_the_grow_start_is_kept() {
        let mut w = PollWindow::new(5_000, 2);
        let mut t = 0;
        idle_then_data(&mut w, &mut t, 1_000_000);
        assert_eq!(w.window_ns(), 0, "2.5 µs is below the smallest window of 5 µs");
        idle_then_data(&mut w, &mut t, 4_000);
        assert_eq!(w.window_ns(), 5_000, "grows back, capped at the maximum");
    }

    const MS: u64 = 1_000_000;

    /// Samples every 2 ms from `*t` with these runnable counts (2 CPUs); returns
    /// the samples at which polling was paused afterwards.
    fn samples(w: &mut PollWindow, t: &mut u64, runnable: &[usize]) -> Vec<bool> {
        let mut paused = Vec::new();
        for &r in runnable {
            if w.wants_sample(*t) {
                w.sample(*t, r);
            }
            paused.push(w.paused(*t));
            *t += SAMPLE_NS;
        }
        paused
    }

    #[test]
    fn crowded_cpus_pause_polling_for_longer_each_time() {
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        assert_eq!(samples(&mut w, &mut t, &[3, 3]), [false, true], "paused at the second crowded sample in a row");
        let mut probe_t = t;
        assert!(!idle_then_data(&mut w, &mut probe_t, 20_000), "no polling while paused");
        assert_eq!(w.window_ns(), MAX, "the window itself is kept");
        // Paused 8 ms (samples at 4, 6, 8 ms are not taken), then crowded again.
        assert_eq!(samples(&mut w, &mut t, &[3, 3, 3, 3, 3]), [true, true, true, false, true]);
        assert_eq!(w.paused_until_ns, 12 * MS + 2 * PAUSE_MIN_NS, "the second pause is twice as long");
        assert!(!w.wants_sample(12 * MS + 2 * PAUSE_MIN_NS - 1));
    }

    #[test]
    fn a_passing_task_does_not_pause_polling() {
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        assert!(samples(&mut w, &mut t, &[3, 2, 3, 1, 2, 3, 2, 3]).iter().all(|p| !p));
        let mut probe_t = t;
        assert!(idle_then_data(&mut w, &mut probe_t, 20_000));
    }

    #[test]
    fn a_long_clear_spell_makes_the_next_pause_short_again() {
        let mut w = PollWindow::new(MAX, 2);
        let mut t = 0;
        samples(&mut w, &mut t, &[3, 3]);
        samples(&mut w, &mut t, &[3; 6]);
        assert_eq!(w.pause_ns, 4 * PAUSE_MIN_NS, "two pauses: the next is four times the first");
        // Right after a long pause, a clear sample is no clear spell: the next
        // pause still doubles (a pinned pair is crowded only while both poll, so
        // its samples after a pause are often clear).
        t = w.paused_until_ns;
        samples(&mut w, &mut t, &[2, 3, 3]);
        assert_eq!(w.pause_ns, 8 * PAUSE_MIN_NS);
        t = w.paused_until_ns;
        samples(&mut w, &mut t, &[2; 40]);
        assert!(t - w.clear_since_ns >= CLEAR_NS);
        let start = t;
        samples(&mut w, &mut t, &[3, 3]);
        assert_eq!(w.paused_until_ns, start + SAMPLE_NS + PAUSE_MIN_NS);
        assert!(!PollWindow::new(0, 2).wants_sample(0), "no sampling when polling is off");
    }

    #[test]
    fn a_process_restricted_to_one_cpu_never_polls() {
        let mut w = PollWindow::new(MAX, 1);
        let mut t = 0;
        for _ in 0..64 {
            assert!(!idle_then_data(&mut w, &mut t, 20_000));
        }
        assert_eq!(w.window_ns(), 0);
        assert!(!w.wants_sample(t));
    }

    #[test]
    fn no_polling_while_the_other_side_waits_for_answers_from_elsewhere() {
        let mut w = PollWindow::new(MAX, 2);
        w.set_waiting_elsewhere(true);
        assert!(!w.keep_polling(0));
        assert!(!w.keep_polling(150_000));
        // The remote answer came and went out at 300 µs; the client's next request
        // comes 20 µs later: polling catches it, and the wait for the remote master
        // did not count as the client's silence.
        w.set_waiting_elsewhere(false);
        assert!(w.keep_polling(300_000));
        assert!(w.keep_polling(320_000));
        w.data(320_000);
        assert_eq!(w.window_ns(), MAX);
    }

    proptest! {
        /// Whatever the idle periods, the window stays within its bounds.
        #[test]
        fn the_window_stays_in_bounds(max in 0u64..1_000_000, idles in prop::collection::vec(0u64..3_000_000, 1..60)) {
            let mut w = PollWindow::new(max, 2);
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
