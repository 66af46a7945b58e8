//! `trellis clean`: remove the workspace's images no current variant produces.

use std::collections::HashSet;

use crate::attach::{images_by_key, repository_of, self_made, unreachable};
use crate::error::Error;
use crate::facade::Workspace;

/// What `trellis clean` did.
#[derive(Debug, Default)]
pub struct CleanReport {
    /// (image ID, variant, whether it was a test image).
    pub removed: Vec<(String, String, bool)>,
    /// Images kept because a current variant names them.
    pub kept: usize,
    /// (image ID, variant, why the engine refused).
    pub refused: Vec<(String, String, String)>,
    /// Temporary tags a killed BuildKit test left (`trellis.invalid/under-test:…`), taken off
    /// their images (the images stay).
    pub untagged: Vec<String>,
}

impl Workspace {
    /// Removes the workspace's images that no current variant produces: images under keys no
    /// variant has any more, images a `--refresh` superseded under a current key, and test
    /// images a crash left behind. Never the image a current build key names, one a current
    /// reference points at, or one of a variant whose key cannot be known yet (an external
    /// base missing from the engine). Pulls nothing.
    pub async fn clean(&mut self) -> Result<CleanReport, Error> {
        // Not while a run uses the images (a test or a build may stand on a temporary tag).
        let _lock = crate::state::StateLock::acquire(&self.state_dir())?;
        // Keyed as a build would key it (bases, builder), pulling nothing.
        let backend = self.attach(crate::Attach::default(), &mut crate::Quiet).await?;
        let client = backend.client().ok_or_else(|| Error::NoEngine("attached without an engine".to_owned()))?.clone();
        let workspace = &*self;
        let mut report = CleanReport::default();
        for image in client.workspace_images(&workspace.model().settings.name).await.map_err(unreachable)? {
            let temporary = |tag: &&String| {
                [trellis_docker::TEST_BASE_REPOSITORY, trellis_docker::STAND_IN_REPOSITORY]
                    .iter()
                    .any(|repository| tag.strip_prefix(repository).is_some_and(|rest| rest.starts_with(':')))
            };
            for tag in image.repo_tags.iter().filter(temporary) {
                client.untag(tag).await;
                report.untagged.push(tag.clone());
            }
        }
        let model = workspace.model();
        let graph = workspace.graph()?;
        let references: HashSet<String> =
            model.variants.iter().flat_map(|v| v.references.iter().map(ToString::to_string)).collect();
        let repositories: HashSet<&str> = model.variants.iter().map(|v| v.repository.as_str()).collect();
        let unknown: HashSet<&str> =
            workspace.first_unresolved_base().keys().map(|v| model.variants[*v].id.as_str()).collect();
        let store = crate::state::StateStore::read(&workspace.state_dir()).ok();
        // An image others were built on is listed only once they are gone (the engine hides
        // untagged parents): list again after each pass that removed something.
        loop {
            let images = client.workspace_images(&model.settings.name).await.map_err(unreachable)?;
            let chosen = images_by_key(&client, images.clone(), workspace, store.as_ref()).await?;
            let current: HashSet<&str> = (graph.variants.iter().flat_map(|v| v.builds()))
                .filter_map(|build| chosen.get(&graph.dag[build].key.to_hex()))
                .map(|image| image.id.as_str())
                .collect();
            let (mut kept, mut removed) = (0, 0);
            for image in &images {
                let label = |name: &str| image.labels.get(name).cloned().unwrap_or_default();
                let is_test = image.labels.contains_key(trellis_docker::labels::TEST);
                let variant = label(trellis_docker::labels::VARIANT);
                let named = current.contains(image.id.as_str())
                    || image.repo_tags.iter().any(|t| references.contains(t))
                    || unknown.contains(variant.as_str());
                if named && !is_test {
                    kept += 1;
                    continue;
                }
                if report.refused.iter().any(|(id, _, _)| *id == image.id) || !self_made(&client, image).await? {
                    continue;
                }
                // Tagged into a repository this workspace does not produce: someone else's (a
                // checkout with the same workspace name), kept.
                let ours = |repository: &str| {
                    repositories.contains(repository)
                        || repositories
                            .iter()
                            .any(|r| repository.strip_suffix(r).is_some_and(|host| host.ends_with('/')))
                };
                if image.repo_tags.iter().filter(|t| *t != "<none>:<none>").any(|t| !ours(repository_of(t))) {
                    continue;
                }
                match client.remove_image(&image.id, true).await {
                    Ok(()) => {
                        removed += 1;
                        report.removed.push((image.id.clone(), variant, is_test));
                    }
                    Err(e) => report.refused.push((image.id.clone(), variant, e.to_string())),
                }
            }
            report.kept = kept;
            if removed == 0 {
                break;
            }
            // What was refused for its children may go now.
            report.refused.clear();
        }
        Ok(report)
    }
}
