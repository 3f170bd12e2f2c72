use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use super::*;

fn settings() -> Settings {
    Settings {
        consecutive_failures: Some(3),
        failure_rate: None,
        open_duration: Duration::from_secs(5),
        max_open_duration: Duration::from_secs(30),
        half_open_probes: 1,
    }
}

/// Counts how often a breaker opened.
#[derive(Default)]
struct Opened(AtomicUsize);

impl crate::Observer for Opened {
    fn decided(&self, decision: crate::Decision, _: crate::Enforcement) {
        if decision == crate::Decision::BreakerMoved(State::Open) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn breaker(s: Settings) -> (Breaker, Arc<Opened>) {
    let opened = Arc::new(Opened::default());
    let b = Breaker::spawn(s, opened.clone());
    (b, opened)
}

async fn wait_for(b: &Breaker, want: State) {
    let mut rx = b.state.clone();
    tokio::time::timeout(Duration::from_secs(600), rx.wait_for(|p| p.state == want))
        .await
        .unwrap_or_else(|_| panic!("breaker never reached {want:?}"))
        .expect("breaker task alive");
}

/// Lets the breaker task process what was sent, without moving the clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn fail(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_admit().expect("admitted").record(true);
    }
}

fn succeed(b: &Breaker, n: usize) {
    for _ in 0..n {
        b.try_admit().expect("admitted").record(false);
    }
}

#[tokio::test(start_paused = true)]
async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
    let (b, opened) = breaker(settings());
    fail(&b, 2);
    succeed(&b, 1);
    fail(&b, 2);
    settle().await;
    assert_eq!(b.state(), State::Closed, "a success in between resets the run");
    fail(&b, 1);
    wait_for(&b, State::Open).await;
    assert_eq!(b.try_admit().err(), Some(CircuitOpen));
    assert_eq!(opened.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn opens_on_failure_rate_only_after_minimum_requests() {
    let s = Settings {
        consecutive_failures: None,
        failure_rate: Some((0.5, Duration::from_secs(10), 10)),
        ..settings()
    };
    let (b, _) = breaker(s);
    for _ in 0..4 {
        fail(&b, 1);
        succeed(&b, 1);
    }
    fail(&b, 1);
    settle().await;
    assert_eq!(b.state(), State::Closed, "9 calls are below the minimum of 10");
    succeed(&b, 1);
    wait_for(&b, State::Open).await;
}

#[tokio::test(start_paused = true)]
async fn failure_rate_forgets_what_left_the_window() {
    let s = Settings {
        consecutive_failures: None,
        failure_rate: Some((0.5, Duration::from_secs(10), 10)),
        ..settings()
    };
    let (b, _) = breaker(s);
    fail(&b, 9);
    settle().await;
    tokio::time::advance(Duration::from_secs(11)).await;
    succeed(&b, 10);
    settle().await;
    assert_eq!(b.state(), State::Closed, "old failures expired");
    assert_eq!(b.snapshot().window_calls, 10);
}

#[tokio::test(start_paused = true)]
async fn stays_open_for_the_open_duration_then_probes() {
    let (b, _) = breaker(settings());
    fail(&b, 3);
    wait_for(&b, State::Open).await;
    tokio::time::advance(Duration::from_millis(4400)).await;
    settle().await;
    assert_eq!(b.state(), State::Open, "5s ± 10% has not passed");
    tokio::time::advance(Duration::from_millis(1200)).await;
    wait_for(&b, State::HalfOpen).await;
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_only_the_probe_count_through_and_closes_on_success() {
    let (b, _) = breaker(Settings { half_open_probes: 2, ..settings() });
    fail(&b, 3);
    wait_for(&b, State::HalfOpen).await;
    let p1 = b.try_admit().expect("probe 1");
    let p2 = b.try_admit().expect("probe 2");
    assert!(p1.is_probe() && p2.is_probe());
    assert_eq!(b.try_admit().err(), Some(CircuitOpen), "a third call is refused");
    p1.record(false);
    settle().await;
    assert_eq!(b.state(), State::HalfOpen, "one probe is not enough");
    p2.record(false);
    wait_for(&b, State::Closed).await;
    assert!(b.try_admit().is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_for_twice_as_long_up_to_the_max() {
    let (b, opened) = breaker(Settings { max_open_duration: Duration::from_secs(12), ..settings() });
    fail(&b, 3);
    wait_for(&b, State::HalfOpen).await;
    b.try_admit().expect("probe").record(true);
    wait_for(&b, State::Open).await;
    assert_eq!(b.snapshot().open_duration_ms, 10_000);
    tokio::time::advance(Duration::from_millis(8500)).await;
    settle().await;
    assert_eq!(b.state(), State::Open, "the second open period is about 10s");
    wait_for(&b, State::HalfOpen).await;
    b.try_admit().expect("probe").record(true);
    wait_for(&b, State::Open).await;
    assert_eq!(b.snapshot().open_duration_ms, 12_000, "capped at maxOpenDuration");
    assert_eq!(opened.0.load(Ordering::SeqCst), 3);
    assert_eq!(b.snapshot().trips, 3);
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_resets_the_open_duration() {
    let (b, _) = breaker(settings());
    fail(&b, 3);
    wait_for(&b, State::HalfOpen).await;
    b.try_admit().expect("probe").record(true);
    wait_for(&b, State::Open).await;
    wait_for(&b, State::HalfOpen).await;
    b.try_admit().expect("probe").record(false);
    wait_for(&b, State::Closed).await;
    assert_eq!(b.snapshot().open_duration_ms, 5_000);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_gives_its_slot_back() {
    let (b, _) = breaker(settings());
    fail(&b, 3);
    wait_for(&b, State::HalfOpen).await;
    drop(b.try_admit().expect("probe"));
    settle().await;
    assert!(b.try_admit().is_ok(), "the slot came back");
}

#[tokio::test(start_paused = true)]
async fn late_outcomes_of_calls_admitted_before_the_trip_are_not_probes() {
    let (b, _) = breaker(settings());
    let slow = b.try_admit().expect("admitted while closed");
    fail(&b, 3);
    wait_for(&b, State::HalfOpen).await;
    slow.record(false);
    settle().await;
    assert_eq!(b.state(), State::HalfOpen, "only a probe can close the breaker");
}

#[tokio::test(start_paused = true)]
async fn the_task_stops_when_every_handle_is_dropped() {
    let (b, _) = breaker(settings());
    let mut rx = b.state.clone();
    drop(b);
    // The publisher side closes when the task ends.
    tokio::time::timeout(Duration::from_secs(1), async { while rx.changed().await.is_ok() {} })
        .await
        .expect("the task ended");
}

/// A breaker gone half-open with its one probe taken, and 3000 calls admitted before it
/// opened whose failures (each a trip report the half-open machine ignores) have just been
/// reported, with no await in between: the machine cannot have drained any of them yet.
async fn half_open_behind_a_burst_of_reports() -> (Breaker, Permit) {
    let s = Settings { consecutive_failures: Some(1), ..settings() };
    let (b, _) = breaker(s);
    let late: Vec<Permit> = (0..3000).map(|_| b.try_admit().expect("closed")).collect();
    fail(&b, 1);
    wait_for(&b, State::HalfOpen).await;
    let probe = b.try_admit().expect("one probe slot");
    assert!(probe.is_probe());
    for p in late {
        p.record(true);
    }
    (b, probe)
}

/// A burst of reports must not crowd out a probe's outcome: a lost probe report would leave
/// the breaker half-open with no probe slot left, rejecting for good.
#[tokio::test(start_paused = true)]
async fn a_burst_of_reports_never_loses_a_probe_outcome() {
    let (b, probe) = half_open_behind_a_burst_of_reports().await;
    probe.record(false);
    wait_for(&b, State::Closed).await;
    assert!(b.try_admit().is_ok());
}

/// The same for a probe that never finished (cancelled): its slot comes back.
#[tokio::test(start_paused = true)]
async fn a_burst_of_reports_never_loses_a_cancelled_probe() {
    let (b, probe) = half_open_behind_a_burst_of_reports().await;
    drop(probe);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !b.would_admit() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the cancelled probe's slot never came back"));
}
