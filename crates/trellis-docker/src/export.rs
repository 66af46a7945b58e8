//! How an image's bytes leave the engine (`store.rs` says what differs between the stores).
//!
//! The export (`GET /images/{id}/get`) goes into a temporary file, whole (a `docker save` tar
//! writes its index last); [`Export`] then knows where each blob lies in it. Since Docker 25
//! the export is an OCI layout (`index.json`, `blobs/sha256/…`) with a `manifest.json` beside
//! it; Docker 20.10's has `manifest.json` alone, naming each layer's uncompressed tar.

use std::collections::HashMap;
use std::io::{Read as _, SeekFrom};
use std::path::Path;

use futures_util::TryStreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use crate::client::DockerClient;
use crate::errors::EngineError;

/// A descriptor as manifests write them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Value>,
}

/// An image manifest, kept as the bytes it was read from (its digest is theirs).
#[derive(Debug, Clone)]
pub(crate) struct StoredManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl StoredManifest {
    /// Parses a manifest's bytes (`None`: not an image manifest).
    pub(crate) fn parse(bytes: Vec<u8>, descriptor_media_type: Option<&str>) -> Option<Self> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Manifest {
            media_type: Option<String>,
            config: Option<Descriptor>,
            layers: Option<Vec<Descriptor>>,
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).ok()?;
        let media_type = (manifest.media_type.as_deref())
            .or(descriptor_media_type)
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned();
        Some(Self { media_type, config: manifest.config?, layers: manifest.layers?, bytes })
    }
}

/// The engine's export of one image in a temporary file (removed on drop), and where each
/// blob lies in it.
pub(crate) struct Export {
    path: tempfile::TempPath,
    blobs: HashMap<String, Entry>,
    /// The image's manifest as the engine keeps it (OCI-layout exports).
    pub manifest: Option<StoredManifest>,
}

/// A file's bytes inside the export tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    offset: u64,
    pub size: u64,
}

impl Export {
    /// Exports `image_id` (of `platform`, whose layers have `diff_ids`) from the engine.
    pub(crate) async fn of(
        docker: &DockerClient,
        image_id: &str,
        diff_ids: &[String],
        platform: &str,
    ) -> Result<Self, EngineError> {
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot keep the export of {image_id}: {e}"));
        let (file, path) = tempfile::NamedTempFile::new().map_err(failed)?.into_parts();
        docker.export_image(image_id, &mut tokio::fs::File::from_std(file)).await?;
        let (config, diff_ids, platform) = (image_id.to_owned(), diff_ids.to_vec(), platform.to_owned());
        let tar = path.to_path_buf();
        let (blobs, manifest) = tokio::task::spawn_blocking(move || locate_blobs(&tar, &config, &diff_ids, &platform))
            .await
            .map_err(|e| EngineError::Failed(e.to_string()))?
            .map_err(|e| EngineError::Failed(format!("the export of {image_id}: {e}")))?;
        Ok(Self { path, blobs, manifest })
    }

    /// Where `blob` (a digest) lies in the export.
    pub(crate) fn entry(&self, blob: &str) -> Result<Entry, EngineError> {
        self.blobs.get(blob).copied().ok_or_else(|| EngineError::Failed(format!("the engine's export has no {blob}")))
    }

    /// A blob's bytes as a stream, and its size.
    pub(crate) async fn read(
        &self,
        blob: &str,
    ) -> Result<(impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + use<>, u64), EngineError>
    {
        let entry = self.entry(blob)?;
        let file = self.open_at(entry).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(entry.size), 1 << 20);
        Ok((stream.map_err(oci_client::errors::OciDistributionError::IoError), entry.size))
    }

    /// A blob's bytes, read synchronously (for the compressor, on a blocking thread).
    pub(crate) fn reader(&self, blob: &str) -> Result<impl std::io::Read + Send + use<>, EngineError> {
        use std::io::Seek as _;
        let entry = self.entry(blob)?;
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot read the export: {e}"));
        let mut file = std::fs::File::open(&self.path).map_err(failed)?;
        file.seek(SeekFrom::Start(entry.offset)).map_err(failed)?;
        Ok(std::io::BufReader::with_capacity(1 << 20, file.take(entry.size)))
    }

    async fn open_at(&self, entry: Entry) -> Result<tokio::fs::File, EngineError> {
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot read the export: {e}"));
        let mut file = tokio::fs::File::open(&self.path).await.map_err(failed)?;
        file.seek(SeekFrom::Start(entry.offset)).await.map_err(failed)?;
        Ok(file)
    }
}

/// Where the config and each layer lie in an export, by digest, and the image's manifest when
/// the export is an OCI layout. A `manifest.json` names the entries of the config and of each
/// layer, in the order of the image's diff IDs (Docker 20.10 writes nothing else; a layer
/// that repeats is saved once, its repeats as symbolic links to it: the first is kept). An OCI
/// layout's `index.json` names the image's manifest (or an index of them, whose entry for
/// `platform` is taken), and each blob is `blobs/sha256/<hex>`.
fn locate_blobs(
    tar: &Path,
    config: &str,
    diff_ids: &[String],
    platform: &str,
) -> Result<(HashMap<String, Entry>, Option<StoredManifest>), String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Saved {
        config: String,
        layers: Vec<String>,
    }
    let mut archive = tar::Archive::new(std::fs::File::open(tar).map_err(|e| e.to_string())?);
    let mut files = HashMap::new();
    let (mut saved, mut index) = (None, None);
    for entry in archive.entries_with_seek().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let mut json = || {
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map(|_| json).map_err(|e| e.to_string())
        };
        match name.as_str() {
            "manifest.json" => saved = Some(json()?),
            "index.json" => index = Some(json()?),
            _ if entry.header().entry_type().is_file() => {
                files.insert(name, Entry { offset: entry.raw_file_position(), size: entry.size() });
            }
            _ => {}
        }
    }
    let mut blobs: HashMap<String, Entry> = files
        .iter()
        .filter_map(|(name, entry)| Some((format!("sha256:{}", name.strip_prefix("blobs/sha256/")?), *entry)))
        .collect();
    if let Some(saved) = saved {
        let saved: Vec<Saved> = serde_json::from_slice(&saved).map_err(|e| e.to_string())?;
        let [saved] = saved.as_slice() else { return Err(format!("{} images, not one", saved.len())) };
        if saved.layers.len() != diff_ids.len() {
            return Err(format!("{} layers, the image has {}", saved.layers.len(), diff_ids.len()));
        }
        if let Some(entry) = files.get(&saved.config) {
            blobs.entry(config.to_owned()).or_insert(*entry);
        }
        for (diff_id, path) in diff_ids.iter().zip(&saved.layers) {
            if let Some(entry) = files.get(path) {
                blobs.entry(diff_id.clone()).or_insert(*entry);
            }
        }
    }
    let manifest = match index {
        Some(index) => Some(stored_manifest(&index, tar, &blobs, platform)?),
        None => None,
    };
    Ok((blobs, manifest))
}

/// The manifest an OCI layout's index names (through a nested index, its `platform` entry).
fn stored_manifest(
    index: &[u8],
    tar: &Path,
    blobs: &HashMap<String, Entry>,
    platform: &str,
) -> Result<StoredManifest, String> {
    use std::io::Seek as _;
    let read = |digest: &str| -> Result<Vec<u8>, String> {
        let entry = blobs.get(digest).ok_or_else(|| format!("no blob {digest}"))?;
        let mut file = std::fs::File::open(tar).map_err(|e| e.to_string())?;
        file.seek(SeekFrom::Start(entry.offset)).map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(entry.size as usize);
        file.take(entry.size).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    };
    #[derive(serde::Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let mut descriptor = {
        let index: Index = serde_json::from_slice(index).map_err(|e| format!("index.json: {e}"))?;
        index.manifests.into_iter().next().ok_or("index.json names no image")?
    };
    loop {
        let bytes = read(&descriptor.digest)?;
        if let Some(manifest) = StoredManifest::parse(bytes.clone(), Some(&descriptor.media_type)) {
            return Ok(manifest);
        }
        let nested: Index = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", descriptor.digest))?;
        descriptor = nested
            .manifests
            .into_iter()
            .find(|entry| {
                let p = entry.platform.as_ref();
                let field = |name: &str| p.and_then(|p| p[name].as_str()).unwrap_or_default().to_owned();
                let mut recorded = format!("{}/{}", field("os"), field("architecture"));
                if !field("variant").is_empty() {
                    recorded = format!("{recorded}/{}", field("variant"));
                }
                trellis_model::platform::matches(&recorded, platform)
            })
            .ok_or_else(|| format!("the exported index has no {platform} image"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("export.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            builder.append_data(&mut header, name, *data).unwrap();
        }
        for (name, target) in links {
            let mut link = tar::Header::new_gnu();
            link.set_entry_type(tar::EntryType::Symlink);
            link.set_size(0);
            builder.append_link(&mut link, name, target).unwrap();
        }
        builder.into_inner().unwrap();
        (dir, tar_path)
    }

    fn read(tar: &Path, entry: Entry) -> Vec<u8> {
        let bytes = std::fs::read(tar).unwrap();
        bytes[entry.offset as usize..(entry.offset + entry.size) as usize].to_vec()
    }

    #[test]
    fn a_docker_save_export_is_located_through_its_manifest() {
        let manifest = r#"[{"Config":"cfg.json","RepoTags":null,"Layers":["a/layer.tar","b/layer.tar"]}]"#;
        let files: &[(&str, &[u8])] =
            &[("a/layer.tar", b"first layer"), ("cfg.json", b"{}"), ("manifest.json", manifest.as_bytes())];
        let (_dir, tar) = tar_with(files, &[("b/layer.tar", "../a/layer.tar")]);
        let diff_ids = ["sha256:same".to_owned(), "sha256:same".to_owned()];
        let (blobs, stored) = locate_blobs(&tar, "sha256:cfg", &diff_ids, "linux/amd64").unwrap();
        assert_eq!(read(&tar, blobs["sha256:same"]), b"first layer");
        assert_eq!(read(&tar, blobs["sha256:cfg"]), b"{}");
        assert_eq!(blobs.len(), 2);
        assert!(stored.is_none());
        let wrong = locate_blobs(&tar, "sha256:cfg", &diff_ids[..1], "linux/amd64").unwrap_err();
        assert!(wrong.contains("2 layers"), "{wrong}");
    }

    #[test]
    fn an_oci_layout_export_gives_its_stored_manifest() {
        let manifest = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:11","size":4}]}"#;
        let arm = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cc","size":2},"layers":[]}"#;
        let nested = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a2","size":10,"platform":{"os":"linux","architecture":"arm64"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a1","size":10,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let top = r#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:ii","size":3}]}"#;
        let files: &[(&str, &[u8])] = &[
            ("blobs/sha256/a1", manifest.as_bytes()),
            ("blobs/sha256/a2", arm.as_bytes()),
            ("blobs/sha256/ii", nested.as_bytes()),
            ("blobs/sha256/cc", b"{}"),
            ("blobs/sha256/11", b"gzip"),
            ("index.json", top.as_bytes()),
        ];
        let (_dir, tar) = tar_with(files, &[]);
        let (blobs, stored) = locate_blobs(&tar, "sha256:image", &["sha256:d1".to_owned()], "linux/amd64").unwrap();
        let stored = stored.unwrap();
        assert_eq!(stored.bytes, manifest.as_bytes());
        assert_eq!(stored.config.digest, "sha256:cc");
        assert_eq!(stored.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(read(&tar, blobs["sha256:11"]), b"gzip");
        let missing = locate_blobs(&tar, "sha256:image", &[], "linux/s390x").unwrap_err();
        assert!(missing.contains("no linux/s390x image"), "{missing}");
    }
}
