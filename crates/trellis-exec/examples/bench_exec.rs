//! `cargo xtask bench exec`: random DAGs of 1k jobs with scripted durations on a fake
//! engine, run in tokio's virtual time. Prints makespan / lower bound, where the bound is
//! max(critical path, total work of a kind / its slots). 1.00 is optimal; the goal is ≤ 1.05.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use trellis_exec::*;

/// The DAG shapes: `wide` has scarce slots (makespan bound by work per slot), `deep` long
/// chains and ample slots (bound by the critical path), `balanced` both bounds equal — there
/// the max() bound is not reachable in general, so its ratio is shown but not held to the goal.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Wide,
    Deep,
    Balanced,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Wide => "wide",
            Shape::Deep => "deep",
            Shape::Balanced => "balanced",
        }
    }

    fn slots(self) -> [(&'static str, usize); 3] {
        match self {
            Shape::Wide => [("build", 2), ("test", 4), ("push", 4)],
            Shape::Deep => [("build", 64), ("test", 64), ("push", 64)],
            Shape::Balanced => [("build", 32), ("test", 32), ("push", 32)],
        }
    }
}

struct Scripted(Vec<Duration>);

impl Runner<usize> for Scripted {
    type Output = ();

    fn run(&self, job: &Job<usize>, _ctx: JobContext<()>) -> impl Future<Output = Result<(), JobError>> + Send {
        let takes = self.0[job.payload];
        async move {
            tokio::time::sleep(takes).await;
            Ok(())
        }
    }
}

/// A trellis-shaped random DAG: chains of build → tests → push per variant, some variants
/// built on others.
/// `deep`: each variant builds on one of the few before it (long chains, dependency-bound);
/// otherwise on any earlier one (wide, bound by the slots).
fn dag(seed: u64, variants: usize, deep: bool) -> (Vec<Job<usize>>, Vec<Duration>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut jobs = Vec::new();
    let mut durations = Vec::new();
    let mut tags: Vec<usize> = Vec::new();
    let mut add = |jobs: &mut Vec<Job<usize>>, kind: &str, deps: Vec<usize>, secs: u64| {
        let index = jobs.len();
        let mut job = Job::new(format!("{kind}:{index}"), kind, deps, index);
        // The cost hint a real run would take from the last run's durations.
        job.cost = secs;
        jobs.push(job);
        durations.push(Duration::from_secs(secs));
        index
    };
    for v in 0..variants {
        let mut deps = Vec::new();
        if v > 0 && rng.u8(..) < 90 {
            let from = if deep { v.saturating_sub(3) } else { 0 };
            deps.push(tags[rng.usize(from..v)]);
        }
        let build = add(&mut jobs, "build", deps, rng.u64(5..60));
        let tests: Vec<usize> =
            (0..rng.usize(1..3)).map(|_| add(&mut jobs, "test", vec![build], rng.u64(1..20))).collect();
        tags.push(tests[tests.len() - 1]);
        add(&mut jobs, "push", tests, rng.u64(1..10));
    }
    (jobs, durations)
}

fn lower_bound(jobs: &[Job<usize>], durations: &[Duration], slots: &[(&str, usize)]) -> Duration {
    // Dependencies always point to lower indices here, so one pass finds the critical path.
    let mut finish = vec![Duration::ZERO; jobs.len()];
    for (i, job) in jobs.iter().enumerate() {
        finish[i] = job.deps.iter().map(|d| finish[*d]).max().unwrap_or_default() + durations[i];
    }
    let critical = finish.into_iter().max().unwrap_or_default();
    let mut work: HashMap<&str, Duration> = HashMap::new();
    for (job, d) in jobs.iter().zip(durations) {
        *work.entry(job.kind.as_str()).or_default() += *d;
    }
    let per_kind = slots
        .iter()
        .map(|(kind, slots)| work.get(kind).copied().unwrap_or_default() / *slots as u32)
        .max()
        .unwrap_or_default();
    critical.max(per_kind)
}

fn makespan(
    runtime: &tokio::runtime::Runtime,
    jobs: Vec<Job<usize>>,
    durations: Vec<Duration>,
    slots: &[(&str, usize)],
) -> Duration {
    let n = jobs.len();
    let options = ExecOptions {
        limits: Limits { per_kind: slots.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect(), global: None },
        retry: RetryPolicy::none(),
        ..ExecOptions::default()
    };
    let summary = runtime.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let summary =
            run(Arc::new(JobGraph::new(jobs)), Arc::new(Scripted(durations)), options, Shutdown::new(), tx).await;
        drain.await.unwrap();
        summary
    });
    assert_eq!(summary.passed, n);
    summary.duration
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    println!("| shape    | seed | jobs | lower bound | makespan | ratio | ratio without cost hints |");
    println!("|----------|------|------|-------------|----------|-------|--------------------------|");
    let mut worst: HashMap<&str, f64> = HashMap::new();
    for shape in [Shape::Wide, Shape::Deep, Shape::Balanced] {
        for seed in 1..=5 {
            let (jobs, durations) = dag(seed, 286, shape != Shape::Wide);
            let slots = shape.slots();
            let bound = lower_bound(&jobs, &durations, &slots).as_secs_f64();
            let n = jobs.len();
            let blind: Vec<Job<usize>> = jobs
                .iter()
                .cloned()
                .map(|mut j| {
                    j.cost = 1;
                    j
                })
                .collect();
            let hinted = makespan(&runtime, jobs, durations.clone(), &slots).as_secs_f64();
            let unhinted = makespan(&runtime, blind, durations, &slots).as_secs_f64();
            let ratio = hinted / bound;
            let entry = worst.entry(shape.name()).or_default();
            *entry = entry.max(ratio);
            println!(
                "| {:<8} | {seed:>4} | {n:>4} | {bound:>10.0}s | {hinted:>7.0}s | {ratio:.3} | {:>24.3} |",
                shape.name(),
                unhinted / bound
            );
        }
    }
    for shape in [Shape::Wide, Shape::Deep, Shape::Balanced] {
        let goal = if shape == Shape::Balanced { "(bound not reachable in general)" } else { "(goal <= 1.05)" };
        println!("worst {:<8} makespan / lower bound: {:.3} {goal}", shape.name(), worst[shape.name()]);
    }
}
