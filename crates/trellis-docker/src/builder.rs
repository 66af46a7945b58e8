//! The builder seam: "build this context into an image ID" and "run this test as layers on an
//! image, then remove what it made", behind one object-safe trait, with the engine's classic
//! builder and its embedded BuildKit (`/build?version=2`) as the two implementations.
//!
//! A backend holds an `Arc<dyn Builder>` from [`DockerClient::builder`]; what differs between
//! the builders (how progress is reported, how a test stands on an exact image, what a
//! cancelled build leaves behind) stays inside their modules.

use std::collections::HashMap;
use std::fmt;

use futures_util::future::BoxFuture;
use trellis_graph::ContextWalk;

use crate::errors::EngineError;

/// Which of the engine's builders runs builds and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuilderKind {
    /// The engine's legacy builder (`/build?version=1`).
    Classic,
    /// The BuildKit the engine embeds (`/build?version=2`), without a session.
    BuildKit,
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuilderKind::Classic => "classic",
            BuilderKind::BuildKit => "buildkit",
        })
    }
}

/// One image build.
pub struct BuildRequest<'a> {
    pub dockerfile: &'a str,
    pub context: Option<&'a ContextWalk>,
    pub args: &'a [(String, String)],
    pub labels: HashMap<String, String>,
    /// `default`, `host` or `none`.
    pub network: &'a str,
    pub target: Option<&'a str>,
    /// Build without the layer cache (`--refresh`).
    pub no_cache: bool,
    /// `os/arch[/variant]` to build for; `None` is the engine's own platform.
    pub platform: Option<&'a str>,
}

/// A test: layers built on top of an exact image ID, then removed.
pub struct TestRequest<'a> {
    pub image_id: &'a str,
    /// `RUN` lines (a run test) — or a user Dockerfile taking `ARG IMAGE` with its context.
    pub run: Option<&'a [String]>,
    pub dockerfile: Option<(&'a str, &'a ContextWalk)>,
    pub network: &'a str,
    /// `os/arch[/variant]` of the image under test; `None` is the engine's own platform.
    pub platform: Option<&'a str>,
}

/// What a build or test made in the engine, recorded as soon as the engine names it, so that
/// [`Builder::clean_up`] can remove it after success, failure or cancellation alike.
#[derive(Debug, Default, Clone)]
pub struct BuildTrace {
    /// Images a test made, removed newest last: the classic builder's layers committed by
    /// steps after `FROM` (short IDs), BuildKit's one test image. A build records none (its
    /// image is the result).
    pub layers: Vec<String>,
    /// Containers the classic builder ran steps in (removed by the daemon when a step ends,
    /// but not when the client goes away mid-step). BuildKit runs none.
    pub containers: Vec<String>,
    /// BuildKit: the temporary local tag a test's `FROM` names the image under test by
    /// (BuildKit resolves `FROM sha256:…` on Docker Hub; a local tag is found locally).
    pub temporary_tag: Option<String>,
}

/// Builds images and runs tests as layers on them. Object-safe: every method returns a
/// boxed future, so a backend can hold `Arc<dyn Builder>` and pick the builder at run time.
pub trait Builder: Send + Sync + fmt::Debug {
    fn kind(&self) -> BuilderKind;

    /// Builds `request` and returns the image ID. Every output line goes to `line`; a failed
    /// step is an error classified for retries (`Refused` when the same inputs fail again).
    fn build<'a>(
        &'a self,
        request: BuildRequest<'a>,
        trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<String, EngineError>>;

    /// Runs a test as layers on `request.image_id` without the layer cache; what it makes is
    /// recorded in `trace` as soon as the engine names it. Call [`Builder::clean_up`] after it,
    /// whatever the outcome (also when the future was dropped).
    fn test<'a>(
        &'a self,
        request: TestRequest<'a>,
        trace: &'a mut BuildTrace,
        line: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Removes what `trace` names: containers, test layers or image, the temporary tag. Never
    /// fails (what is already gone is fine); never touches the image a build or test stood on.
    fn clean_up<'a>(&'a self, trace: &'a BuildTrace) -> BoxFuture<'a, ()>;
}

/// The lines of a test build: `FROM base` and each run line as a `RUN` step.
pub(crate) fn run_test_dockerfile(base: &str, lines: &[String]) -> String {
    let mut text = format!("FROM {base}\n");
    for run in lines {
        text.push_str("RUN ");
        text.push_str(run);
        text.push('\n');
    }
    text
}

/// The stage [`with_label_step`] adds on top of a build's `target`.
const LABEL_STAGE: &str = "trellis-labels";

/// `dockerfile` with the labels that need no quoting written as one final `LABEL` step, the
/// target to build then, and the labels left for the API. Both builders need the step: the
/// classic builder turns each API label into a step of its own (a container committed per
/// label, ~0.2 s each), BuildKit writes API labels into the config with no history entry —
/// and [`DockerClient::labelled_last`] tells a build's own image from one built on top of it
/// (which inherits its labels) by this step. With a `target`, the step goes into a stage of
/// its own on top of it; without one, at the end of the last stage. Sorted, so the same labels
/// give the same image.
pub(crate) fn with_label_step(
    dockerfile: &str,
    labels: &HashMap<String, String>,
    target: Option<&str>,
) -> (String, Option<String>, HashMap<String, String>) {
    let plain = |text: &str| text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@,+".contains(&b));
    let (stepped, rest): (HashMap<String, String>, HashMap<String, String>) =
        labels.clone().into_iter().partition(|(k, v)| !k.is_empty() && plain(k) && plain(v));
    if stepped.is_empty() {
        return (dockerfile.to_owned(), target.map(str::to_owned), rest);
    }
    let mut pairs: Vec<String> =
        stepped.iter().map(|(k, v)| if v.is_empty() { format!("{k}=\"\"") } else { format!("{k}={v}") }).collect();
    pairs.sort();
    let mut text = dockerfile.to_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let target = target.map(|stage| {
        text.push_str(&format!("FROM {stage} AS {LABEL_STAGE}\n"));
        LABEL_STAGE.to_owned()
    });
    text.push_str(&format!("LABEL {}\n", pairs.join(" ")));
    (text, target, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_labels_become_a_final_label_step() {
        let labels = HashMap::from([
            ("dev.trellis.key".to_owned(), "ab12".to_owned()),
            ("dev.trellis.parents".to_owned(), "base/1@sha256:ff,tool@sha256:ee".to_owned()),
            ("description".to_owned(), "needs \"quotes\" and $vars".to_owned()),
        ]);
        let (text, target, rest) = with_label_step("FROM scratch", &labels, None);
        assert_eq!(
            text,
            "FROM scratch\nLABEL dev.trellis.key=ab12 dev.trellis.parents=base/1@sha256:ff,tool@sha256:ee\n"
        );
        assert_eq!(target, None);
        assert_eq!(rest.keys().collect::<Vec<_>>(), ["description"], "left for the API");
        let empty = HashMap::from([("dev.trellis.parents".to_owned(), String::new())]);
        assert_eq!(with_label_step("FROM scratch\n", &empty, None).0, "FROM scratch\nLABEL dev.trellis.parents=\"\"\n");
        let (text, target, _) = with_label_step("FROM scratch AS app\nFROM scratch AS debug\n", &labels, Some("app"));
        assert!(
            text.contains("FROM scratch AS debug\nFROM app AS trellis-labels\nLABEL dev.trellis.key=ab12 "),
            "{text}"
        );
        assert_eq!(target.as_deref(), Some(LABEL_STAGE));
        let unchanged = with_label_step("FROM scratch\n", &HashMap::new(), Some("app"));
        assert_eq!(unchanged, ("FROM scratch\n".to_owned(), Some("app".to_owned()), HashMap::new()));
    }
}
