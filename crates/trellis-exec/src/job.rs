//! The graph the executor runs: jobs in priority order (index order is the order ready jobs
//! start in), each with a kind, its dependencies and the runner's payload.

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
    /// Expected cost (e.g. the last run's duration in ms; 1 when unknown). Ready jobs start
    /// longest remaining cost path first, so the critical path is never kept waiting.
    pub cost: u64,
    pub payload: P,
}

impl<P> Job<P> {
    /// A job to run, with unit cost.
    pub fn new(id: impl Into<String>, kind: impl Into<String>, deps: Vec<usize>, payload: P) -> Self {
        Self { id: id.into(), kind: kind.into(), deps, initial: Initial::Run, cost: 1, payload }
    }
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

    /// For each job, its cost plus the costliest path of dependents after it: the order in
    /// which ready jobs start (highest first).
    pub(crate) fn priorities(&self, dependents: &[Vec<usize>]) -> Vec<u64> {
        // Reverse topological order by Kahn's algorithm on the dependents' side.
        let n = self.jobs.len();
        let mut pending: Vec<usize> = dependents.iter().map(Vec::len).collect();
        let mut stack: Vec<usize> = (0..n).filter(|i| pending[*i] == 0).collect();
        let mut priority = vec![0u64; n];
        while let Some(i) = stack.pop() {
            let after = dependents[i].iter().map(|d| priority[*d]).max().unwrap_or(0);
            priority[i] = self.jobs[i].cost.max(1).saturating_add(after);
            for &dep in &self.jobs[i].deps {
                pending[dep] -= 1;
                if pending[dep] == 0 {
                    stack.push(dep);
                }
            }
        }
        priority
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
