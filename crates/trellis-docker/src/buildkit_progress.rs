//! BuildKit's progress (`moby.buildkit.trace` messages) rendered as the lines `docker build
//! --progress=plain` prints: a vertex's name when it starts (`#3 [2/3] RUN make`), its output
//! lines as whole lines (`#3 compiling…`), then `#3 DONE 0.4s`, `#3 CACHED` or `#3 ERROR: …`.
//! Vertices are numbered in the order they first appear, as the plain printer does. Timing
//! prefixes on output lines are left out: logs stay comparable between runs.

use std::collections::HashMap;

/// One `moby.buildkit.trace` message: what the log needs of BuildKit's `StatusResponse`.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct StatusUpdate {
    pub vertexes: Vec<Vertex>,
    pub statuses: Vec<VertexStatus>,
    pub logs: Vec<VertexLog>,
}

/// A step of the build graph (`[2/3] RUN make`, `exporting to image`, …) as it stands now.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Vertex {
    pub digest: String,
    pub name: String,
    pub cached: bool,
    /// Seconds since the epoch.
    pub started: Option<f64>,
    pub completed: Option<f64>,
    pub error: String,
}

/// A sub-task of a vertex (`exporting layers`, `writing image sha256:…`).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct VertexStatus {
    pub id: String,
    pub vertex: String,
    pub completed: bool,
}

/// Output a vertex wrote (a `RUN`'s stdout and stderr), in arbitrary chunks.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct VertexLog {
    pub vertex: String,
    pub msg: Vec<u8>,
}

#[derive(Debug, Default)]
struct VertexState {
    number: usize,
    announced: bool,
    finished: bool,
    /// Output after the last newline, until the rest of the line arrives.
    partial: Vec<u8>,
    statuses_done: Vec<String>,
}

/// Turns a build's status updates into plain progress lines.
#[derive(Debug, Default)]
pub(crate) struct PlainProgress {
    vertices: HashMap<String, VertexState>,
}

impl PlainProgress {
    /// The lines `update` adds to the log: vertices that started, their sub-tasks and output,
    /// then how the vertices that finished ended (after their last output, as BuildKit does).
    pub(crate) fn lines(&mut self, update: &StatusUpdate) -> Vec<String> {
        let mut out = Vec::new();
        for vertex in &update.vertexes {
            let state = self.state(&vertex.digest);
            if vertex.started.is_some() && !state.announced {
                state.announced = true;
                out.push(format!("#{} {}", state.number, vertex.name));
            }
        }
        for status in &update.statuses {
            let state = self.state(&status.vertex);
            if status.completed && !state.statuses_done.contains(&status.id) {
                state.statuses_done.push(status.id.clone());
                out.push(format!("#{} {} done", state.number, status.id));
            }
        }
        for log in &update.logs {
            let state = self.state(&log.vertex);
            state.partial.extend_from_slice(&log.msg);
            while let Some(end) = state.partial.iter().position(|&b| b == b'\n') {
                let whole: Vec<u8> = state.partial.drain(..=end).collect();
                out.push(format!("#{} {}", state.number, text_of(&whole)));
            }
        }
        for vertex in &update.vertexes {
            let state = self.state(&vertex.digest);
            let number = state.number;
            let ending = if state.finished {
                None
            } else if !vertex.error.is_empty() {
                Some(format!("#{number} ERROR: {}", vertex.error))
            } else if vertex.cached && vertex.started.is_some() {
                Some(format!("#{number} CACHED"))
            } else if let (Some(started), Some(completed)) = (vertex.started, vertex.completed) {
                Some(format!("#{number} DONE {:.1}s", (completed - started).max(0.0)))
            } else {
                None
            };
            if let Some(ending) = ending {
                state.finished = true;
                flush(number, state, &mut out);
                out.push(ending);
            }
        }
        out
    }

    /// Output still waiting for its newline when the stream ends.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        let mut states: Vec<&mut VertexState> = self.vertices.values_mut().collect();
        states.sort_by_key(|s| s.number);
        let mut out = Vec::new();
        for state in states {
            let number = state.number;
            flush(number, state, &mut out);
        }
        out
    }

    fn state(&mut self, digest: &str) -> &mut VertexState {
        let next = self.vertices.len() + 1;
        self.vertices.entry(digest.to_owned()).or_insert_with(|| VertexState { number: next, ..Default::default() })
    }
}

fn flush(number: usize, state: &mut VertexState, out: &mut Vec<String>) {
    if !state.partial.is_empty() {
        let rest = std::mem::take(&mut state.partial);
        out.push(format!("#{number} {}", text_of(&rest)));
    }
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end_matches(['\n', '\r']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vertex(digest: &str, name: &str, started: Option<f64>, completed: Option<f64>) -> Vertex {
        Vertex { digest: digest.into(), name: name.into(), started, completed, ..Default::default() }
    }

    fn log(vertex: &str, msg: &str) -> VertexLog {
        VertexLog { vertex: vertex.into(), msg: msg.as_bytes().to_vec() }
    }

    #[test]
    fn vertices_are_numbered_announced_once_and_finished_once() {
        let mut progress = PlainProgress::default();
        let mut lines = Vec::new();
        let updates = [
            StatusUpdate { vertexes: vec![vertex("a", "[1/2] COPY x /x", None, None)], ..Default::default() },
            StatusUpdate { vertexes: vec![vertex("b", "[2/2] RUN make", None, None)], ..Default::default() },
            StatusUpdate { vertexes: vec![vertex("a", "[1/2] COPY x /x", Some(1.0), None)], ..Default::default() },
            StatusUpdate {
                vertexes: vec![vertex("a", "[1/2] COPY x /x", Some(1.0), Some(1.25))],
                ..Default::default()
            },
            // BuildKit restarts finished vertices now and then: nothing new to say.
            StatusUpdate { vertexes: vec![vertex("a", "[1/2] COPY x /x", Some(2.0), Some(2.0))], ..Default::default() },
            StatusUpdate { vertexes: vec![vertex("b", "[2/2] RUN make", Some(2.0), None)], ..Default::default() },
            StatusUpdate { logs: vec![log("b", "comp"), log("b", "iling\nlinking\npart")], ..Default::default() },
            StatusUpdate {
                vertexes: vec![Vertex {
                    error: "exit code: 2".into(),
                    ..vertex("b", "[2/2] RUN make", Some(2.0), Some(3.0))
                }],
                ..Default::default()
            },
        ];
        for update in &updates {
            lines.extend(progress.lines(update));
        }
        lines.extend(progress.finish());
        assert_eq!(
            lines,
            [
                "#1 [1/2] COPY x /x",
                "#1 DONE 0.2s",
                "#2 [2/2] RUN make",
                "#2 compiling",
                "#2 linking",
                "#2 part",
                "#2 ERROR: exit code: 2",
            ]
        );
    }

    #[test]
    fn cached_vertices_and_statuses() {
        let mut progress = PlainProgress::default();
        let cached = Vertex { cached: true, ..vertex("a", "[1/1] RUN true", Some(1.0), Some(1.0)) };
        let status = VertexStatus { id: "writing image sha256:ab".into(), vertex: "e".into(), completed: true };
        let update = StatusUpdate {
            vertexes: vec![cached, vertex("e", "exporting to image", Some(1.0), None)],
            statuses: vec![status.clone(), status],
            ..Default::default()
        };
        assert_eq!(
            progress.lines(&update),
            ["#1 [1/1] RUN true", "#2 exporting to image", "#2 writing image sha256:ab done", "#1 CACHED"]
        );
    }
}
