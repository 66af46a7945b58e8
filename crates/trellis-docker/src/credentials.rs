//! Registry credentials from the docker config (`DOCKER_CONFIG` or `~/.docker`), as the docker
//! CLI keeps them: what the engine's pulls and trellis's registry client both send.

pub use bollard::auth::DockerCredentials;

/// Credentials for `registry` from the docker config (`DOCKER_CONFIG` or `~/.docker`): auths
/// entries and credential helpers. `None` when there are none (anonymous access).
pub fn credentials_for(registry: &str) -> Option<DockerCredentials> {
    match docker_credential::get_credential(registry).ok()? {
        docker_credential::DockerCredential::UsernamePassword(username, password) => Some(DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry.to_owned()),
            ..Default::default()
        }),
        docker_credential::DockerCredential::IdentityToken(token) => Some(DockerCredentials {
            identitytoken: Some(token),
            serveraddress: Some(registry.to_owned()),
            ..Default::default()
        }),
    }
}

/// Credentials for pulling `reference`, from the docker config entry of its registry (Docker
/// Hub's entry is keyed by its historical index URL).
pub fn credentials_for_image(reference: &str) -> Option<DockerCredentials> {
    match trellis_model::registry_of(reference)?.as_str() {
        "docker.io" => credentials_for("https://index.docker.io/v1/"),
        registry => credentials_for(registry),
    }
}
