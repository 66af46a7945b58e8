//! The executor's guarantees, pinned on a scripted fake runner under tokio's paused clock:
//! no real sleeps, exact times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use trellis_exec::*;

/// One scripted attempt: how long it takes and how it ends.
#[derive(Clone, Copy)]
struct Step {
    takes: Duration,
    fails: Option<ErrorClass>,
}

fn ok(secs: u64) -> Step {
    Step { takes: Duration::from_secs(secs), fails: None }
}

fn fail(secs: u64) -> Step {
    Step { takes: Duration::from_secs(secs), fails: Some(ErrorClass::NodeFailed) }
}

#[derive(Default)]
struct Log {
    running: HashMap<String, usize>,
    max_running: HashMap<String, usize>,
    max_total: usize,
    total: usize,
    starts: Vec<(String, u32, Duration)>,
    cleanups: Vec<String>,
}

/// Runs each job by its script (the last step repeats); honours cancellation unless `stubborn`.
struct FakeRunner {
    scripts: HashMap<String, Vec<Step>>,
    stubborn: bool,
    origin: Instant,
    log: Arc<Mutex<Log>>,
}

impl FakeRunner {
    fn new(scripts: &[(&str, Vec<Step>)]) -> Self {
        Self {
            scripts: scripts.iter().map(|(id, s)| ((*id).to_owned(), s.clone())).collect(),
            stubborn: false,
            origin: Instant::now(),
            log: Arc::default(),
        }
    }
}

impl Runner<()> for FakeRunner {
    /// The job's id, echoed.
    type Output = String;

    fn run(&self, job: &Job<()>, ctx: JobContext<String>) -> impl Future<Output = Result<String, JobError>> + Send {
        let script = self.scripts.get(&job.id).cloned().unwrap_or_else(|| vec![ok(1)]);
        let step = script[(ctx.attempt as usize - 1).min(script.len() - 1)];
        let (id, kind, log, origin, stubborn) =
            (job.id.clone(), job.kind.clone(), Arc::clone(&self.log), self.origin, self.stubborn);
        async move {
            {
                let mut log = log.lock().unwrap();
                let running = log.running.entry(kind.clone()).or_default();
                *running += 1;
                let now = *running;
                let max = log.max_running.entry(kind.clone()).or_default();
                *max = (*max).max(now);
                log.total += 1;
                log.max_total = log.max_total.max(log.total);
                log.starts.push((id.clone(), ctx.attempt, origin.elapsed()));
            }
            ctx.line(format!("{id}: attempt {}", ctx.attempt));
            let result = if stubborn {
                tokio::time::sleep(step.takes).await;
                Ok(())
            } else {
                tokio::select! {
                    () = tokio::time::sleep(step.takes) => Ok(()),
                    () = ctx.cancel.cancelled() => Err(()),
                }
            };
            let mut log = log.lock().unwrap();
            *log.running.get_mut(&kind).unwrap() -= 1;
            log.total -= 1;
            match (result, step.fails) {
                (Err(()), _) => {
                    log.cleanups.push(id);
                    Err(JobError::cancelled())
                }
                (Ok(()), Some(class)) => Err(JobError::new(class, "scripted failure")),
                (Ok(()), None) => Ok(id),
            }
        }
    }
}

fn job(id: &str, kind: &str, deps: &[usize]) -> Job<()> {
    Job::new(id, kind, deps.to_vec(), ())
}

struct Outcome {
    summary: RunSummary,
    events: Vec<RunEvent<String>>,
    log: Arc<Mutex<Log>>,
}

impl Outcome {
    fn status(&self, id: &str) -> NodeStatus {
        self.events
            .iter()
            .find_map(|e| match e {
                RunEvent::NodeFinished { id: i, status, .. } if i == id => Some(status.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{id} never finished"))
    }

    fn starts(&self) -> Vec<(String, u32, Duration)> {
        self.log.lock().unwrap().starts.clone()
    }
}

async fn execute(jobs: Vec<Job<()>>, engine: FakeRunner, options: ExecOptions, shutdown: Shutdown) -> Outcome {
    let log = Arc::clone(&engine.log);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let summary = run(Arc::new(JobGraph::new(jobs)), Arc::new(engine), options, shutdown, tx).await;
    let mut events = Vec::new();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    assert!(matches!(events.last(), Some(RunEvent::RunFinished { .. })), "the stream ends with RunFinished");
    Outcome { summary, events, log }
}

fn limits(per_kind: &[(&str, usize)], global: Option<usize>) -> ExecOptions {
    ExecOptions {
        limits: Limits { per_kind: per_kind.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(), global },
        retry: RetryPolicy::none(),
        ..ExecOptions::default()
    }
}

#[tokio::test(start_paused = true)]
async fn per_kind_limits_are_never_exceeded_and_are_used() {
    let mut jobs = Vec::new();
    let mut scripts = Vec::new();
    let ids: Vec<String> = (0..40).map(|i| format!("j{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let kind = if i % 2 == 0 { "build" } else { "test" };
        jobs.push(job(id, kind, &[]));
        scripts.push((id.as_str(), vec![ok(1 + (i as u64 * 7) % 5)]));
    }
    let outcome =
        execute(jobs, FakeRunner::new(&scripts), limits(&[("build", 2), ("test", 3)], None), Shutdown::new()).await;
    let log = outcome.log.lock().unwrap();
    assert_eq!(log.max_running["build"], 2);
    assert_eq!(log.max_running["test"], 3);
    assert_eq!(outcome.summary.passed, 40);
}

#[tokio::test(start_paused = true)]
async fn the_global_limit_caps_every_kind() {
    let jobs = vec![job("a", "build", &[]), job("b", "test", &[]), job("c", "push", &[]), job("d", "build", &[])];
    let outcome = execute(jobs, FakeRunner::new(&[]), limits(&[], Some(1)), Shutdown::new()).await;
    assert_eq!(outcome.log.lock().unwrap().max_total, 1);
}

#[tokio::test(start_paused = true)]
async fn ready_jobs_start_in_index_order() {
    let jobs = (0..6).map(|i| job(&format!("j{i}"), "build", &[])).collect();
    let outcome = execute(jobs, FakeRunner::new(&[]), limits(&[("build", 1)], None), Shutdown::new()).await;
    let order: Vec<String> = outcome.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(order, ["j0", "j1", "j2", "j3", "j4", "j5"]);
}

#[tokio::test(start_paused = true)]
async fn dependencies_run_first() {
    // 2 → 0 → 1: index order alone would start 0 first.
    let jobs = vec![job("mid", "build", &[2]), job("last", "build", &[0]), job("first", "build", &[])];
    let outcome = execute(jobs, FakeRunner::new(&[]), ExecOptions::default(), Shutdown::new()).await;
    let order: Vec<String> = outcome.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(order, ["first", "mid", "last"]);
}

#[tokio::test(start_paused = true)]
async fn a_job_failing_twice_then_passing_is_flaky_after_exactly_two_scheduled_retries() {
    let policy =
        RetryPolicy { retries: 2, delay: Duration::from_secs(2), max_delay: Duration::from_secs(60), jitter: true };
    let options = ExecOptions { retry: policy, ..ExecOptions::default() };
    let engine = FakeRunner::new(&[("wobbly", vec![fail(3), fail(3), ok(3)])]);
    let outcome = execute(vec![job("wobbly", "build", &[])], engine, options, Shutdown::new()).await;
    assert_eq!(outcome.status("wobbly"), NodeStatus::Flaky);
    assert_eq!(outcome.summary.flaky, 1);

    let expected: Vec<Duration> = policy.delays(RetryPolicy::seed_for("wobbly")).collect();
    let announced: Vec<Duration> = outcome
        .events
        .iter()
        .filter_map(|e| match e {
            RunEvent::AttemptFailed { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_eq!(announced, expected, "the announced delays are the policy's");
    let starts: Vec<Duration> = outcome.starts().into_iter().map(|(_, _, at)| at).collect();
    assert_eq!(starts.len(), 3);
    let step = Duration::from_secs(3);
    // tokio's timer has a resolution of 1 ms: a delay is waited rounded up to it.
    let close =
        |actual: Duration, expected: Duration| actual >= expected && actual - expected < Duration::from_millis(1);
    assert!(close(starts[1] - starts[0], step + expected[0]), "retry 1 waits its delay");
    assert!(close(starts[2] - starts[1], step + expected[1]), "retry 2 waits its delay");
    let (attempts, duration) = outcome
        .events
        .iter()
        .find_map(|e| match e {
            RunEvent::NodeFinished { attempts, duration, .. } => Some((*attempts, *duration)),
            _ => None,
        })
        .unwrap();
    assert_eq!(attempts, 3);
    assert!(
        duration >= step * 3 + expected[0] + expected[1]
            && duration < step * 3 + expected[0] + expected[1] + Duration::from_millis(2)
    );
}

#[tokio::test(start_paused = true)]
async fn retries_are_exhausted_then_the_job_fails() {
    let options = ExecOptions {
        retry: RetryPolicy { retries: 2, jitter: false, ..RetryPolicy::default() },
        ..ExecOptions::default()
    };
    let outcome = execute(
        vec![job("broken", "build", &[])],
        FakeRunner::new(&[("broken", vec![fail(1)])]),
        options,
        Shutdown::new(),
    )
    .await;
    assert!(matches!(outcome.status("broken"), NodeStatus::Failed { .. }));
    assert_eq!(outcome.starts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn invalid_input_is_never_retried() {
    let options = ExecOptions { retry: RetryPolicy { retries: 5, ..RetryPolicy::default() }, ..ExecOptions::default() };
    let engine = FakeRunner::new(&[(
        "bad",
        vec![Step { takes: Duration::from_secs(1), fails: Some(ErrorClass::InvalidInput) }],
    )]);
    let outcome = execute(vec![job("bad", "build", &[])], engine, options, Shutdown::new()).await;
    assert_eq!(outcome.starts().len(), 1);
    assert!(matches!(outcome.status("bad"), NodeStatus::Failed { error } if error.class == ErrorClass::InvalidInput));
}

#[tokio::test(start_paused = true)]
async fn dependents_of_a_failure_are_blocked_and_independent_jobs_go_on() {
    let jobs = vec![
        job("build:a", "build", &[]),
        job("test:a", "test", &[0]),
        job("tag:a", "tag", &[1]),
        job("build:b", "build", &[]),
        job("tag:b", "tag", &[3]),
    ];
    let outcome =
        execute(jobs, FakeRunner::new(&[("build:a", vec![fail(1)])]), limits(&[], None), Shutdown::new()).await;
    assert_eq!(outcome.status("test:a"), NodeStatus::Blocked { by: "build:a".into() });
    assert_eq!(
        outcome.status("tag:a"),
        NodeStatus::Blocked { by: "build:a".into() },
        "blocked transitively, naming the cause"
    );
    assert_eq!(outcome.status("tag:b"), NodeStatus::Passed);
    assert_eq!((outcome.summary.failed, outcome.summary.blocked, outcome.summary.passed), (1, 2, 2));
    assert!(!outcome.summary.succeeded());
}

#[tokio::test(start_paused = true)]
async fn fail_fast_starts_nothing_new_but_lets_running_jobs_finish() {
    let jobs = vec![
        job("quick-fail", "build", &[]),
        job("long", "build", &[]),
        job("later", "build", &[]),
        job("after", "build", &[]),
    ];
    let engine = FakeRunner::new(&[("quick-fail", vec![fail(1)]), ("long", vec![ok(10)])]);
    let options = ExecOptions { fail_fast: true, ..limits(&[("build", 2)], None) };
    let outcome = execute(jobs, engine, options, Shutdown::new()).await;
    assert_eq!(outcome.status("long"), NodeStatus::Passed, "running jobs finish");
    assert_eq!(outcome.status("later"), NodeStatus::NotRun);
    assert_eq!(outcome.status("after"), NodeStatus::NotRun);
    assert_eq!(outcome.summary.cancel_reason, Some(CancelReason::FailFast));
    assert_eq!(outcome.starts().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_signal_cancels_running_jobs_runs_their_cleanup_and_starts_nothing_after() {
    let jobs = (0..6).map(|i| job(&format!("j{i}"), "build", &[])).collect();
    let engine = FakeRunner::new(&[]);
    let engine = FakeRunner { scripts: (0..6).map(|i| (format!("j{i}"), vec![ok(10)])).collect(), ..engine };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(15)).await;
        trigger.request();
    });
    let outcome = execute(jobs, engine, limits(&[("build", 2)], None), shutdown).await;
    let starts = outcome.starts();
    assert_eq!(starts.len(), 4, "j0 j1 at 0s, j2 j3 at 10s, nothing after the signal at 15s");
    assert!(starts.iter().all(|(_, _, at)| *at < Duration::from_secs(15)));
    let mut cleanups = outcome.log.lock().unwrap().cleanups.clone();
    cleanups.sort();
    assert_eq!(cleanups, ["j2", "j3"], "every running job cleaned up");
    assert_eq!(outcome.status("j2"), NodeStatus::Cancelled);
    assert_eq!(outcome.status("j4"), NodeStatus::NotRun);
    assert!(outcome.summary.interrupted());
    assert!(outcome.events.iter().any(|e| matches!(e, RunEvent::CancelBegun { reason: CancelReason::Signal })));
}

#[tokio::test(start_paused = true)]
async fn a_job_ignoring_cancellation_is_aborted_after_the_grace_period() {
    let engine = FakeRunner { stubborn: true, ..FakeRunner::new(&[("stuck", vec![ok(1000)])]) };
    let shutdown = Shutdown::new();
    shutdown.request();
    let options = ExecOptions { grace: Duration::from_secs(7), ..ExecOptions::default() };
    let start = Instant::now();
    let outcome = execute(vec![job("stuck", "build", &[])], engine, options, shutdown).await;
    // A signal before the first start: nothing runs at all.
    assert_eq!(outcome.status("stuck"), NodeStatus::NotRun);
    assert_eq!(start.elapsed(), Duration::ZERO);

    let engine = FakeRunner { stubborn: true, ..FakeRunner::new(&[("stuck", vec![ok(1000)])]) };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.request();
    });
    let start = Instant::now();
    let options = ExecOptions { grace: Duration::from_secs(7), ..ExecOptions::default() };
    let outcome = execute(vec![job("stuck", "build", &[])], engine, options, shutdown).await;
    assert_eq!(outcome.status("stuck"), NodeStatus::Cancelled);
    assert_eq!(start.elapsed(), Duration::from_secs(8), "signal at 1s + 7s grace");
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_stops_at_once() {
    let engine = FakeRunner { stubborn: true, ..FakeRunner::new(&[("stuck", vec![ok(1000)])]) };
    let shutdown = Shutdown::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.request();
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.request();
    });
    let start = Instant::now();
    let outcome = execute(vec![job("stuck", "build", &[])], engine, ExecOptions::default(), shutdown).await;
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(outcome.summary.cancel_reason, Some(CancelReason::SecondSignal));
    assert_eq!(outcome.status("stuck"), NodeStatus::Cancelled);
}

#[tokio::test(start_paused = true)]
async fn skipped_jobs_count_as_done_for_their_dependents() {
    let mut done = job("build:a", "build", &[]);
    done.initial = Initial::Done("up to date".into());
    let outcome =
        execute(vec![done, job("test:a", "test", &[0])], FakeRunner::new(&[]), ExecOptions::default(), Shutdown::new())
            .await;
    assert_eq!(outcome.status("build:a"), NodeStatus::Skipped { reason: "up to date".into() });
    assert_eq!(outcome.status("test:a"), NodeStatus::Passed);
    assert_eq!(outcome.starts().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_skipped_jobs_starts_nothing_but_its_runnable_tail() {
    let mut jobs = Vec::new();
    for (i, id) in ["render:a", "build:a", "test:a", "tag:a"].iter().enumerate() {
        let mut j = job(id, "build", if i == 0 { &[] } else { &[0] });
        j.deps = if i == 0 { vec![] } else { vec![i - 1] };
        if i < 3 {
            j.initial = Initial::Done("up to date".into());
        }
        jobs.push(j);
    }
    // Dependents listed before their dependencies must not be started either.
    let outcome = execute(jobs, FakeRunner::new(&[]), ExecOptions::default(), Shutdown::new()).await;
    let started: Vec<String> = outcome.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(started, ["tag:a"]);
    assert_eq!(outcome.summary.skipped, 3);
}

/// A test re-runs on an image nothing rebuilt (its key changed): the tag has nothing to do,
/// but the push after it must still wait for the test, and not happen when it fails.
#[tokio::test(start_paused = true)]
async fn a_skipped_job_waits_for_its_dependencies_and_is_blocked_by_their_failure() {
    let mut tag = job("tag:a", "tag", &[0]);
    tag.initial = Initial::Done("up to date".into());
    let jobs = || vec![job("test:a", "test", &[]), tag.clone(), job("push:a", "push", &[1])];
    let passing = FakeRunner::new(&[("test:a", vec![ok(3)])]);
    let outcome = execute(jobs(), passing, ExecOptions::default(), Shutdown::new()).await;
    let started: Vec<String> = outcome.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(started, ["test:a", "push:a"]);
    assert_eq!(outcome.status("tag:a"), NodeStatus::Skipped { reason: "up to date".into() });
    assert_eq!(outcome.status("push:a"), NodeStatus::Passed);

    let failing = FakeRunner::new(&[("test:a", vec![fail(3)])]);
    let outcome = execute(jobs(), failing, limits(&[], None), Shutdown::new()).await;
    let started: Vec<String> = outcome.starts().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(started, ["test:a"], "nothing is pushed after a failed test");
    assert_eq!(outcome.status("tag:a"), NodeStatus::Blocked { by: "test:a".into() });
    assert_eq!(outcome.status("push:a"), NodeStatus::Blocked { by: "test:a".into() });
}

struct PanickingRunner;

impl Runner<()> for PanickingRunner {
    type Output = ();

    fn run(&self, job: &Job<()>, _ctx: JobContext<()>) -> impl Future<Output = Result<(), JobError>> + Send {
        let boom = job.id == "boom";
        async move {
            assert!(!boom, "runner bug");
            Ok(())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_runner_panic_fails_the_job_not_the_run() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let jobs = JobGraph::new(vec![job("boom", "build", &[]), job("fine", "build", &[])]);
    let options = ExecOptions { retry: RetryPolicy::none(), ..ExecOptions::default() };
    let summary = run(Arc::new(jobs), Arc::new(PanickingRunner), options, Shutdown::new(), tx).await;
    assert_eq!((summary.failed, summary.passed), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn output_lines_reach_the_event_stream() {
    let outcome =
        execute(vec![job("talk", "build", &[])], FakeRunner::new(&[]), ExecOptions::default(), Shutdown::new()).await;
    assert!(outcome.events.iter().any(|e| matches!(e, RunEvent::Output { line, .. } if line == "talk: attempt 1")));
}
