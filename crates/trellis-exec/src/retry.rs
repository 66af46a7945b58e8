//! Retry policy as data; its delays are an iterator (backon's exponential backoff), seeded per
//! job so a run's schedule is reproducible.

use std::time::Duration;

use backon::BackoffBuilder;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Extra attempts after the first.
    pub retries: u32,
    /// First retry delay; doubles for each further retry.
    pub delay: Duration,
    /// Upper bound of a delay before jitter.
    pub max_delay: Duration,
    /// Add a random share (0–100 %) of each delay, so that retries do not stampede.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { retries: 2, delay: Duration::from_secs(1), max_delay: Duration::from_secs(60), jitter: true }
    }
}

impl RetryPolicy {
    pub fn none() -> Self {
        Self { retries: 0, ..Self::default() }
    }

    /// The delays before retry 1, 2, …; `seed` makes the jitter reproducible.
    pub fn delays(&self, seed: u64) -> impl Iterator<Item = Duration> + use<> {
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.retries as usize);
        if self.jitter {
            builder = builder.with_jitter().with_jitter_seed(seed);
        }
        builder.build()
    }

    /// A stable seed for a job id, so reruns schedule the same delays.
    pub fn seed_for(id: &str) -> u64 {
        // FNV-1a: stable across runs and platforms, unlike std's RandomState.
        id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_stop_after_retries() {
        let policy = RetryPolicy {
            retries: 3,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            jitter: false,
        };
        let delays: Vec<Duration> = policy.delays(0).collect();
        assert_eq!(delays, [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)]);
    }

    #[test]
    fn jitter_is_bounded_and_reproducible() {
        let policy = RetryPolicy { retries: 4, jitter: true, ..RetryPolicy::default() };
        let a: Vec<Duration> = policy.delays(7).collect();
        let b: Vec<Duration> = policy.delays(7).collect();
        assert_eq!(a, b);
        for (n, d) in a.iter().enumerate() {
            let base = Duration::from_secs(1 << n);
            assert!(*d >= base && *d < base * 2, "retry {n}: {d:?}");
        }
    }

    #[test]
    fn max_delay_caps_growth() {
        let policy = RetryPolicy {
            retries: 5,
            delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(30),
            jitter: false,
        };
        assert_eq!(policy.delays(0).last(), Some(Duration::from_secs(30)));
    }
}
