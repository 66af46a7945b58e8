//! The one way an image leaves the engine for a registry: by digest, compressed, the same
//! digests every time (DESIGN §12). A variant without platforms and each platform of one with
//! them go through [`Registry::push_image`]; the caller then puts the manifest (one platform)
//! or an index naming them ([`ImageIndex`]) under every tag.
//!
//! What is published, by image store (`store.rs`):
//! - containerd store: the image's manifest and blobs as stored (gzip, as built or pulled):
//!   the manifest digest is the local image ID. A registry that already holds that manifest
//!   (asked by digest, first in the repository, then where layers may be mounted from) makes
//!   the push one request, with no export;
//! - classic store (and a stored compression other than the one asked): an OCI manifest whose
//!   config is the image's config (its digest is the image ID) and whose layers are the
//!   uncompressed tars compressed by the pinned compressor. Each layer's compressed digest is
//!   remembered by diff ID ([`LayerMap`]: the run's pushes, the records of earlier pushes);
//!   when every digest is known and the registry holds (or mounts) every blob, nothing is
//!   exported or compressed.

use std::collections::BTreeMap;

use oci_client::manifest::{self, ImageIndexEntry, OciImageIndex};

use crate::client::DockerClient;
use crate::compress::{Compression, stored_as};
use crate::errors::EngineError;
use crate::oci::{Platform, sha256, short};
use crate::registry::{Found, ImageIndex, Registry};

const INDEX_MEDIA_TYPE: &str = manifest::OCI_IMAGE_INDEX_MEDIA_TYPE;
use crate::export::{Descriptor, Export, StoredManifest};
use crate::store::ImageStore;

/// A layer's compressed form, by its diff ID: what a registry holds for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompressedLayer {
    pub digest: String,
    pub size: u64,
}

/// Diff ID → compressed layer, for one compressor.
pub type LayerMap = BTreeMap<String, CompressedLayer>;

/// An image pushed by digest: what the index names it by, and what it is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The manifest's digest.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: u64,
    pub media_type: String,
    /// The manifest's bytes.
    pub manifest: Vec<u8>,
    pub platform: Platform,
    /// The config's digest: the image ID wherever the image is kept by config (classic store).
    pub config: String,
    /// Each layer's diff ID and compressed form, base first.
    pub layers: Vec<(String, CompressedLayer)>,
    /// The pinned compressor that made layers this push did not find stored compressed; `None`
    /// when every layer went as stored.
    pub compressor: Option<&'static str>,
    /// Blob bytes this push uploaded (0 when the registry held every blob or mounted them).
    pub uploaded_bytes: u64,
}

/// Composed here, above the registry client that puts it.
impl ImageIndex {
    /// The index naming `images`, in this order: the same manifests in the same order give the
    /// same bytes, hence the same digest.
    pub fn of(images: &[PushedImage]) -> Self {
        let manifests = images
            .iter()
            .map(|image| ImageIndexEntry {
                media_type: image.media_type.clone(),
                digest: image.digest.clone(),
                size: image.size as i64,
                platform: Some(manifest::Platform {
                    architecture: image.platform.architecture.as_str().into(),
                    os: image.platform.os.as_str().into(),
                    variant: image.platform.variant.clone(),
                    os_version: None,
                    os_features: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            })
            .collect();
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(INDEX_MEDIA_TYPE.to_owned()),
            manifests,
            artifact_type: None,
            annotations: None,
        };
        let bytes = serde_json::to_vec(&index).expect("an index has no map that could fail to serialize");
        Self { digest: sha256(&bytes), bytes, media_type: INDEX_MEDIA_TYPE.to_owned() }
    }

    /// One image's own manifest, for a variant without platforms (as `docker push` tags one).
    pub fn manifest_of(image: &PushedImage) -> Self {
        Self { digest: image.digest.clone(), bytes: image.manifest.clone(), media_type: image.media_type.clone() }
    }
}

/// What a push of one image needs besides the image.
#[derive(Debug, Clone, Copy)]
pub struct PushOptions<'a> {
    /// Repositories of the same registry whose blobs may be mounted (a parent's, the variant's
    /// other repositories).
    pub mount_from: &'a [String],
    pub compression: Compression,
    /// Compressed digests already published for diff IDs (by this compressor).
    pub known: &'a LayerMap,
}

impl Registry {
    /// Pushes the engine's image `image_id` into `repository` (`trellis/node`, without the host)
    /// by digest and returns what the index and the record need. Nothing is sent that the
    /// registry holds; the engine exports the image only when a blob must be uploaded.
    pub async fn push_image(
        &self,
        docker: &DockerClient,
        image_id: &str,
        repository: &str,
        options: PushOptions<'_>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<PushedImage, EngineError> {
        let layout = docker.image_layout(image_id).await?;
        let platform = layout.platform.clone();
        let stored = docker.store() == ImageStore::Containerd && options.compression == Compression::Gzip;
        if stored && let Some(pushed) = self.already_held(image_id, repository, &layout, options, line).await? {
            return Ok(pushed);
        }
        // The manifest as the classic store's image would be published, when every layer's
        // compressed digest is known and the registry holds or mounts each blob (the image ID
        // is its config's digest there).
        if docker.store() == ImageStore::Classic {
            let mut descriptors = Vec::new();
            for diff_id in &layout.diff_ids {
                let Some(known) = options.known.get(diff_id) else { break };
                descriptors.push(layer_descriptor(options.compression, known));
            }
            if descriptors.len() == layout.diff_ids.len() {
                let config = self.find_size(repository, image_id, options.mount_from, line).await?;
                let mut all_found = config.is_some();
                for descriptor in &descriptors {
                    all_found &=
                        self.find_size(repository, &descriptor.digest, options.mount_from, line).await?.is_some();
                }
                if let (true, Some(config_size)) = (all_found, config) {
                    let config = config_descriptor(image_id, config_size);
                    let manifest = compose_manifest(config, descriptors);
                    let compressor = Some(options.compression.compressor());
                    return self.put_image(repository, manifest, &layout, compressor, 0, line).await;
                }
            }
        }
        line(&format!("exporting {} ({platform}): blobs to upload", short(image_id)));
        let export = Export::of(docker, image_id, &layout.diff_ids, &platform.to_string()).await?;
        let mut uploaded = 0;
        let config = match &export.manifest {
            Some(manifest) => manifest.config.clone(),
            None => config_descriptor(image_id, export.entry(image_id)?.size),
        };
        let (mut descriptors, mut compressor) = (Vec::new(), None);
        uploaded += self.ensure(repository, &config.digest, &export, options.mount_from, line).await?;
        for (index, diff_id) in layout.diff_ids.iter().enumerate() {
            let as_stored = export.manifest.as_ref().and_then(|m| m.layers.get(index)).cloned();
            match as_stored {
                Some(layer) if stored_as(&layer.media_type, options.compression) => {
                    uploaded += self.ensure(repository, &layer.digest, &export, options.mount_from, line).await?;
                    descriptors.push(layer);
                }
                // Uncompressed in the export (the classic store), or stored compressed otherwise
                // than asked: compressed here.
                _ => {
                    let known = options.known.get(diff_id);
                    let held = match known {
                        Some(known) => self.find_size(repository, &known.digest, options.mount_from, line).await?,
                        None => None,
                    };
                    let compressed = match (known, held) {
                        (Some(known), Some(_)) => known.clone(),
                        _ => {
                            let source = match export.manifest.as_ref().and_then(|m| m.layers.get(index)) {
                                Some(stored) if stored.digest != *diff_id => Source::Gzipped(stored.digest.clone()),
                                _ => Source::Tar(diff_id.clone()),
                            };
                            let (layer, sent) =
                                self.compress_and_upload(repository, &export, diff_id, source, options, line).await?;
                            uploaded += sent;
                            layer
                        }
                    };
                    compressor = Some(options.compression.compressor());
                    descriptors.push(layer_descriptor(options.compression, &compressed));
                }
            }
        }
        let manifest = match (&export.manifest, stored) {
            // Every layer as stored: the manifest's very bytes, so its digest is the image ID.
            (Some(manifest), true) if manifest.layers == descriptors => manifest.clone(),
            _ => compose_manifest(config, descriptors),
        };
        self.put_image(repository, manifest, &layout, compressor, uploaded, line).await
    }

    /// On the containerd store the manifest digest is the image ID: when the registry holds that
    /// manifest in `repository`, nothing is sent; when a repository of `mount_from` holds it,
    /// its blobs are mounted and it is put. `None`: it must be exported.
    async fn already_held(
        &self,
        image_id: &str,
        repository: &str,
        layout: &crate::oci::ImageLayout,
        options: PushOptions<'_>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<PushedImage>, EngineError> {
        let sources = std::iter::once(repository).chain(options.mount_from.iter().map(String::as_str));
        for source in sources {
            let Some(bytes) = self.manifest_bytes(source, image_id).await? else { continue };
            let Some(manifest) = StoredManifest::parse(bytes, None) else { continue };
            if source == repository {
                return self.pushed(manifest, layout, None, 0).map(Some);
            }
            let mut all_found = true;
            for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                all_found &= self.find_size(repository, &blob.digest, options.mount_from, line).await?.is_some();
            }
            if all_found {
                return self.put_image(repository, manifest, layout, None, 0, line).await.map(Some);
            }
        }
        Ok(None)
    }

    /// The size of `blob` in `repository`, mounting it from `mount_from` when another holds it.
    async fn find_size(
        &self,
        repository: &str,
        blob: &str,
        mount_from: &[String],
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<u64>, EngineError> {
        let _turn = self.blob_turn(blob).await;
        self.find_size_in_turn(repository, blob, mount_from, line).await
    }

    /// [`Registry::find_size`] for a caller that holds the blob's turn.
    async fn find_size_in_turn(
        &self,
        repository: &str,
        blob: &str,
        mount_from: &[String],
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Option<u64>, EngineError> {
        Ok(match self.find(repository, blob, mount_from).await? {
            Found::Held(size) => Some(size),
            Found::Mounted { size, from } => {
                line(&format!("mounted {} from {from}", short(blob)));
                Some(size)
            }
            Found::Missing => None,
        })
    }

    /// `blob` in `repository`: found, mounted, or uploaded from the export. Bytes uploaded.
    async fn ensure(
        &self,
        repository: &str,
        blob: &str,
        export: &Export,
        mount_from: &[String],
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<u64, EngineError> {
        let _turn = self.blob_turn(blob).await;
        if self.find_size_in_turn(repository, blob, mount_from, line).await?.is_some() {
            return Ok(0);
        }
        let (stream, size) = export.read(blob).await?;
        self.upload_stream(repository, blob, stream, size).await?;
        line(&format!("uploaded {} ({size} bytes)", short(blob)));
        Ok(size)
    }

    /// Compresses the layer `diff_id` of the export into a temporary file with the pinned
    /// compressor, then uploads it unless the registry holds that digest already.
    async fn compress_and_upload(
        &self,
        repository: &str,
        export: &Export,
        diff_id: &str,
        source: Source,
        options: PushOptions<'_>,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(CompressedLayer, u64), EngineError> {
        let failed = |e: std::io::Error| EngineError::Failed(format!("cannot compress {}: {e}", short(diff_id)));
        let input = match &source {
            Source::Tar(blob) | Source::Gzipped(blob) => export.reader(blob)?,
        };
        let compression = options.compression;
        let (file, digest, size) = tokio::task::spawn_blocking(move || {
            let mut file = tempfile::NamedTempFile::new()?;
            let output = std::io::BufWriter::new(file.as_file_mut());
            let (digest, size) = match source {
                Source::Tar(_) => compression.compress(&mut { input }, output)?,
                Source::Gzipped(_) => compression.compress(&mut flate2::read::GzDecoder::new(input), output)?,
            };
            Ok::<_, std::io::Error>((file.into_temp_path(), digest, size))
        })
        .await
        .map_err(|e| EngineError::Failed(e.to_string()))?
        .map_err(failed)?;
        line(&format!("compressed {} to {} ({size} bytes)", short(diff_id), short(&digest)));
        let layer = CompressedLayer { digest, size };
        let _turn = self.blob_turn(&layer.digest).await;
        if self.find_size_in_turn(repository, &layer.digest, options.mount_from, line).await?.is_some() {
            return Ok((layer, 0));
        }
        let reader = tokio::fs::File::open(&file).await.map_err(failed)?;
        let stream = futures_util::TryStreamExt::map_err(
            tokio_util::io::ReaderStream::with_capacity(reader, 1 << 20),
            oci_client::errors::OciDistributionError::IoError,
        );
        self.upload_stream(repository, &layer.digest, stream, size).await?;
        line(&format!("uploaded {} ({size} bytes)", short(&layer.digest)));
        drop(file);
        Ok((layer, size))
    }

    /// Puts `manifest` by its digest and says what was pushed.
    async fn put_image(
        &self,
        repository: &str,
        manifest: StoredManifest,
        layout: &crate::oci::ImageLayout,
        compressor: Option<&'static str>,
        uploaded_bytes: u64,
        line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<PushedImage, EngineError> {
        let pushed = self.pushed(manifest.clone(), layout, compressor, uploaded_bytes)?;
        self.put_manifest_bytes(repository, &pushed.digest, manifest.bytes, &manifest.media_type).await?;
        line(&format!("pushed {} as {repository}@{}", pushed.platform, pushed.digest));
        Ok(pushed)
    }

    fn pushed(
        &self,
        manifest: StoredManifest,
        layout: &crate::oci::ImageLayout,
        compressor: Option<&'static str>,
        uploaded_bytes: u64,
    ) -> Result<PushedImage, EngineError> {
        if manifest.layers.len() != layout.diff_ids.len() {
            return Err(EngineError::Failed(format!(
                "a manifest of {} layers for an image of {}",
                manifest.layers.len(),
                layout.diff_ids.len()
            )));
        }
        let layers = (layout.diff_ids.iter().zip(&manifest.layers))
            .map(|(diff_id, l)| (diff_id.clone(), CompressedLayer { digest: l.digest.clone(), size: l.size }))
            .collect();
        Ok(PushedImage {
            digest: sha256(&manifest.bytes),
            size: manifest.bytes.len() as u64,
            media_type: manifest.media_type,
            manifest: manifest.bytes,
            platform: layout.platform.clone(),
            config: manifest.config.digest,
            layers,
            compressor,
            uploaded_bytes,
        })
    }
}

/// Where a layer's uncompressed tar comes from: the export's tar itself, or a gzip blob of it.
enum Source {
    Tar(String),
    Gzipped(String),
}

/// A layer compressed as `compression` asks, as a manifest names it.
fn layer_descriptor(compression: Compression, layer: &CompressedLayer) -> Descriptor {
    Descriptor {
        media_type: compression.layer_media_type().to_owned(),
        digest: layer.digest.clone(),
        size: layer.size,
        platform: None,
        annotations: None,
    }
}

fn config_descriptor(image_id: &str, size: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.config.v1+json".to_owned(),
        digest: image_id.to_owned(),
        size,
        platform: None,
        annotations: None,
    }
}

/// The OCI media type of what a Docker schema 2 descriptor names (the same bytes, the same
/// digest): an OCI manifest naming a Docker config is an artifact to skopeo and to registries
/// that check, not an image. Anything else is kept.
fn oci_media_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.container.image.v1+json" => "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        other => other,
    }
    .to_owned()
}

/// An OCI image manifest of `config` and `layers` (Docker media types given their OCI names):
/// the same descriptors give the same bytes.
fn compose_manifest(mut config: Descriptor, mut layers: Vec<Descriptor>) -> StoredManifest {
    config.media_type = oci_media_type(&config.media_type);
    for layer in &mut layers {
        layer.media_type = oci_media_type(&layer.media_type);
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        schema_version: u32,
        media_type: &'a str,
        config: &'a Descriptor,
        layers: &'a [Descriptor],
    }
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let bytes = serde_json::to_vec(&Manifest { schema_version: 2, media_type, config: &config, layers: &layers })
        .expect("a manifest has no map that could fail to serialize");
    StoredManifest { bytes, media_type: media_type.to_owned(), config, layers }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pushed(digest: &str, architecture: &str, variant: Option<&str>) -> PushedImage {
        PushedImage {
            digest: digest.to_owned(),
            size: 123,
            media_type: manifest::OCI_IMAGE_MEDIA_TYPE.to_owned(),
            platform: Platform {
                os: "linux".to_owned(),
                architecture: architecture.to_owned(),
                variant: variant.map(str::to_owned),
            },
            manifest: Vec::new(),
            config: "sha256:cfg".to_owned(),
            layers: Vec::new(),
            compressor: None,
            uploaded_bytes: 0,
        }
    }

    #[test]
    fn an_index_is_the_same_bytes_for_the_same_manifests() {
        let images = [pushed("sha256:aa", "amd64", None), pushed("sha256:bb", "arm64", Some("v8"))];
        let index = ImageIndex::of(&images);
        assert_eq!(
            String::from_utf8(index.bytes.clone()).unwrap(),
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":123,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":123,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#
        );
        assert_eq!(index.digest, sha256(&index.bytes));
        assert_eq!(index, ImageIndex::of(&images.clone()));
        assert_ne!(index.digest, ImageIndex::of(&[images[1].clone(), images[0].clone()]).digest, "order matters");
    }

    #[test]
    fn platforms_read_as_docker_writes_them() {
        assert_eq!(pushed("d", "amd64", None).platform.to_string(), "linux/amd64");
        assert_eq!(pushed("d", "arm", Some("v7")).platform.to_string(), "linux/arm/v7");
    }

    #[test]
    fn a_manifest_names_the_config_and_the_compressed_layers() {
        let layer = |digest: &str, size| Descriptor {
            media_type: Compression::Gzip.layer_media_type().to_owned(),
            digest: digest.to_owned(),
            size,
            platform: None,
            annotations: None,
        };
        let manifest = compose_manifest(
            config_descriptor("sha256:cfg", 7),
            vec![layer("sha256:l1", 1024), layer("sha256:l2", 2048)],
        );
        assert_eq!(
            String::from_utf8(manifest.bytes).unwrap(),
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:cfg","size":7},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l1","size":1024},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l2","size":2048}]}"#
        );
    }

    #[test]
    fn a_composed_manifest_names_docker_descriptors_by_their_oci_types() {
        // The containerd store keeps Docker schema 2 manifests: recompressed (zstd), the
        // config and the layers kept as stored must not stay Docker types in an OCI manifest.
        let docker = |media_type: &str, digest: &str| Descriptor {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size: 1,
            platform: None,
            annotations: None,
        };
        let manifest = compose_manifest(
            docker("application/vnd.docker.container.image.v1+json", "sha256:cfg"),
            vec![
                docker("application/vnd.docker.image.rootfs.diff.tar.gzip", "sha256:l1"),
                docker(Compression::Zstd.layer_media_type(), "sha256:l2"),
            ],
        );
        let types: Vec<&str> = manifest.layers.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(manifest.config.media_type, "application/vnd.oci.image.config.v1+json");
        assert_eq!(
            types,
            ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar+zstd"]
        );
        assert!(!String::from_utf8(manifest.bytes).unwrap().contains("vnd.docker"));
    }
}
