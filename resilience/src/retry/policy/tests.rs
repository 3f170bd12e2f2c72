use std::sync::atomic::{AtomicU32, Ordering};

use tower::{Layer, Service, ServiceExt};
use tower_test::mock;

use super::*;
use crate::{
    outcome::{Condition, Failure},
    retry::RetryLayer,
};

#[derive(Debug, Clone)]
struct Req {
    idempotent: bool,
    depth: u32,
    replayable: bool,
    attempt: u32,
    deadline: Option<Instant>,
}

impl Req {
    fn get() -> Self {
        Self { idempotent: true, depth: 0, replayable: true, attempt: 1, deadline: None }
    }
}

impl Timed for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl RetryRequest for Req {
    fn clone_for_retry(&self) -> Self {
        self.clone()
    }
    fn replayable(&self) -> bool {
        self.replayable
    }
    fn idempotent(&self) -> bool {
        self.idempotent
    }
    fn depth(&self) -> u32 {
        self.depth
    }
    fn prepare_retry(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Res {
    status: u16,
    budget_marked: bool,
    retry_after: Option<Duration>,
}

fn status(status: u16) -> Res {
    Res { status, budget_marked: false, retry_after: None }
}

impl RetryResponse for Res {
    fn outcome(&self) -> Outcome {
        Outcome {
            failure: (self.status >= 500).then_some(Failure::Status(self.status)),
            retry_after: self.retry_after,
        }
    }
    fn mark_budget_exhausted(&mut self) {
        self.budget_marked = true;
    }
}

#[derive(Default)]
struct Observed {
    retries: AtomicU32,
    skipped: std::sync::RwLock<Vec<&'static str>>,
    exhausted: AtomicU32,
    would: std::sync::RwLock<Vec<&'static str>>,
}

impl Observer for Observed {
    fn decided(&self, decision: Decision, enforcement: Enforcement) {
        match (decision, enforcement) {
            (Decision::RetrySkipped(why), _) => self.skipped.write().expect("lock").push(why.as_str()),
            (d, Enforcement::DryRun) => self.would.write().expect("lock").extend(d.action()),
            (Decision::Retry { .. }, _) => {
                self.retries.fetch_add(1, Ordering::SeqCst);
            }
            (Decision::BudgetExhausted { .. }, _) => {
                self.exhausted.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

fn classify_error(_: &BoxError) -> Outcome {
    Outcome::failed(Failure::Connect)
}

fn settings(attempts: u32) -> Arc<Settings> {
    Arc::new(Settings {
        attempts,
        conditions: [Condition::GatewayError, Condition::ConnectFailure].into_iter().collect(),
        statuses: vec![],
        grpc_codes: vec![],
        backoff: Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1), jitter: 0.0 },
        max_depth: 1,
    })
}

fn generous_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(Duration::from_secs(10), 1000, 1.0))
}

struct Harness {
    obs: Arc<Observed>,
    handle: mock::Handle<Req, Res>,
    call: tokio::task::JoinHandle<Result<Res, BoxError>>,
}

fn start(
    req: Req,
    settings: Arc<Settings>,
    budget: Arc<RetryBudget>,
    enforcement: Enforcement,
    deadline: Option<Instant>,
) -> Harness {
    let obs = Arc::new(Observed::default());
    let (svc, mut handle) = mock::pair::<Req, Res>();
    handle.allow(100);
    let policy = RetryPolicy::new(settings, budget, obs.clone(), classify_error, enforcement);
    let mut retry = RetryLayer::new(policy).layer(svc);
    let req = Req { deadline, ..req };
    let call = tokio::spawn(async move { retry.ready().await?.call(req).await });
    Harness { obs, handle, call }
}

async fn answer(h: &mut Harness, res: Res) -> Req {
    let (req, send) = h.handle.next_request().await.expect("an attempt");
    send.send_response(res);
    req
}

#[tokio::test(start_paused = true)]
async fn two_503s_then_200_is_recovered() {
    let mut h = start(Req::get(), settings(3), generous_budget(), Enforcement::Enforce, None);
    assert_eq!(answer(&mut h, status(503)).await.attempt, 1);
    assert_eq!(answer(&mut h, status(503)).await.attempt, 2);
    assert_eq!(answer(&mut h, status(200)).await.attempt, 3);
    assert_eq!(h.call.await.expect("join").expect("ok").status, 200);
    assert_eq!(h.obs.retries.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn stops_after_the_configured_attempts() {
    let mut h = start(Req::get(), settings(2), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    answer(&mut h, status(503)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 503, "the last response is returned");
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_between_attempts() {
    let started = Instant::now();
    let mut h = start(Req::get(), settings(3), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    answer(&mut h, status(503)).await;
    let (_, send) = h.handle.next_request().await.expect("third attempt");
    let third_at = started.elapsed();
    send.send_response(status(200));
    assert_eq!(third_at, Duration::from_millis(300), "100ms then 200ms without jitter");
}

#[tokio::test(start_paused = true)]
async fn honours_retry_after() {
    let started = Instant::now();
    let mut h = start(Req::get(), settings(2), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, Res { retry_after: Some(Duration::from_millis(700)), ..status(503) }).await;
    let (_, send) = h.handle.next_request().await.expect("second attempt");
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    send.send_response(status(200));
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_not_retried_after_reaching_the_app() {
    let post = Req { idempotent: false, ..Req::get() };
    let mut h = start(post, settings(3), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 503);
    assert_eq!(*h.obs.skipped.read().expect("lock"), ["method"]);
}

#[tokio::test(start_paused = true)]
async fn connect_failures_are_retried_whatever_the_method() {
    let post = Req { idempotent: false, ..Req::get() };
    let mut h = start(post, settings(3), generous_budget(), Enforcement::Enforce, None);
    let (_, send) = h.handle.next_request().await.expect("attempt");
    send.send_error("connection refused");
    answer(&mut h, status(200)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_request_already_retried_upstream_is_not_retried_again() {
    let deep = Req { depth: 1, ..Req::get() };
    let mut h = start(deep, settings(3), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 503);
    assert_eq!(*h.obs.skipped.read().expect("lock"), ["retry-depth"]);
}

#[tokio::test(start_paused = true)]
async fn a_body_too_large_to_replay_is_not_retried_and_is_counted() {
    let big = Req { replayable: false, ..Req::get() };
    let mut h = start(big, settings(3), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 503);
    assert_eq!(*h.obs.skipped.read().expect("lock"), ["body-too-large"]);
}

#[tokio::test(start_paused = true)]
async fn a_backoff_that_would_outlive_the_deadline_is_not_taken() {
    let deadline = Some(Instant::now() + Duration::from_millis(50));
    let mut h = start(Req::get(), settings(3), generous_budget(), Enforcement::Enforce, deadline);
    answer(&mut h, status(503)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 503);
    assert_eq!(*h.obs.skipped.read().expect("lock"), ["deadline"]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_returns_the_response_marked() {
    let empty = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.0));
    let mut h = start(Req::get(), settings(3), empty, Enforcement::Enforce, None);
    answer(&mut h, status(503)).await;
    let res = h.call.await.expect("join").expect("ok");
    assert!(res.budget_marked, "the caller learns the budget stopped the retry");
    assert_eq!(h.obs.exhausted.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn dry_run_reports_the_retry_and_never_makes_it() {
    let mut h = start(Req::get(), settings(3), generous_budget(), Enforcement::DryRun, None);
    answer(&mut h, status(503)).await;
    let res = h.call.await.expect("join").expect("ok");
    assert_eq!(res, status(503), "the outcome is unchanged");
    assert_eq!(*h.obs.would.read().expect("lock"), ["retry"]);
    assert_eq!(h.obs.retries.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn successes_and_unlisted_failures_are_not_retried() {
    let mut h = start(Req::get(), settings(3), generous_budget(), Enforcement::Enforce, None);
    answer(&mut h, status(500)).await;
    assert_eq!(h.call.await.expect("join").expect("ok").status, 500, "500 is not a gateway error");
    assert!(h.obs.skipped.read().expect("lock").is_empty());
}
