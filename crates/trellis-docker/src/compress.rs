//! Layers compressed on their way to the registry, where the engine does not store them
//! compressed as asked (the classic image store keeps uncompressed tars; DESIGN §12).
//!
//! The same image must always publish the same digests, so the compressors are pinned: gzip
//! by flate2 with its pure-Rust backend (miniz_oxide) at a fixed level, its header without a
//! time or a file name; zstd by the reference library (the `zstd` crate's bundled libzstd) at a
//! fixed level, one thread. Its name ([`Compression::compressor`]) goes into each record beside what was
//! published, with each layer's diff ID → compressed digest: another runner, a later alias or
//! another registry reuses those digests (the blobs are mounted or found, never compressed
//! again), and a compressor that is not the one named is never trusted to reproduce them.

use std::io::{self, Read, Write};

use sha2::Digest as _;

/// How layers travel to the registry (`settings { compression … }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// What `docker push` sends, and what every client pulls.
    #[default]
    Gzip,
    /// Smaller and faster to unpack; pulled by containerd 1.5+ and Docker 23+.
    Zstd,
}

/// flate2's level: 6, zlib's and Go's default (what `docker push` uses).
const GZIP_LEVEL: u32 = 6;
/// zstd's own default level.
const ZSTD_LEVEL: i32 = 3;

impl From<trellis_model::CompressionChoice> for Compression {
    /// The compressor of the workspace's `compression` setting.
    fn from(choice: trellis_model::CompressionChoice) -> Self {
        match choice {
            trellis_model::CompressionChoice::Gzip => Compression::Gzip,
            trellis_model::CompressionChoice::Zstd => Compression::Zstd,
        }
    }
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn layer_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The pinned compressor, as records name it: the same name, the same bytes.
    pub fn compressor(self) -> &'static str {
        static ZSTD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match self {
            Compression::Gzip => "gzip: flate2 1.1.11 (miniz_oxide 0.9.1), level 6",
            Compression::Zstd => {
                ZSTD.get_or_init(|| format!("zstd: libzstd {}, level {ZSTD_LEVEL}", zstd::zstd_safe::version_string()))
            }
        }
    }

    /// Compresses `input` into `output`; returns the compressed digest (`sha256:…`) and size.
    pub fn compress(self, input: &mut impl Read, output: impl Write) -> io::Result<(String, u64)> {
        let counted = Digesting { inner: output, hasher: sha2::Sha256::new(), written: 0 };
        let counted = match self {
            Compression::Gzip => {
                // No mtime (0), no file name, the OS byte "unknown": nothing of this machine.
                let mut encoder =
                    flate2::GzBuilder::new().operating_system(255).write(counted, flate2::Compression::new(GZIP_LEVEL));
                io::copy(input, &mut encoder)?;
                encoder.finish()?
            }
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(counted, ZSTD_LEVEL)?;
                io::copy(input, &mut encoder)?;
                encoder.finish()?
            }
        };
        let hex: String = counted.hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok((format!("sha256:{hex}"), counted.written))
    }
}

/// Whether a stored layer of `media_type` is compressed as `compression` asks: then it is
/// pushed as stored.
pub(crate) fn stored_as(media_type: &str, compression: Compression) -> bool {
    match compression {
        Compression::Gzip => media_type.ends_with("tar+gzip") || media_type.ends_with(".tar.gzip"),
        Compression::Zstd => media_type.ends_with("tar+zstd"),
    }
}

/// A writer that hashes and counts what goes through it.
struct Digesting<W> {
    inner: W,
    hasher: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_compress_to_the_same_digest() {
        let layer: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let a = Compression::Gzip.compress(&mut layer.as_slice(), &mut first).unwrap();
        let b = Compression::Gzip.compress(&mut layer.as_slice(), &mut second).unwrap();
        assert_eq!(a, b);
        assert_eq!(first, second);
        assert_eq!(a.1, first.len() as u64);
        assert!(first.len() < layer.len() / 4, "{} of {}", first.len(), layer.len());
        // A gzip member: magic, deflate, no flags, mtime 0, OS 255.
        assert_eq!(&first[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let mut round = Vec::new();
        flate2::read::GzDecoder::new(first.as_slice()).read_to_end(&mut round).unwrap();
        assert_eq!(round, layer);
    }

    #[test]
    fn zstd_is_deterministic_too() {
        let layer: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let a = Compression::Zstd.compress(&mut layer.as_slice(), &mut first).unwrap();
        let b = Compression::Zstd.compress(&mut layer.as_slice(), &mut second).unwrap();
        assert_eq!((a, &first), (b, &second));
        assert_eq!(zstd::decode_all(first.as_slice()).unwrap(), layer);
        assert!(Compression::Zstd.compressor().starts_with("zstd: libzstd 1."), "{}", Compression::Zstd.compressor());
    }

    #[test]
    fn the_named_compressor_is_the_one_built_in() {
        // The name records carry must say which versions compress: Cargo.lock decides them.
        let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock")).unwrap();
        let version = |name: &str| {
            let prefix = format!("name = \"{name}\"\nversion = \"");
            let at = lock.find(&prefix).unwrap_or_else(|| panic!("{name}"));
            let rest = &lock[at + prefix.len()..];
            rest[..rest.find('"').unwrap()].to_owned()
        };
        let expected =
            format!("gzip: flate2 {} (miniz_oxide {}), level {GZIP_LEVEL}", version("flate2"), version("miniz_oxide"));
        assert_eq!(Compression::Gzip.compressor(), expected);
    }

    #[test]
    fn stored_gzip_layers_are_pushed_as_stored() {
        assert!(stored_as("application/vnd.oci.image.layer.v1.tar+gzip", Compression::Gzip));
        assert!(stored_as("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression::Gzip));
        assert!(!stored_as("application/vnd.oci.image.layer.v1.tar", Compression::Gzip));
        assert!(!stored_as("application/vnd.oci.image.layer.v1.tar+zstd", Compression::Gzip));
    }
}
