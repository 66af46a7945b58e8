//! The graph the executor runs: jobs in priority order (index order is the order ready jobs
//! start in), each with a kind, its dependencies and the engine's payload.

/// Whether a job must run or is already done (its key succeeded before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    Run,
    /// Counts as succeeded for its dependents; reported as skipped with this reason.
    Done(String),
}

#[derive(Debug, Clone)]
pub struct Job<P> {
    pub id: String,
    /// Concurrency class (`build`, `test`, `push`, …): limits apply per kind.
    pub kind: String,
    /// Indices of the jobs this one waits for; they must be lower or higher, but acyclic.
    pub deps: Vec<usize>,
    pub initial: Initial,
    pub payload: P,
}

/// Jobs in priority order.
#[derive(Debug, Clone)]
pub struct JobGraph<P> {
    pub jobs: Vec<Job<P>>,
}

impl<P> JobGraph<P> {
    pub fn new(jobs: Vec<Job<P>>) -> Self {
        Self { jobs }
    }

    /// For each job, the jobs that depend on it.
    pub(crate) fn dependents(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.jobs.len()];
        for (index, job) in self.jobs.iter().enumerate() {
            for &dep in &job.deps {
                out[dep].push(index);
            }
        }
        out
    }
}
