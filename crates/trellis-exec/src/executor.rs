//! The dispatcher: one loop that owns all run state and `select!`s over finished attempts,
//! retry timers and shutdown requests. Workers are tasks that run one attempt each and report
//! back through their join handle; nothing is polled and nothing is shared mutably.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::errors::{ErrorClass, JobError};
use crate::event::{CancelReason, NodeStatus, RunEvent, RunSummary};
use crate::job::{Initial, JobGraph};
use crate::retry::RetryPolicy;
use crate::runner::{JobContext, Runner};
use crate::shutdown::Shutdown;

/// Concurrency limits: per kind, and for all kinds together (`-j`).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub per_kind: HashMap<String, usize>,
    pub global: Option<usize>,
}

impl Limits {
    fn of(&self, kind: &str) -> usize {
        self.per_kind.get(kind).copied().unwrap_or(usize::MAX).max(1)
    }
}

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// Start nothing new after the first failure; running jobs finish.
    pub fail_fast: bool,
    /// How long cancelled jobs get for their cleanup before they are aborted.
    pub grace: Duration,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            retry: RetryPolicy::default(),
            fail_fast: false,
            grace: Duration::from_secs(10),
        }
    }
}

type Attempt<O> = (usize, u32, Result<O, JobError>);

struct Dispatcher<'g, P, O> {
    graph: &'g JobGraph<P>,
    options: &'g ExecOptions,
    events: UnboundedSender<RunEvent<O>>,
    dependents: Vec<Vec<usize>>,
    remaining: Vec<usize>,
    status: Vec<Option<NodeStatus>>,
    attempts: Vec<u32>,
    first_start: Vec<Option<Instant>>,
    outputs: Vec<O>,
    /// Per kind: ready jobs by (priority, then lowest index).
    ready: BTreeMap<String, BinaryHeap<(u64, Reverse<usize>)>>,
    priority: Vec<u64>,
    /// In a ready queue now: a job is queued at most once.
    queued: Vec<bool>,
    running_per_kind: HashMap<String, usize>,
    running: HashMap<Id, (usize, CancellationToken)>,
    /// Jobs waiting for a retry timer, with their last error.
    retrying: BTreeMap<usize, JobError>,
    delays: Vec<Option<Box<dyn Iterator<Item = Duration> + Send>>>,
    summary: RunSummary,
    stop: Option<CancelReason>,
}

/// Runs `graph` to completion (or cancellation) and returns the summary; every change is
/// also sent to `events`, ending with [`RunEvent::RunFinished`].
pub async fn run<P, R>(
    graph: Arc<JobGraph<P>>,
    runner: Arc<R>,
    options: ExecOptions,
    shutdown: Shutdown,
    events: UnboundedSender<RunEvent<R::Output>>,
) -> RunSummary
where
    P: Send + Sync + 'static,
    R: Runner<P>,
{
    let started = Instant::now();
    let n = graph.jobs.len();
    let dependents = graph.dependents();
    let mut d = Dispatcher {
        graph: &graph,
        options: &options,
        events: events.clone(),
        priority: graph.priorities(&dependents),
        dependents,
        remaining: graph.jobs.iter().map(|j| j.deps.len()).collect(),
        status: vec![None; n],
        attempts: vec![0; n],
        first_start: vec![None; n],
        outputs: vec![R::Output::default(); n],
        ready: BTreeMap::new(),
        queued: vec![false; n],
        running_per_kind: HashMap::new(),
        running: HashMap::new(),
        retrying: BTreeMap::new(),
        delays: (0..n).map(|_| None).collect(),
        summary: RunSummary::default(),
        stop: None,
    };
    let to_run = graph.jobs.iter().filter(|j| j.initial == Initial::Run).count();
    d.emit(RunEvent::RunStarted { total: n, to_run });
    // A skipped job completes when its dependencies have, like any other: a push skipped
    // nothing of waits for a test that re-runs, and is blocked when that test fails.
    for index in 0..n {
        if d.remaining[index] == 0 {
            d.dependencies_done(index);
        }
    }

    let mut workers: JoinSet<Attempt<R::Output>> = JoinSet::new();
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<usize>();
    let mut grace_deadline: Option<Instant> = None;
    loop {
        // A request that came before this turn (even before the first start) is honoured
        // before anything else starts.
        if shutdown.requested() && d.stop.is_none_or(|r| r < CancelReason::Signal) {
            d.begin_stop(shutdown.reason());
            grace_deadline = Some(Instant::now() + options.grace);
        }
        if d.stop.is_none() {
            d.start_ready(&mut workers, &graph, &runner);
        }
        let waiting_for_retries = !d.retrying.is_empty() && d.stop.is_none();
        if workers.is_empty() && !waiting_for_retries {
            break;
        }
        tokio::select! {
            biased;
            () = shutdown.immediate() => {
                d.begin_stop(CancelReason::SecondSignal);
                workers.abort_all();
                while let Some(result) = workers.join_next_with_id().await {
                    d.collect_aborted(result.map(|(id, _)| id).unwrap_or_else(|e| e.id()));
                }
                break;
            }
            () = shutdown.graceful(), if d.stop.is_none_or(|r| r < CancelReason::Signal) => {
                d.begin_stop(shutdown.reason());
                grace_deadline = Some(Instant::now() + options.grace);
            }
            () = sleep_until_opt(grace_deadline), if grace_deadline.is_some() => {
                workers.abort_all();
                while let Some(result) = workers.join_next_with_id().await {
                    d.collect_aborted(result.map(|(id, _)| id).unwrap_or_else(|e| e.id()));
                }
                break;
            }
            Some(result) = workers.join_next_with_id() => match result {
                Ok((id, (index, attempt, outcome))) => {
                    d.release(id);
                    d.attempt_done(index, attempt, outcome, &retry_tx);
                }
                Err(error) => {
                    // The runner panicked (or the task was aborted): a failed attempt that
                    // must not take the whole run down.
                    if let Some((index, _)) = d.running.get(&error.id()).cloned() {
                        d.release(error.id());
                        let attempt = d.attempts[index];
                        let message = if error.is_panic() { "the runner panicked" } else { "the attempt was aborted" };
                        d.attempt_done(index, attempt, Err(JobError::failed(message)), &retry_tx);
                    }
                }
            },
            Some(index) = retry_rx.recv() => {
                if d.retrying.remove(&index).is_some() {
                    d.make_ready(index);
                }
            }
        }
    }
    // Whatever did not finish: retries that were waiting, jobs never started.
    let pending: Vec<(usize, JobError)> = std::mem::take(&mut d.retrying).into_iter().collect();
    for (index, error) in pending {
        let status = match d.stop {
            Some(CancelReason::FailFast) => NodeStatus::Failed { error },
            _ => NodeStatus::Cancelled,
        };
        d.finish(index, status);
    }
    for index in 0..n {
        if d.status[index].is_none() {
            d.finish(index, NodeStatus::NotRun);
        }
    }
    d.summary.cancel_reason = d.stop;
    d.summary.duration = started.elapsed();
    let summary = d.summary.clone();
    d.emit(RunEvent::RunFinished { summary: summary.clone() });
    summary
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl<P, O> Dispatcher<'_, P, O>
where
    P: Send + Sync + 'static,
    O: Default + Send + 'static,
{
    fn emit(&self, event: RunEvent<O>) {
        let _ = self.events.send(event);
    }

    /// A job whose dependencies are all done: a skipped one is done too (and releases its
    /// own dependents), one to run is queued.
    fn dependencies_done(&mut self, index: usize) {
        match &self.graph.jobs[index].initial {
            Initial::Done(reason) if self.status[index].is_none() => {
                let reason = reason.clone();
                self.finish(index, NodeStatus::Skipped { reason });
            }
            _ => self.make_ready(index),
        }
    }

    fn make_ready(&mut self, index: usize) {
        // A job already decided (skipped, blocked) never starts; one already queued is not
        // queued twice.
        if self.status[index].is_some() || std::mem::replace(&mut self.queued[index], true) {
            return;
        }
        let kind = self.graph.jobs[index].kind.clone();
        self.ready.entry(kind).or_default().push((self.priority[index], Reverse(index)));
    }

    /// Starts ready jobs — longest remaining cost path first, then lowest index — as far as
    /// the limits allow. Deterministic: the same graph starts in the same order every run.
    fn start_ready<R: Runner<P, Output = O>>(
        &mut self,
        workers: &mut JoinSet<Attempt<O>>,
        graph: &Arc<JobGraph<P>>,
        runner: &Arc<R>,
    ) {
        let global = self.options.limits.global.unwrap_or(usize::MAX).max(1);
        while self.running.len() < global {
            let next = self
                .ready
                .iter()
                .filter(|(kind, _)| {
                    self.running_per_kind.get(*kind).copied().unwrap_or(0) < self.options.limits.of(kind)
                })
                .filter_map(|(kind, heap)| heap.peek().map(|(priority, i)| (*priority, *i, kind.clone())))
                .max();
            let Some((_, Reverse(index), kind)) = next else { break };
            self.ready.get_mut(&kind).map(BinaryHeap::pop);
            self.queued[index] = false;
            *self.running_per_kind.entry(kind.clone()).or_default() += 1;
            self.attempts[index] += 1;
            let attempt = self.attempts[index];
            self.first_start[index].get_or_insert_with(Instant::now);
            let cancel = CancellationToken::new();
            let ctx = JobContext { index, attempt, cancel: cancel.clone(), events: self.events.clone() };
            self.emit(RunEvent::NodeStarted { index, id: self.graph.jobs[index].id.clone(), kind, attempt });
            let graph = Arc::clone(graph);
            let runner = Arc::clone(runner);
            let handle = workers.spawn(async move { (index, attempt, runner.run(&graph.jobs[index], ctx).await) });
            self.running.insert(handle.id(), (index, cancel));
        }
    }

    fn release(&mut self, id: Id) {
        if let Some((index, _)) = self.running.remove(&id) {
            let kind = &self.graph.jobs[index].kind;
            if let Some(count) = self.running_per_kind.get_mut(kind) {
                *count -= 1;
            }
        }
    }

    fn collect_aborted(&mut self, id: Id) {
        if let Some((index, _)) = self.running.get(&id).cloned() {
            self.release(id);
            self.finish(index, NodeStatus::Cancelled);
        }
    }

    fn attempt_done(
        &mut self,
        index: usize,
        attempt: u32,
        outcome: Result<O, JobError>,
        retry_tx: &UnboundedSender<usize>,
    ) {
        match outcome {
            Ok(output) => {
                self.outputs[index] = output;
                let status = if attempt > 1 { NodeStatus::Flaky } else { NodeStatus::Passed };
                self.finish(index, status);
            }
            Err(error)
                if error.class == ErrorClass::Cancelled || self.stop.is_some_and(|r| r >= CancelReason::Signal) =>
            {
                self.finish(index, NodeStatus::Cancelled);
            }
            Err(error) => {
                let delay =
                    if error.class.is_retryable() && self.stop.is_none() { self.next_delay(index) } else { None };
                match delay {
                    Some(retry_in) => {
                        let id = self.graph.jobs[index].id.clone();
                        self.emit(RunEvent::AttemptFailed { index, id, attempt, error: error.clone(), retry_in });
                        self.retrying.insert(index, error);
                        let tx = retry_tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(retry_in).await;
                            let _ = tx.send(index);
                        });
                    }
                    None => {
                        self.finish(index, NodeStatus::Failed { error });
                        if self.options.fail_fast && self.stop.is_none() {
                            self.begin_stop(CancelReason::FailFast);
                        }
                    }
                }
            }
        }
    }

    fn next_delay(&mut self, index: usize) -> Option<Duration> {
        let policy = self.options.retry;
        let seed = RetryPolicy::seed_for(&self.graph.jobs[index].id);
        self.delays[index].get_or_insert_with(|| Box::new(policy.delays(seed))).next()
    }

    fn begin_stop(&mut self, reason: CancelReason) {
        if self.stop.is_some_and(|r| r >= reason) {
            return;
        }
        self.stop = Some(reason);
        self.emit(RunEvent::CancelBegun { reason });
        if reason >= CancelReason::Signal {
            for (_, token) in self.running.values() {
                token.cancel();
            }
        }
    }

    /// Records a final status; success releases dependents, failure blocks them.
    fn finish(&mut self, index: usize, status: NodeStatus) {
        if self.status[index].is_some() {
            return;
        }
        self.announce(index, &status);
        let succeeded = status.succeeded();
        let failed = matches!(status, NodeStatus::Failed { .. } | NodeStatus::Blocked { .. });
        self.status[index] = Some(status);
        if succeeded {
            for dependent in self.dependents[index].clone() {
                self.remaining[dependent] -= 1;
                if self.remaining[dependent] == 0 && self.status[dependent].is_none() {
                    self.dependencies_done(dependent);
                }
            }
        } else if failed {
            self.block_dependents_of(index);
        }
    }

    /// Every transitive dependent of a failed node is blocked, naming the failed node.
    fn block_dependents_of(&mut self, failed: usize) {
        let by = match &self.status[failed] {
            Some(NodeStatus::Blocked { by }) => by.clone(),
            _ => self.graph.jobs[failed].id.clone(),
        };
        let mut stack = self.dependents[failed].clone();
        let mut blocked = Vec::new();
        while let Some(next) = stack.pop() {
            if self.status[next].is_none() && !blocked.contains(&next) {
                blocked.push(next);
                stack.extend(self.dependents[next].iter().copied());
            }
        }
        blocked.sort_unstable();
        for index in blocked {
            let status = NodeStatus::Blocked { by: by.clone() };
            self.announce(index, &status);
            self.status[index] = Some(status);
        }
    }

    /// Counts a final status and tells the reporters, with the job's attempts, time since its
    /// first start and output (none for a job that never started).
    fn announce(&mut self, index: usize, status: &NodeStatus) {
        let job = &self.graph.jobs[index];
        let duration = self.first_start[index].map_or(Duration::ZERO, |t| t.elapsed());
        let output = std::mem::take(&mut self.outputs[index]);
        self.summary.count(status);
        self.emit(RunEvent::NodeFinished {
            index,
            id: job.id.clone(),
            kind: job.kind.clone(),
            status: status.clone(),
            attempts: self.attempts[index],
            duration,
            output,
        });
    }
}
