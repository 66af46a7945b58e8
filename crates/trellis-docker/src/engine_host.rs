//! Which engine: chosen as the docker CLI chooses it (docker/cli `cli/command/cli.go`,
//! `resolveContextName`, and its context store `cli/context/store/`), so that `trellis build`
//! and `docker images` always talk to the same daemon.
//!
//! 1. `DOCKER_HOST` when it is set (even empty: then the local socket), whatever the contexts say;
//! 2. else the context `DOCKER_CONTEXT` names;
//! 3. else the `currentContext` of `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`);
//! 4. else, and for the context `default`, the local socket `unix:///var/run/docker.sock`.
//!
//! A named context's address is `Endpoints.docker.Host` in
//! `<config dir>/contexts/meta/<sha256 hex of its name>/meta.json`; its TLS material, when it has
//! any, is under `<config dir>/contexts/tls/<same hex>/docker/`. TLS to the engine is refused with
//! a message saying so (nothing here speaks it), rather than sent in plain text.
//! This module only reads files and the environment: [`crate::endpoint`] opens connections.

use std::path::{Path, PathBuf};

/// The engine's address when nothing else names one (the docker CLI's default on Linux).
pub const LOCAL_SOCKET: &str = "unix:///var/run/docker.sock";

/// The address of the engine to use and what chose it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineHost {
    /// `unix://…`, `tcp://…`, `ssh://…`: as `DOCKER_HOST` or a context's endpoint spells it.
    pub address: String,
    pub chosen_by: ChosenBy,
}

/// What chose the engine, for messages ("… (DOCKER_CONTEXT=remote)").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChosenBy {
    DockerHost,
    /// `DOCKER_CONTEXT` named this context.
    DockerContext(String),
    /// The docker config at this path has this `currentContext`.
    CurrentContext {
        name: String,
        config: PathBuf,
    },
    /// Nothing: the local socket.
    Default,
}

impl std::fmt::Display for ChosenBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DockerHost => f.write_str("DOCKER_HOST"),
            Self::DockerContext(name) => write!(f, "DOCKER_CONTEXT={name}"),
            Self::CurrentContext { name, config } => {
                write!(f, "context {name}, the currentContext of {}", config.display())
            }
            Self::Default => f.write_str("the default socket"),
        }
    }
}

/// What the choice reads from the environment; a value of its own so that tests need not
/// change the process's environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Environment {
    pub docker_host: Option<String>,
    pub docker_context: Option<String>,
    /// `DOCKER_CONFIG`, else `$HOME/.docker`.
    pub config_dir: PathBuf,
    /// `DOCKER_TLS_VERIFY` or `DOCKER_TLS` is set to something: the CLI then speaks TLS to a
    /// `tcp://` `DOCKER_HOST`.
    pub tls: bool,
}

impl Environment {
    pub(crate) fn of_process() -> Self {
        let set = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let config_dir = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()).map_or_else(
            || std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".docker"),
            PathBuf::from,
        );
        Self {
            // Set, even to nothing, it wins over the contexts (the CLI's `os.LookupEnv`).
            docker_host: std::env::var("DOCKER_HOST").ok(),
            docker_context: set("DOCKER_CONTEXT"),
            config_dir,
            tls: set("DOCKER_TLS_VERIFY").is_some() || set("DOCKER_TLS").is_some(),
        }
    }
}

impl EngineHost {
    /// The engine the docker CLI would use in this process's environment. The error is a
    /// sentence naming what is wrong: a context that does not exist, a config that cannot be
    /// read, TLS.
    pub fn from_environment() -> Result<Self, String> {
        Self::choose(&Environment::of_process())
    }

    /// Whether the engine shares this machine's kernel (a `unix://` socket): only then can
    /// what the kernel offers here (its binfmt handlers) be read for it.
    pub fn is_local(&self) -> bool {
        self.address.starts_with("unix://")
    }

    pub(crate) fn choose(env: &Environment) -> Result<Self, String> {
        if let Some(host) = &env.docker_host {
            let address = if host.is_empty() { LOCAL_SOCKET.to_owned() } else { host.clone() };
            if env.tls && is_tcp(&address) {
                return Err(format!(
                    "DOCKER_HOST={address} with DOCKER_TLS_VERIFY (or DOCKER_TLS) asks for TLS, which trellis does not \
                     speak to the engine: reach it over ssh:// or a unix:// socket, or unset DOCKER_TLS_VERIFY for \
                     a plain tcp:// port"
                ));
            }
            return Ok(Self { address, chosen_by: ChosenBy::DockerHost });
        }
        let config = env.config_dir.join("config.json");
        let chosen_by = match &env.docker_context {
            Some(name) => ChosenBy::DockerContext(name.clone()),
            None => match current_context(&config)? {
                Some(name) => ChosenBy::CurrentContext { name, config },
                None => ChosenBy::Default,
            },
        };
        let name = match &chosen_by {
            ChosenBy::DockerContext(name) | ChosenBy::CurrentContext { name, .. } if name != "default" => name,
            _ => return Ok(Self { address: LOCAL_SOCKET.to_owned(), chosen_by }),
        };
        let address = context_address(&env.config_dir, name, &chosen_by)?;
        Ok(Self { address, chosen_by })
    }
}

fn is_tcp(address: &str) -> bool {
    address.starts_with("tcp://") || address.starts_with("http://")
}

/// The `currentContext` of the docker config; `None` when there is no config or it names
/// none. A config that cannot be read is an error: guessing would build on another engine.
fn current_context(config: &Path) -> Result<Option<String>, String> {
    let text = match std::fs::read_to_string(config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the docker config {}: {e}", config.display())),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("the docker config {} is not valid JSON: {e}", config.display()))?;
    Ok(field(&json, "currentContext").and_then(|v| v.as_str()).filter(|name| !name.is_empty()).map(str::to_owned))
}

/// The directory name of a context in the store: the hex sha256 of its name.
pub(crate) fn context_dir(name: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `Endpoints.docker.Host` of the context `name`.
fn context_address(config_dir: &Path, name: &str, chosen_by: &ChosenBy) -> Result<String, String> {
    let dir = context_dir(name);
    let meta = config_dir.join("contexts/meta").join(&dir).join("meta.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(match chosen_by {
                // The docker CLI's own words for this case.
                ChosenBy::CurrentContext { config, .. } => format!(
                    "current context \"{name}\" is not found on the file system ({} does not exist), please check \
                     your config file at {}",
                    meta.display(),
                    config.display()
                ),
                _ => format!("context \"{name}\" ({chosen_by}) does not exist: there is no {}", meta.display()),
            });
        }
        Err(e) => return Err(format!("cannot read context \"{name}\": {}: {e}", meta.display())),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("context \"{name}\": {} is not valid JSON: {e}", meta.display()))?;
    let endpoint = field(&json, "Endpoints")
        .and_then(|e| field(e, "docker"))
        .ok_or_else(|| format!("context \"{name}\" has no docker endpoint ({})", meta.display()))?;
    let address = match field(endpoint, "Host").and_then(|h| h.as_str()) {
        Some(host) if !host.is_empty() => host.to_owned(),
        // The docker client's default when the endpoint names no host.
        _ => LOCAL_SOCKET.to_owned(),
    };
    let skip_verify = field(endpoint, "SkipTLSVerify").and_then(|v| v.as_bool()).unwrap_or(false);
    let tls = config_dir.join("contexts/tls").join(&dir).join("docker");
    if is_tcp(&address) && (skip_verify || has_tls_material(&tls)) {
        return Err(format!(
            "context \"{name}\" reaches {address} over TLS (its certificates are in {}), which trellis does not speak \
             to the engine: use a context whose endpoint is ssh:// or unix://",
            tls.display()
        ));
    }
    Ok(address)
}

/// Whether the context's TLS directory holds a file the docker CLI would use (it skips hidden
/// files).
fn has_tls_material(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_file()) && !e.file_name().to_string_lossy().starts_with('.'))
    })
}

/// A field of a JSON object by name, ignoring case as Go's `encoding/json` does when the CLI
/// reads these files (it writes `Endpoints`, `Host`; hand-written files vary).
fn field<'a>(object: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    let object = object.as_object()?;
    object.get(name).or_else(|| object.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path) -> Environment {
        Environment { config_dir: dir.to_path_buf(), ..Default::default() }
    }

    fn write_context(dir: &Path, name: &str, meta: &str) {
        let path = dir.join("contexts/meta").join(context_dir(name));
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("meta.json"), meta).unwrap();
    }

    fn context(name: &str, host: &str) -> String {
        format!(
            r#"{{"Name":"{name}","Metadata":{{}},"Endpoints":{{"docker":{{"Host":"{host}","SkipTLSVerify":false}}}}}}"#
        )
    }

    #[test]
    fn the_store_names_a_context_by_the_sha256_of_its_name() {
        // `docker context create remote` writes contexts/meta/<this>/meta.json (`printf remote | sha256sum`).
        assert_eq!(context_dir("remote"), "b71199ebd070b36beab7317920c2c2f1d777df8d05e5527d8458fda57cb17a7a");
    }

    #[test]
    fn nothing_set_is_the_local_socket() {
        let dir = tempfile::tempdir().unwrap();
        let host = EngineHost::choose(&env(dir.path())).unwrap();
        assert_eq!(host, EngineHost { address: LOCAL_SOCKET.to_owned(), chosen_by: ChosenBy::Default });
    }

    #[test]
    fn docker_host_wins_over_every_context() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"currentContext": "missing"}"#).unwrap();
        let mut env = env(dir.path());
        env.docker_context = Some("also-missing".to_owned());
        env.docker_host = Some("tcp://127.0.0.1:2375".to_owned());
        assert_eq!(EngineHost::choose(&env).unwrap().address, "tcp://127.0.0.1:2375");
        env.docker_host = Some(String::new());
        let host = EngineHost::choose(&env).unwrap();
        assert_eq!((host.address.as_str(), host.chosen_by), (LOCAL_SOCKET, ChosenBy::DockerHost));
    }

    #[test]
    fn the_current_context_and_docker_context_name_a_context_of_the_store() {
        let dir = tempfile::tempdir().unwrap();
        write_context(dir.path(), "second", &context("second", "unix:///run/second.sock"));
        write_context(dir.path(), "third", &context("third", "ssh://me@127.0.0.1:2222"));
        std::fs::write(dir.path().join("config.json"), r#"{"auths": {}, "currentContext": "second"}"#).unwrap();
        let mut env = env(dir.path());
        let host = EngineHost::choose(&env).unwrap();
        assert_eq!(host.address, "unix:///run/second.sock");
        assert_eq!(
            host.chosen_by,
            ChosenBy::CurrentContext { name: "second".to_owned(), config: dir.path().join("config.json") }
        );
        env.docker_context = Some("third".to_owned());
        assert_eq!(EngineHost::choose(&env).unwrap().address, "ssh://me@127.0.0.1:2222");
        env.docker_context = Some("default".to_owned());
        assert_eq!(EngineHost::choose(&env).unwrap().address, LOCAL_SOCKET);
    }

    #[test]
    fn a_context_that_does_not_exist_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"currentContext": "gone"}"#).unwrap();
        let mut env = env(dir.path());
        let error = EngineHost::choose(&env).unwrap_err();
        assert!(error.starts_with("current context \"gone\" is not found on the file system"), "{error}");
        assert!(error.contains("config.json"), "{error}");
        env.docker_context = Some("nope".to_owned());
        let error = EngineHost::choose(&env).unwrap_err();
        assert!(error.starts_with("context \"nope\" (DOCKER_CONTEXT=nope) does not exist"), "{error}");
    }

    #[test]
    fn keys_are_read_as_go_reads_them_and_a_missing_host_is_the_local_socket() {
        let dir = tempfile::tempdir().unwrap();
        write_context(dir.path(), "lower", r#"{"name":"lower","endpoints":{"docker":{"host":"tcp://127.0.0.1:1"}}}"#);
        write_context(dir.path(), "hostless", r#"{"Name":"hostless","Endpoints":{"docker":{}}}"#);
        write_context(dir.path(), "kube", r#"{"Name":"kube","Endpoints":{"kubernetes":{}}}"#);
        let mut env = env(dir.path());
        env.docker_context = Some("lower".to_owned());
        assert_eq!(EngineHost::choose(&env).unwrap().address, "tcp://127.0.0.1:1");
        env.docker_context = Some("hostless".to_owned());
        assert_eq!(EngineHost::choose(&env).unwrap().address, LOCAL_SOCKET);
        env.docker_context = Some("kube".to_owned());
        assert!(EngineHost::choose(&env).unwrap_err().contains("has no docker endpoint"));
    }

    #[test]
    fn tls_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write_context(dir.path(), "secure", &context("secure", "tcp://127.0.0.1:2376"));
        let tls = dir.path().join("contexts/tls").join(context_dir("secure")).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), "").unwrap();
        let mut env = env(dir.path());
        env.docker_context = Some("secure".to_owned());
        let error = EngineHost::choose(&env).unwrap_err();
        assert!(error.contains("context \"secure\" reaches tcp://127.0.0.1:2376 over TLS"), "{error}");
        env.docker_host = Some("tcp://127.0.0.1:2376".to_owned());
        env.tls = true;
        assert!(EngineHost::choose(&env).unwrap_err().contains("DOCKER_TLS_VERIFY"));
        env.docker_host = Some("unix:///run/docker.sock".to_owned());
        assert!(EngineHost::choose(&env).is_ok(), "TLS settings do not concern a socket");
    }

    #[test]
    fn a_config_that_cannot_be_read_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(EngineHost::choose(&env(dir.path())).unwrap_err().contains("is not valid JSON"));
    }
}
