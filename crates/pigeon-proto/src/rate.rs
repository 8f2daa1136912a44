//! A token bucket driven by an explicit clock.

use std::time::Instant;

/// Allows `rate` events per second with bursts up to `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f32,
    last: Instant,
    rate: f32,
    burst: f32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f32, burst: f32, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Takes `n` tokens if there are enough; otherwise returns how long until there will be.
    pub fn take(&mut self, n: f32, now: Instant) -> Result<(), std::time::Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            let wait = (n - self.tokens) / self.rate.max(f32::MIN_POSITIVE);
            Err(std::time::Duration::from_secs_f32(wait.min(3600.0)))
        }
    }

    /// Whether the bucket is full again (and so can be forgotten).
    pub fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        for _ in 0..5 {
            assert!(b.take(1.0, t0).is_ok());
        }
        let wait = b.take(1.0, t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(101), "{wait:?}");
        assert!(b.take(1.0, t0 + Duration::from_millis(100)).is_ok());
        assert!(b.is_full(t0 + Duration::from_secs(1)));
    }
}
