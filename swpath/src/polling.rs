//! How long a worker keeps polling its rings after they go idle before it re-arms
//! notifications and sleeps: the one decision that trades CPU for kicks, wake-ups and
//! latency.
//!
//! [`Polling::Fixed`] polls for a set time after every idle pass (zero: sleep at once).
//! [`Polling::Adaptive`], the default, learns the budget the way NAPI and the kernel's
//! busy-poll sockets do: polling that found work before the budget ran out, or a sleep
//! that a kick ended sooner than the budget could have covered, doubles it (up to the
//! ceiling); polling that ran out without work halves it. Under load the worker
//! therefore polls almost all the time and the frontend stops kicking; on an idle or
//! lightly used ring the budget decays to zero within a few wake-ups and the worker
//! costs nothing between kicks.

use std::time::{Duration, Instant};

/// The polling policy of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Learn the budget from the traffic, between zero and `ceiling`.
    Adaptive {
        /// Longest budget (zero: never poll, always sleep at once).
        ceiling: Duration,
    },
    /// Always poll this long after the rings go idle (zero: sleep at once).
    Fixed(Duration),
}

impl Polling {
    /// The default: adaptive up to [`DEFAULT_CEILING`].
    pub const DEFAULT: Polling = Polling::Adaptive {
        ceiling: DEFAULT_CEILING,
    };
}

impl Default for Polling {
    fn default() -> Self {
        Polling::DEFAULT
    }
}

/// Default adaptive ceiling: long enough to bridge a frontend's refill of a 256-entry
/// ring at a few Mpps, short enough that a worker gives a quiet ring up in well under a
/// millisecond.
pub const DEFAULT_CEILING: Duration = Duration::from_micros(200);

/// The first non-zero adaptive budget; doubling from here reaches 200 µs in six steps.
const STEP: Duration = Duration::from_micros(4);

/// How polling went, counted per worker and reported on the pair's RX ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollCounts {
    /// Idle polls that found work before their budget ran out.
    pub hits: u64,
    /// Idle polls whose budget ran out without work.
    pub misses: u64,
    /// Times the worker went to sleep.
    pub sleeps: u64,
}

/// The running state of a worker's [`Polling`] policy.
#[derive(Debug)]
pub(crate) struct PollBudget {
    policy: Polling,
    budget: Duration,
    /// When the current idle poll began, while one is running.
    polling_since: Option<Instant>,
    /// When the worker last went to sleep.
    slept_at: Option<Instant>,
    counts: PollCounts,
}

impl PollBudget {
    /// A budget for `policy`; adaptive starts at zero and grows only with traffic.
    pub(crate) fn new(policy: Polling) -> Self {
        let budget = match policy {
            Polling::Fixed(d) => d,
            Polling::Adaptive { .. } => Duration::ZERO,
        };
        PollBudget {
            policy,
            budget,
            polling_since: None,
            slept_at: None,
            counts: PollCounts::default(),
        }
    }

    /// The current budget.
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    /// What happened so far.
    pub(crate) fn counts(&self) -> PollCounts {
        self.counts
    }

    /// The rings had work. Ends an idle poll that was running as a hit.
    pub(crate) fn work(&mut self) {
        if self.polling_since.take().is_some() {
            self.counts.hits += 1;
            self.grow();
        }
    }

    /// The rings were idle at `now`: whether to keep polling (true) or re-arm
    /// notifications and sleep (false). Ends an idle poll whose budget is spent as a
    /// miss.
    pub(crate) fn keep_polling(&mut self, now: Instant) -> bool {
        if self.budget.is_zero() {
            return false;
        }
        let since = *self.polling_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.budget {
            return true;
        }
        self.polling_since = None;
        self.counts.misses += 1;
        self.shrink();
        false
    }

    /// The worker goes to sleep at `now`.
    pub(crate) fn sleeping(&mut self, now: Instant) {
        self.polling_since = None;
        self.slept_at = Some(now);
        self.counts.sleeps += 1;
    }

    /// The worker woke at `now` with work to look at (a kick or the backend). A sleep
    /// shorter than the ceiling would have been bridged by polling: grow the budget.
    pub(crate) fn woke(&mut self, now: Instant) {
        let (Some(slept), Polling::Adaptive { ceiling }) = (self.slept_at.take(), self.policy)
        else {
            return;
        };
        if now.saturating_duration_since(slept) <= ceiling {
            self.grow();
        }
    }

    fn grow(&mut self) {
        if let Polling::Adaptive { ceiling } = self.policy {
            self.budget = (self.budget * 2).max(STEP).min(ceiling);
        }
    }

    fn shrink(&mut self) {
        if let Polling::Adaptive { .. } = self.policy {
            self.budget /= 2;
            if self.budget < STEP {
                self.budget = Duration::ZERO;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn adaptive() -> PollBudget {
        PollBudget::new(Polling::Adaptive { ceiling: 200 * US })
    }

    #[test]
    fn fixed_polls_for_its_budget_every_time() {
        let mut p = PollBudget::new(Polling::Fixed(50 * US));
        let t0 = Instant::now();
        for round in 0..3u32 {
            let start = t0 + round * 100 * US;
            assert!(p.keep_polling(start));
            assert!(p.keep_polling(start + 49 * US));
            assert!(!p.keep_polling(start + 50 * US), "budget spent");
            assert_eq!(p.budget(), 50 * US, "a fixed budget never changes");
        }
        assert_eq!(p.counts().misses, 3);
        let mut off = PollBudget::new(Polling::Fixed(Duration::ZERO));
        assert!(!off.keep_polling(t0), "zero: sleep at once");
        assert_eq!(off.counts().misses, 0);
    }

    #[test]
    fn adaptive_starts_asleep_and_grows_with_short_sleeps() {
        let mut p = adaptive();
        let t0 = Instant::now();
        assert!(!p.keep_polling(t0), "no traffic seen yet: no polling");
        // Kicks arrive 10 µs after each sleep: polling would have caught them.
        let mut t = t0;
        for _ in 0..10 {
            p.sleeping(t);
            t += 10 * US;
            p.woke(t);
        }
        assert_eq!(p.budget(), 200 * US, "grows to the ceiling, never past it");
        assert_eq!(p.counts().sleeps, 10);
    }

    #[test]
    fn adaptive_decays_to_zero_on_a_quiet_ring() {
        let mut p = adaptive();
        let mut t = Instant::now();
        for _ in 0..8 {
            p.sleeping(t);
            t += US;
            p.woke(t);
        }
        assert_eq!(p.budget(), 200 * US);
        // From now on nothing comes: every poll runs out.
        let mut polls = 0;
        while !p.budget().is_zero() {
            assert!(p.keep_polling(t));
            t += p.budget();
            assert!(!p.keep_polling(t));
            polls += 1;
            assert!(polls < 10, "the budget must reach zero in a few misses");
        }
        assert_eq!(p.counts().misses, polls);
        // Long sleeps do not grow it again.
        p.sleeping(t);
        p.woke(t + 5_000 * US);
        assert!(!p.keep_polling(t + 5_000 * US));
    }

    #[test]
    fn work_found_while_polling_is_a_hit_and_grows() {
        let mut p = adaptive();
        let t = Instant::now();
        p.sleeping(t);
        p.woke(t + US);
        let b = p.budget();
        assert!(p.keep_polling(t + 2 * US));
        p.work();
        assert_eq!(p.counts().hits, 1);
        assert_eq!(p.budget(), b * 2);
        // Work outside an idle poll is not a hit.
        p.work();
        assert_eq!(p.counts().hits, 1);
    }

    #[test]
    fn a_zero_ceiling_never_polls() {
        let mut p = PollBudget::new(Polling::Adaptive {
            ceiling: Duration::ZERO,
        });
        let t = Instant::now();
        p.sleeping(t);
        p.woke(t);
        assert_eq!(p.budget(), Duration::ZERO);
        assert!(!p.keep_polling(t));
    }
}
