//! The retry budget of one upstream, in the manner of Finagle's `RetryBudget`: over a
//! sliding window, retries may be at most a share of the requests plus a minimum per
//! second, so that retries cannot multiply the load on an upstream that is failing.

use std::time::Instant;

use idgate_config::RetryBudgetConfig;

use super::window::Window;

#[derive(Debug)]
pub(crate) struct RetryBudget {
    /// First requests (count 0) and retries (count 1).
    window: Window,
}

impl RetryBudget {
    pub(crate) fn new(now: Instant, cfg: &RetryBudgetConfig) -> Self {
        Self {
            window: Window::new(now, cfg.window),
        }
    }

    /// Counts a request's first attempt.
    pub(crate) fn request(&mut self, now: Instant, cfg: &RetryBudgetConfig) {
        self.window.set_span(cfg.window);
        self.window.add(now, 0, 1);
    }

    /// Takes one retry from the budget, or says there is none left.
    pub(crate) fn try_retry(&mut self, now: Instant, cfg: &RetryBudgetConfig) -> bool {
        self.window.set_span(cfg.window);
        let [requests, retries] = self.window.totals(now);
        let allowed = cfg.percent / 100.0 * requests as f64
            + f64::from(cfg.min_per_second) * cfg.window.as_secs_f64();
        if (retries + 1) as f64 <= allowed {
            self.window.add(now, 1, 1);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg(percent: f64, min_per_second: u32) -> RetryBudgetConfig {
        RetryBudgetConfig {
            percent,
            min_per_second,
            window: Duration::from_secs(10),
        }
    }

    #[test]
    fn retries_are_a_share_of_requests() {
        let c = cfg(20.0, 0);
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0, &c);
        for _ in 0..100 {
            b.request(t0, &c);
        }
        let granted = (0..100).filter(|_| b.try_retry(t0, &c)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn the_minimum_per_second_covers_quiet_times_and_refills() {
        let c = cfg(0.0, 1);
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0, &c);
        // One a second over a ten-second window: ten.
        let granted = (0..50).filter(|_| b.try_retry(t0, &c)).count();
        assert_eq!(granted, 10);
        assert!(!b.try_retry(t0 + Duration::from_secs(5), &c));
        // Once those retries leave the window, the budget is back.
        assert!(b.try_retry(t0 + Duration::from_secs(11), &c));
    }

    #[test]
    fn a_zero_budget_grants_nothing() {
        let c = cfg(0.0, 0);
        let t0 = Instant::now();
        let mut b = RetryBudget::new(t0, &c);
        b.request(t0, &c);
        assert!(!b.try_retry(t0, &c));
    }
}
