//! The retry policy of outbound delivery, pure: what an attempt's outcome means (delivered,
//! destination gone, retry, dead letter) and when the next attempt runs. Randomness comes in as
//! an argument (`jitter` in `[0, 1)`), so every decision is a table test.
//!
//! The jitter keeps the configured schedule: retry `n` waits uniformly in `[0.5, 1.5) x` its
//! step, so the mean wait is the step and a schedule written as "about a day" retries for
//! about a day (full jitter, `[0, step)`, would halve it).

use std::time::{Duration, SystemTime};

/// The lowest factor of a step the jitter picks; the highest is `2 - JITTER_LOW`, so the mean
/// factor is 1.
pub const JITTER_LOW: f64 = 0.5;

/// When retries run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// An explicit list: retry `n` (1-based) waits about `delays[n - 1]`; its length is the
    /// number of retries.
    Delays(Vec<Duration>),
    /// Retry `n` waits about `min(base * factor^(n-1), cap)`; `retries` retries in all.
    Exponential {
        /// The first retry's step.
        base: Duration,
        /// Growth per retry.
        factor: u32,
        /// Largest step.
        cap: Duration,
        /// Retries after the first attempt.
        retries: u32,
    },
}

impl Schedule {
    /// Retries after the first attempt.
    pub fn retries(&self) -> u32 {
        match self {
            Self::Delays(d) => u32::try_from(d.len()).unwrap_or(u32::MAX),
            Self::Exponential { retries, .. } => *retries,
        }
    }

    /// The step of retry `n` (1-based): the mean of its jittered wait; `None` past the last
    /// retry.
    pub fn step(&self, n: u32) -> Option<Duration> {
        if n == 0 || n > self.retries() {
            return None;
        }
        match self {
            Self::Delays(d) => d.get(n as usize - 1).copied(),
            Self::Exponential { base, factor, cap, .. } => {
                let growth = factor.checked_pow(n - 1).unwrap_or(u32::MAX);
                Some(base.checked_mul(growth).map_or(*cap, |d| d.min(*cap)))
            }
        }
    }

    /// The sum of every step: the mean time a delivery spends retrying before it is
    /// dead-lettered (the jitter keeps it; each wait lies in `[0.5, 1.5)` of its step).
    pub fn total(&self) -> Duration {
        (1..=self.retries()).filter_map(|n| self.step(n)).sum()
    }
}

/// The default: steps of 30 s doubling to a cap of 4 h, 14 retries. They add up to 87,330 s,
/// about 24 h, the mean time a delivery is retried before it is dead-lettered.
impl Default for Schedule {
    fn default() -> Self {
        Self::Exponential { base: Duration::from_secs(30), factor: 2, cap: Duration::from_secs(4 * 3600), retries: 14 }
    }
}

/// The schedule plus how far a receiver's `Retry-After` is honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// When retries run.
    pub schedule: Schedule,
    /// The longest `Retry-After` obeyed; a longer one waits this long (a receiver cannot park
    /// a delivery for a year).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { schedule: Schedule::default(), max_retry_after: Duration::from_secs(8 * 3600) }
    }
}

/// Why an attempt got no HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request or the response did not finish within the timeout.
    Timeout,
    /// No connection (refused, reset, TLS failure, DNS failure).
    Connect,
    /// The egress guard refused every address of the destination (it may resolve elsewhere
    /// later, or the allow list may change, so this retries too).
    Refused,
    /// Any other transport error.
    Other,
}

/// What one attempt observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered.
    Status {
        /// The HTTP status code.
        code: u16,
        /// Its `Retry-After`, already read relative to the time of the answer.
        retry_after: Option<Duration>,
    },
    /// No answer.
    Failed(FailureKind),
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: done.
    Delivered,
    /// 410 Gone: the receiver says the endpoint is gone; disable the destination.
    DisableDestination,
    /// Try again after this wait.
    RetryAfter(Duration),
    /// The last attempt failed: keep it as a dead letter (listed, replayable).
    DeadLetter,
}

impl RetryPolicy {
    /// The decision after attempt number `attempt` (1 = the first) ended with `outcome`;
    /// `jitter` in `[0, 1)` picks the wait inside `[0.5, 1.5)` of the retry's step (so waits
    /// average the step), and a `Retry-After` longer than that wins, up to
    /// `max_retry_after`.
    pub fn decide(&self, attempt: u32, outcome: Outcome, jitter: f64) -> Decision {
        let retry_after = match outcome {
            Outcome::Status { code: 200..=299, .. } => return Decision::Delivered,
            Outcome::Status { code: 410, .. } => return Decision::DisableDestination,
            Outcome::Status { retry_after, .. } => retry_after,
            Outcome::Failed(_) => None,
        };
        let Some(step) = self.schedule.step(attempt) else {
            return Decision::DeadLetter;
        };
        let jittered = step.mul_f64(JITTER_LOW + jitter.clamp(0.0, 1.0));
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(self.max_retry_after));
        Decision::RetryAfter(jittered.max(asked))
    }
}

/// Reads a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds, or an HTTP-date taken
/// relative to `now` (a date in the past means "now"). `None` when unreadable.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn status(code: u16) -> Outcome {
        Outcome::Status { code, retry_after: None }
    }

    #[test]
    fn classification_table() {
        let p = RetryPolicy::default();
        // Jitter 0.5 is the middle of [0.5, 1.5): the wait is the step itself.
        let cases: &[(u32, Outcome, Decision)] = &[
            (1, status(200), Decision::Delivered),
            (1, status(204), Decision::Delivered),
            (15, status(299), Decision::Delivered),
            (1, status(410), Decision::DisableDestination),
            (15, status(410), Decision::DisableDestination),
            (1, status(400), Decision::RetryAfter(S(30))),
            (1, status(404), Decision::RetryAfter(S(30))),
            (1, status(429), Decision::RetryAfter(S(30))),
            (1, status(500), Decision::RetryAfter(S(30))),
            (1, status(503), Decision::RetryAfter(S(30))),
            (1, status(301), Decision::RetryAfter(S(30))),
            (1, status(100), Decision::RetryAfter(S(30))),
            (1, Outcome::Failed(FailureKind::Timeout), Decision::RetryAfter(S(30))),
            (1, Outcome::Failed(FailureKind::Connect), Decision::RetryAfter(S(30))),
            (1, Outcome::Failed(FailureKind::Refused), Decision::RetryAfter(S(30))),
            (2, status(500), Decision::RetryAfter(S(60))),
            (14, status(500), Decision::RetryAfter(S(4 * 3600))),
            (15, status(500), Decision::DeadLetter),
            (15, Outcome::Failed(FailureKind::Timeout), Decision::DeadLetter),
            (15, Outcome::Failed(FailureKind::Other), Decision::DeadLetter),
        ];
        for (attempt, outcome, want) in cases {
            assert_eq!(p.decide(*attempt, *outcome, 0.5), *want, "attempt {attempt}, {outcome:?}");
        }
    }

    #[test]
    fn jitter_spans_half_to_one_and_a_half_steps() {
        let p = RetryPolicy::default();
        // Retry 3's step is 120 s.
        assert_eq!(p.decide(3, status(500), 0.0), Decision::RetryAfter(S(60)));
        assert_eq!(p.decide(3, status(500), 0.25), Decision::RetryAfter(S(90)));
        assert_eq!(p.decide(3, status(500), 0.5), Decision::RetryAfter(S(120)));
        assert_eq!(p.decide(3, status(500), 1.0), Decision::RetryAfter(S(180)));
        // Out-of-range jitter is clamped to the interval.
        assert_eq!(p.decide(3, status(500), 7.0), Decision::RetryAfter(S(180)));
        assert_eq!(p.decide(3, status(500), -1.0), Decision::RetryAfter(S(60)));
    }

    /// The sum of the waits one delivery goes through before it is dead-lettered, with the
    /// same jitter draw on every retry.
    fn waited(p: &RetryPolicy, jitter: f64) -> Duration {
        let mut total = Duration::ZERO;
        for attempt in 1.. {
            match p.decide(attempt, status(500), jitter) {
                Decision::RetryAfter(d) => total += d,
                Decision::DeadLetter => break,
                other => panic!("{other:?}"),
            }
        }
        total
    }

    #[test]
    fn the_jitter_keeps_the_schedules_total() {
        for schedule in [Schedule::default(), Schedule::Delays(vec![S(5), S(60), S(3600), S(86_400)])] {
            let p = RetryPolicy { schedule: schedule.clone(), ..RetryPolicy::default() };
            let total = schedule.total();
            // The middle draw waits exactly the schedule; the extremes half and one and a half.
            assert_eq!(waited(&p, 0.5), total, "{schedule:?}");
            assert_eq!(waited(&p, 0.0), total / 2, "{schedule:?}");
            assert_eq!(waited(&p, 1.0), total * 3 / 2, "{schedule:?}");
            // Uniform draws: the mean over an even grid of [0, 1) is the schedule's sum (the
            // grid's mean factor is 0.5 + 0.4995 = 0.9995; within 0.1 %).
            let draws = 1000u32;
            let sum: Duration = (0..draws).map(|i| waited(&p, f64::from(i) / f64::from(draws))).sum();
            let mean = (sum / draws).as_secs_f64();
            let want = total.as_secs_f64();
            assert!((mean - want).abs() <= want * 0.001, "{schedule:?}: mean {mean} s, schedule {want} s");
        }
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let p = RetryPolicy { max_retry_after: S(3600), ..RetryPolicy::default() };
        let asked = |d| Outcome::Status { code: 503, retry_after: Some(d) };
        assert_eq!(p.decide(1, asked(S(600)), 0.5), Decision::RetryAfter(S(600)));
        assert_eq!(p.decide(1, asked(S(5)), 0.5), Decision::RetryAfter(S(30)));
        assert_eq!(p.decide(1, asked(S(86_400)), 0.5), Decision::RetryAfter(S(3600)));
        assert_eq!(p.decide(15, asked(S(5)), 0.5), Decision::DeadLetter);
        assert_eq!(p.decide(1, Outcome::Status { code: 200, retry_after: Some(S(9)) }, 0.5), Decision::Delivered);
    }

    #[test]
    fn schedules() {
        let exp = Schedule::default();
        let steps: Vec<u64> = (1..=15).map(|n| exp.step(n).map_or(0, |d| d.as_secs())).collect();
        assert_eq!(steps, [30, 60, 120, 240, 480, 960, 1920, 3840, 7680, 14400, 14400, 14400, 14400, 14400, 0]);
        assert_eq!(exp.step(0), None);
        // About a day: the mean time retried is the steps' sum.
        let total = exp.total().as_secs();
        assert_eq!(total, 87_330);
        assert!((22 * 3600..=26 * 3600).contains(&total), "{total}");

        let list = Schedule::Delays(vec![S(5), S(60), S(3600)]);
        assert_eq!(list.retries(), 3);
        assert_eq!(list.step(2), Some(S(60)));
        assert_eq!(list.step(4), None);
        assert_eq!(list.total(), S(3665));
        let p = RetryPolicy { schedule: list, ..RetryPolicy::default() };
        assert_eq!(p.decide(3, status(500), 0.5), Decision::RetryAfter(S(3600)));
        assert_eq!(p.decide(4, status(500), 0.5), Decision::DeadLetter);

        // No overflow for large factors or retry numbers: the cap holds.
        let steep = Schedule::Exponential { base: S(1), factor: 1000, cap: S(60), retries: 50 };
        assert_eq!(steep.step(50), Some(S(60)));
        let none = RetryPolicy { schedule: Schedule::Delays(vec![]), ..RetryPolicy::default() };
        assert_eq!(none.decide(1, status(500), 0.5), Decision::DeadLetter);
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + S(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("120", now), Some(S(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now), Some(S(120)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
    }
}
