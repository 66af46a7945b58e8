//! `trellis doctor` (DESIGN §12): what trellis finds on this machine — the engine, its image
//! store, the builder and its BuildKit, the platforms it can run, the registry and whether the
//! credentials work — each with what to do when something is off. It runs nothing and writes
//! nothing; without a workspace it checks the engine (and a registry given to it).

use trellis_docker::{BuilderKind, DockerClient, EngineError, ImageStore};
use trellis_model::BuilderChoice;

use crate::facade::Workspace;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, but not as well as it could (or not for every use).
    Warning,
    /// A build would fail on it.
    Failed,
}

/// One thing `doctor` looked at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    /// `engine`, `image store`, `builder`, `platforms`, `registry`, `compression`.
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it, when it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// Everything `doctor` found, in the order it looked.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Doctor {
    /// Whether a build would work (no check failed).
    pub ok: bool,
    pub checks: Vec<Finding>,
}

impl Doctor {
    /// Whether the engine or the registry could not be reached or refused (exit 3), rather
    /// than some other check failing.
    pub fn unreachable(&self) -> bool {
        self.checks.iter().any(|f| f.status == Status::Failed && matches!(f.check, "engine" | "registry"))
    }

    fn add(&mut self, check: &'static str, status: Status, detail: impl Into<String>, fix: Option<String>) {
        self.checks.push(Finding { check, status, detail: detail.into(), fix });
    }
}

/// Looks at the engine the docker CLI would use, and, for `workspace`, its builder, platforms,
/// registry (or `registry`, which wins) and compression.
pub async fn doctor(workspace: Option<&Workspace>, registry: Option<String>) -> Doctor {
    let mut doctor = Doctor::default();
    let settings = workspace.map(|w| &w.model().settings);
    let client = match DockerClient::connect().await {
        Ok(client) => client,
        Err(error) => {
            // The error names the address and what chose it.
            let why = match error {
                EngineError::Unreachable(why) => why,
                other => other.to_string(),
            };
            doctor.add(
                "engine",
                Status::Failed,
                format!("no Docker engine answers: {why}"),
                Some("start the engine (`sudo systemctl start docker`), or point DOCKER_HOST or `docker context use` at one".to_owned()),
            );
            registry_check(&mut doctor, workspace, registry).await;
            doctor.ok = false;
            return doctor;
        }
    };
    let (version, api) = client.version();
    let host = trellis_docker::EngineHost::from_environment();
    let at = host.as_ref().map_or_else(|_| String::new(), |h| format!(" at {} ({})", h.address, h.chosen_by));
    doctor.add("engine", Status::Ok, format!("Docker {version}, API {api}, {}{at}", client.platform()), None);
    let store = client.store();
    let compression = trellis_docker::Compression::from(settings.map(|s| s.compression).unwrap_or_default());
    let (store_detail, pushed) = match store {
        ImageStore::Containerd => (
            "containerd image store: image IDs are manifest digests, layers are kept compressed",
            match compression {
                trellis_docker::Compression::Gzip => {
                    "gzip, as the engine stores them: the published digest is the image ID".to_owned()
                }
                other => format!("recompressed from the stored gzip by trellis ({})", other.compressor()),
            },
        ),
        ImageStore::Classic => (
            "classic image store: image IDs are config digests, layers are kept uncompressed",
            format!("compressed by trellis ({})", compression.compressor()),
        ),
    };
    doctor.add("image store", Status::Ok, store_detail, None);
    // Docker learnt to pull zstd layers in 23.0 (API 1.42): an older engine cannot pull back
    // what it publishes, which a fresh runner does with every image the registry serves.
    let old_engine = api.split_once('.').and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)))
        < Some((1u32, 42u32));
    match (compression, old_engine) {
        (trellis_docker::Compression::Zstd, true) => doctor.add(
            "compression",
            Status::Warning,
            format!("layers are pushed {pushed}; this engine (API {api}) cannot pull zstd layers back"),
            Some("pull zstd images with Docker 23 or newer, or keep `compression \"gzip\"` (the default)".to_owned()),
        ),
        _ => doctor.add("compression", Status::Ok, format!("layers are pushed {pushed}"), None),
    }
    builder_check(&mut doctor, &client, settings.and_then(|s| s.builder)).await;
    platforms_check(&mut doctor, &client, workspace);
    registry_check(&mut doctor, workspace, registry).await;
    doctor.ok = doctor.checks.iter().all(|f| f.status != Status::Failed);
    doctor
}

async fn builder_check(doctor: &mut Doctor, client: &DockerClient, choice: Option<BuilderChoice>) {
    let offered = client.offers_buildkit();
    let buildkit = match client.buildkit_version().await {
        // Debian's packages build BuildKit without its version stamped.
        Ok(Some(version)) if version.starts_with("v0.0.0") => {
            "BuildKit (embedded; 0.11 or newer, its build reports no version)".to_owned()
        }
        Ok(Some(version)) => format!("BuildKit {version} (embedded)"),
        Ok(None) => "BuildKit (embedded; it does not say its version: older than 0.11)".to_owned(),
        Err(error) => format!("BuildKit (embedded; its version could not be asked: {error})"),
    };
    let kind = match (choice, offered) {
        (Some(BuilderChoice::Classic), _) => Some(BuilderKind::Classic),
        (_, true) => Some(BuilderKind::BuildKit),
        (Some(BuilderChoice::BuildKit), false) => None,
        (None, false) => Some(BuilderKind::Classic),
    };
    match kind {
        Some(BuilderKind::BuildKit) => doctor.add(
            "builder",
            Status::Ok,
            format!("{buildkit}, each build's context served by a session; `builder \"classic\"` selectable"),
            None,
        ),
        Some(BuilderKind::Classic) if offered => doctor.add(
            "builder",
            Status::Ok,
            format!("the classic builder (settings ask for it); {buildkit} is offered too"),
            None,
        ),
        Some(BuilderKind::Classic) => doctor.add(
            "builder",
            Status::Warning,
            "the classic builder: this engine offers no BuildKit (API older than 1.39, or not Linux)",
            Some(
                "Dockerfiles that use BuildKit's syntax (`RUN --mount`, `FROM --platform`) need a newer engine"
                    .to_owned(),
            ),
        ),
        None => doctor.add(
            "builder",
            Status::Failed,
            "settings ask for builder \"buildkit\", and this engine does not offer BuildKit",
            Some("update the engine, or set builder \"classic\"".to_owned()),
        ),
    }
}

fn platforms_check(doctor: &mut Doctor, client: &DockerClient, workspace: Option<&Workspace>) {
    let native = client.platform().to_owned();
    let wanted: Vec<String> = match workspace {
        Some(workspace) => {
            let mut wanted: Vec<String> =
                workspace.variants().iter().flat_map(|v| v.platforms.iter().cloned()).collect();
            wanted.sort();
            wanted.dedup();
            wanted
        }
        None => Vec::new(),
    };
    if !crate::emulation::engine_is_local() {
        let detail = format!("{native} natively; the engine is remote: its emulation is its own to check");
        doctor.add("platforms", Status::Ok, detail, None);
        return;
    }
    let emulated = crate::emulation::emulated(&native);
    let runs = match emulated.is_empty() {
        true => format!("{native} natively, nothing emulated"),
        false => format!("{native} natively; emulated (binfmt_misc): {}", emulated.join(", ")),
    };
    match crate::emulation::check(wanted.iter().map(String::as_str), &native) {
        Ok(()) => doctor.add("platforms", Status::Ok, runs, None),
        Err(crate::Error::NoEmulation(why)) => {
            let (detail, fix) = why
                .split_once(": install")
                .map_or((why.clone(), None), |(detail, fix)| (detail.to_owned(), Some(format!("install{fix}"))));
            doctor.add("platforms", Status::Failed, format!("{runs}; {detail}"), fix);
        }
        Err(other) => doctor.add("platforms", Status::Failed, other.to_string(), None),
    }
}

async fn registry_check(doctor: &mut Doctor, workspace: Option<&Workspace>, registry: Option<String>) {
    let settings = workspace.and_then(|w| w.model().settings.registry.clone());
    let Some(registry) = registry.or(settings) else {
        doctor.add(
            "registry",
            Status::Ok,
            "none set: builds stay in the engine",
            Some("to push, set `registry` in settings or pass --registry".to_owned()),
        );
        return;
    };
    let credentials = trellis_docker::credentials_for(&registry);
    let user = credentials.as_ref().and_then(|c| c.username.clone());
    let who = user.as_deref().map_or_else(|| "without credentials".to_owned(), |u| format!("as user `{u}`"));
    // A repository the workspace pushes to: a registry may scope what it grants by repository.
    let repository = workspace
        .and_then(|w| w.variants().first())
        .and_then(|v| v.references.first())
        .map_or_else(|| "trellis-doctor/probe".to_owned(), |r| r.repository.clone());
    let client = trellis_docker::registry::Registry::new(&registry, credentials);
    match client.served(&repository, "latest").await {
        Ok(_) => doctor.add("registry", Status::Ok, format!("{registry} answers and accepts {who}"), None),
        Err(EngineError::Unauthorized(detail)) => doctor.add(
            "registry",
            Status::Failed,
            format!("{registry} refuses {who} ({detail})"),
            Some(format!("log in: `docker login {registry}` (trellis reads the docker config's credentials)")),
        ),
        Err(error) => doctor.add(
            "registry",
            Status::Failed,
            format!(
                "{registry} does not answer: {}",
                match error {
                    // The registry's own words, not the engine's ("cannot reach the Docker engine").
                    EngineError::Unreachable(why) => why,
                    other => other.to_string(),
                }
            ),
            Some("start it, or check the address in settings or --registry".to_owned()),
        ),
    }
}
