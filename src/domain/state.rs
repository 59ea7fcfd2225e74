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

impl OnboardingState {
    /// Progress order of the main path (`PENDING` < `AWAITING_CUSTOMER` < `PROVISIONING` =
    /// `PENDING_REVIEW` < `LIVE`); side states rank with `PENDING`, where they usually occur.
    /// It tells a move forward from a move back, which the rules below treat differently.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending => 0,
            Self::AwaitingCustomer => 1,
            Self::Provisioning | Self::PendingReview => 2,
            Self::Live => 3,
            _ => 0,
        }
    }

    /// Whether a step's poll that observed `observed` while the onboarding is in `self` lags
    /// behind a live event and must not undo it: a poll never moves `LIVE` back to an earlier
    /// waiting state. (Callbacks, ordered by the provider's own timestamps, still can: a
    /// logout does.)
    pub fn poll_lags(self, observed: OnboardingState) -> bool {
        self == Self::Live && !observed.is_terminal() && observed.rank() < Self::Live.rank()
    }

    /// Where a step's poll that observed `observed` moves an onboarding in `self`: `None` when
    /// it stays (nothing observed, the same state, a move the machine refuses, or a lagging
    /// poll).
    pub fn polled_into(self, observed: Option<OnboardingState>) -> Option<OnboardingState> {
        observed.filter(|&s| s != self && self.can_transition(s) && !self.poll_lags(s))
    }

    /// Whether starting a step that enters `enter` moves an onboarding in `self` there: only
    /// forward or sideways on the main path (never back), never out of `LIVE`, and only when
    /// the machine allows it.
    pub fn enters(self, enter: OnboardingState) -> bool {
        enter != self && enter.rank() >= self.rank() && self != Self::Live && self.can_transition(enter)
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

    #[test]
    fn rank_orders_the_main_path() {
        let path = [Pending, AwaitingCustomer, Provisioning, Live];
        for w in path.windows(2) {
            assert!(w[0].rank() < w[1].rank(), "{} < {}", w[0], w[1]);
        }
        assert_eq!(Provisioning.rank(), PendingReview.rank());
        for side in [Stalled, ReauthRequired, Failed, Expired, Cancelled] {
            assert_eq!(side.rank(), Pending.rank(), "{side}");
        }
    }

    #[test]
    fn a_poll_behind_live_lags() {
        // (current, observed, lags)
        let table = [
            (Live, AwaitingCustomer, true),
            (Live, Provisioning, true),
            (Live, PendingReview, true),
            (Live, Pending, true),
            (Live, Live, false),
            (Live, Failed, false),
            (Live, Expired, false),
            (Provisioning, AwaitingCustomer, false),
            (AwaitingCustomer, Pending, false),
        ];
        for (current, observed, lags) in table {
            assert_eq!(current.poll_lags(observed), lags, "{current} observing {observed}");
        }
    }

    #[test]
    fn a_poll_moves_only_where_allowed_and_not_lagging() {
        // (current, observed, moves to)
        let table = [
            (Pending, None, None),
            (Pending, Some(Pending), None),
            (Pending, Some(Live), Some(Live)),
            (Provisioning, Some(Live), Some(Live)),
            (Provisioning, Some(AwaitingCustomer), Some(AwaitingCustomer)),
            (Live, Some(AwaitingCustomer), None),
            (Live, Some(Failed), Some(Failed)),
            (Live, Some(Expired), None),
            (Failed, Some(Live), None),
            (Stalled, Some(Provisioning), Some(Provisioning)),
        ];
        for (current, observed, to) in table {
            assert_eq!(current.polled_into(observed), to, "{current} observing {observed:?}");
        }
    }

    #[test]
    fn a_step_enters_its_state_only_forward() {
        // (current, entered, moves)
        let table = [
            (Pending, Provisioning, true),
            (Pending, AwaitingCustomer, true),
            (AwaitingCustomer, Provisioning, true),
            (Provisioning, PendingReview, true),
            (PendingReview, Provisioning, true),
            (Provisioning, Provisioning, false),
            (Provisioning, AwaitingCustomer, false),
            (Live, Provisioning, false),
            (Live, Live, false),
            (Stalled, Provisioning, true),
            (Failed, Provisioning, false),
        ];
        for (current, enter, moves) in table {
            assert_eq!(current.enters(enter), moves, "{current} entering {enter}");
        }
    }
}
