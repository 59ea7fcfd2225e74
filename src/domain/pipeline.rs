//! Pipeline steps: the ordered provider calls of one onboarding.

use std::fmt;
use std::str::FromStr;

/// Where a step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepState {
    /// Not started: an earlier step must finish first.
    Pending,
    /// Due to run (now or at its next attempt time).
    Ready,
    /// Claimed by a worker under a lease.
    Running,
    /// Waiting on the provider or the customer; polled or woken by a callback.
    Waiting,
    /// Finished with the result it was for; the next step may start.
    Succeeded,
    /// Failed for good (bounded retries exhausted or a permanent error).
    Failed,
    /// Not needed for this onboarding (e.g. no subscription requested).
    Skipped,
    /// Passed its deadline without progress.
    Stalled,
}

impl StepState {
    /// Every state.
    pub const ALL: [StepState; 8] = [
        Self::Pending,
        Self::Ready,
        Self::Running,
        Self::Waiting,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Stalled,
    ];

    /// Stable stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Ready => "READY",
            Self::Running => "RUNNING",
            Self::Waiting => "WAITING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Skipped => "SKIPPED",
            Self::Stalled => "STALLED",
        }
    }

    /// Whether the step is over (successfully or not).
    pub fn is_done(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Skipped)
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown step state '{s}'"))
    }
}
