//! The timer of a connection's wait for a request head (keep-alive, then header timeout): one
//! tokio timer per connection, moved only when it must be.
//!
//! Phase: the connection gate, while it waits for a head.
//!
//! Why not a timer per wait: arming one for every request cost, in callgrind, about 650
//! instructions and two clock reads (Pingora's shared timer: a lock and a map insert per
//! request), or tokio's driver lock twice (register and remove), plus the clock reads to set
//! the deadline. Here the deadline is a number read off the kernel's coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`: a read of the vDSO's data page, no TSC, a scheduler tick's
//! resolution, 1-10 ms), which is plenty for timeouts counted in seconds; the tokio timer is
//! armed once per connection and stays registered across its requests. When it fires before
//! the deadline (the deadline moved later since it was armed), it is re-armed for the rest;
//! only a deadline moved earlier than the timer (a head started: the header timeout, shorter
//! than the keep-alive wait left) moves it at once.
//!
//! Invariant: [`HeadTimer::expired`] completes once the deadline has passed on the coarse clock:
//! in real time at most one tick of that clock before it (the coarse clock lags by up to a
//! tick when the deadline is set) and about a tick plus tokio's resolution (1 ms) after.

use std::pin::Pin;
use std::time::Duration;

use nix::time::{clock_gettime, ClockId};
use tokio::time::{Instant, Sleep};

/// The longest one arming: a longer wait is armed again when this much has passed (so a
/// deadline however far never overflows tokio's `Instant`).
const ARM_MAX: Duration = Duration::from_secs(24 * 3600);

#[cfg(any(target_os = "linux", target_os = "android"))]
const COARSE: ClockId = ClockId::CLOCK_MONOTONIC_COARSE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const COARSE: ClockId = ClockId::CLOCK_MONOTONIC;

/// The coarse monotonic clock, as time since an unspecified start.
fn coarse_now() -> Duration {
    // Neither clock can fail on a supported kernel; both count from the same start, so the
    // fallback keeps deadlines comparable.
    clock_gettime(COARSE)
        .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
        .map(Duration::from)
        .unwrap_or_default()
}

/// One connection's head timer.
#[derive(Default)]
pub(super) struct HeadTimer {
    /// When the wait ends, on the coarse clock.
    deadline: Duration,
    /// The tokio timer, armed the first time a wait has to sleep.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When `sleep` fires, on the coarse clock; `None` before it is armed and once it has
    /// fired (it must be armed again before it is awaited).
    fires: Option<Duration>,
}

impl HeadTimer {
    /// The wait ends `after` from now.
    pub(super) fn set(&mut self, after: Duration) {
        self.deadline = coarse_now().saturating_add(after);
    }

    /// Completes once the deadline has passed.
    pub(super) async fn expired(&mut self) {
        loop {
            let now = coarse_now();
            let Some(left) = self.deadline.checked_sub(now).filter(|d| !d.is_zero()) else {
                return;
            };
            // Armed to fire by the deadline: if that is early, the loop arms it again.
            let in_time = self.fires.is_some_and(|fires| fires <= self.deadline);
            if !in_time {
                let arm = left.min(ARM_MAX);
                let at = Instant::now() + arm;
                match self.sleep.as_mut() {
                    Some(sleep) => sleep.as_mut().reset(at),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                self.fires = Some(now + arm);
            }
            if let Some(sleep) = self.sleep.as_mut() {
                sleep.as_mut().await;
            }
            self.fires = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elapsed_ms(start: std::time::Instant) -> u128 {
        start.elapsed().as_millis()
    }

    /// Sets the deadline `armed` from now and waits `after` (it must not pass), then moves the
    /// deadline to `moved` from then and waits for it: the milliseconds it all took.
    async fn moved_wait(timer: &mut HeadTimer, armed: u64, after: u64, moved: u64) -> u128 {
        let start = std::time::Instant::now();
        timer.set(Duration::from_millis(armed));
        let waited = tokio::time::timeout(Duration::from_millis(after), timer.expired()).await;
        assert!(waited.is_err(), "expired before its deadline was moved");
        timer.set(Duration::from_millis(moved));
        timer.expired().await;
        elapsed_ms(start)
    }

    /// A wait ends at its deadline, not before, and a deadline moved later after the timer was
    /// armed is kept (the early firing re-arms it) as one moved earlier is. The coarse clock
    /// lags by up to a tick (at most 10 ms), so a wait may end that much early.
    #[tokio::test]
    async fn ends_at_the_deadline_as_it_moves() {
        let mut timer = HeadTimer::default();
        let start = std::time::Instant::now();
        timer.set(Duration::from_millis(60));
        timer.expired().await;
        let first = elapsed_ms(start);
        assert!((45..400).contains(&first), "first wait {first} ms");

        // Armed for 200 ms; 50 ms later the deadline moves to 250 ms from then (a keep-alive
        // wait restarted): 300 ms in all.
        let later = moved_wait(&mut timer, 200, 50, 250).await;
        assert!((280..800).contains(&later), "moved-later wait {later} ms");

        // Armed for 30 s; 20 ms later moved to 40 ms from then (a head started): 60 ms in all.
        let earlier = moved_wait(&mut timer, 30_000, 20, 40).await;
        assert!(
            (45..400).contains(&earlier),
            "moved-earlier wait {earlier} ms"
        );
    }

    /// A deadline already passed ends the wait at once, without arming anything.
    #[tokio::test]
    async fn a_passed_deadline_ends_at_once() {
        let mut timer = HeadTimer::default();
        timer.set(Duration::ZERO);
        timer.expired().await;
        assert!(timer.sleep.is_none());
    }
}
