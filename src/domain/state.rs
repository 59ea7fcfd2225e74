//! The canonical onboarding state machine (design §4), the same over every provider.

use std::fmt;
use std::str::FromStr;

/// Where an onboarding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnboardingState {
    /// Accepted; the provider call is not yet confirmed.
    Pending,
    /// A link, QR or code is out; the business owner must act.
    AwaitingCustomer,
    /// The provider is setting the number up.
    Provisioning,
    /// Done: the number can message.
    Live,
    /// Waiting on Meta or the provider; not an error.
    PendingReview,
    /// No progress before its deadline; `RetryPipeline` restarts it.
    Stalled,
    /// Credentials were rejected repeatedly; fix the account, then retry.
    ReauthRequired,
    /// Terminal: the provider refused or failed for good.
    Failed,
    /// Terminal: the link or token lapsed before the customer finished.
    Expired,
    /// Terminal: cancelled by the caller.
    Cancelled,
}

impl OnboardingState {
    /// Every state.
    pub const ALL: [OnboardingState; 10] = [
        Self::Pending,
        Self::AwaitingCustomer,
        Self::Provisioning,
        Self::Live,
        Self::PendingReview,
        Self::Stalled,
        Self::ReauthRequired,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    /// Stable name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::AwaitingCustomer => "AWAITING_CUSTOMER",
            Self::Provisioning => "PROVISIONING",
            Self::Live => "LIVE",
            Self::PendingReview => "PENDING_REVIEW",
            Self::Stalled => "STALLED",
            Self::ReauthRequired => "REAUTH_REQUIRED",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
        }
    }

    /// No transition leaves a terminal state.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Expired | Self::Cancelled)
    }

    /// `LIVE` is not terminal (a Whapi channel can be logged out) but is "finished" for
    /// purposes such as "cancel refused once finished".
    pub fn is_finished(self) -> bool {
        self == Self::Live || self.is_terminal()
    }

    /// Whether the engine may move an onboarding from `self` to `to`. Same-state is allowed
    /// (it records a new raw provider status without a state change).
    pub fn can_transition(self, to: OnboardingState) -> bool {
        use OnboardingState::*;
        if self == to {
            return !self.is_terminal();
        }
        if self.is_terminal() {
            return false;
        }
        match (self, to) {
            // Anything still open can fail, be cancelled, stall or need re-auth.
            (_, Failed | Cancelled | Stalled | ReauthRequired) => true,
            // Retrying a stalled or re-auth onboarding goes back into the flow.
            (Stalled | ReauthRequired, _) => true,
            (Pending, AwaitingCustomer | Provisioning | PendingReview | Live | Expired) => true,
            (AwaitingCustomer, Provisioning | PendingReview | Live | Expired) => true,
            (Provisioning, PendingReview | Live | AwaitingCustomer) => true,
            (PendingReview, Provisioning | Live | AwaitingCustomer) => true,
            // A Whapi channel logged out or broken goes back to waiting for a scan.
            (Live, AwaitingCustomer | PendingReview | Provisioning) => true,
            _ => false,
        }
    }
}

impl fmt::Display for OnboardingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnboardingState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown onboarding state '{s}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OnboardingState::*;

    #[test]
    fn terminal_states_are_final() {
        for t in [Failed, Expired, Cancelled] {
            for to in OnboardingState::ALL {
                assert!(!t.can_transition(to), "{t} -> {to}");
            }
        }
    }

    #[test]
    fn happy_paths() {
        assert!(Pending.can_transition(Provisioning));
        assert!(Provisioning.can_transition(Live));
        assert!(Pending.can_transition(AwaitingCustomer));
        assert!(AwaitingCustomer.can_transition(Live));
        assert!(Live.can_transition(AwaitingCustomer));
        assert!(Stalled.can_transition(Provisioning));
        assert!(!Live.can_transition(Pending));
        assert!(!Live.can_transition(Expired));
        assert!(!Provisioning.can_transition(Pending));
    }

    #[test]
    fn names_round_trip() {
        for s in OnboardingState::ALL {
            assert_eq!(s.as_str().parse::<OnboardingState>().unwrap(), s);
        }
    }
}
