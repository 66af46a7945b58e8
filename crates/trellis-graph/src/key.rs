//! Content keys: blake3 over a length-prefixed canonical encoding, so that no two different
//! inputs can encode to the same bytes (`["ab","c"]` vs `["a","bc"]`), with a schema version
//! so that a change to what a key covers invalidates every old key at once.

use std::fmt;

/// Bump when what a key covers changes: every node then re-runs once.
pub const KEY_SCHEMA_VERSION: u64 = 1;

/// The content key of a node (or a context digest).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey(pub [u8; 32]);

impl NodeKey {
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", &self.to_hex()[..16])
    }
}

impl serde::Serialize for NodeKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Builds a key field by field; every field is length-prefixed.
pub struct KeyHasher(blake3::Hasher);

impl KeyHasher {
    /// A hasher for one kind of key (`"build"`, `"test"`, …): the domain is part of the key.
    pub fn new(domain: &str) -> Self {
        let mut hasher = Self(blake3::Hasher::new());
        hasher.u64(KEY_SCHEMA_VERSION);
        hasher.str(domain);
        hasher
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.0.update(&value.to_le_bytes());
        self
    }

    pub fn count(&mut self, n: usize) -> &mut Self {
        self.u64(n as u64)
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> &mut Self {
        self.u64(bytes.len() as u64);
        self.0.update(bytes);
        self
    }

    pub fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn key(&mut self, key: &NodeKey) -> &mut Self {
        self.bytes(&key.0)
    }

    pub fn option(&mut self, s: Option<&str>) -> &mut Self {
        match s {
            None => self.u64(0),
            Some(s) => self.u64(1).str(s),
        }
    }

    pub fn pairs(&mut self, pairs: &[(String, String)]) -> &mut Self {
        self.count(pairs.len());
        for (k, v) in pairs {
            self.str(k).str(v);
        }
        self
    }

    pub fn finish(&self) -> NodeKey {
        NodeKey(*self.0.finalize().as_bytes())
    }
}

/// A named input of a node's key. The names are part of the hashed encoding and of the state
/// store's records (which input changed since the last run): they are spelled here only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// Render: where the rendered Dockerfile goes.
    Path,
    /// Render and build: the rendered Dockerfile.
    Dockerfile,
    /// Build: the build context's digest.
    Context,
    Arg(String),
    Label(String),
    Target,
    /// Build: the builder (`classic`, `buildkit`): the same Dockerfile may build differently.
    Builder,
    /// Build: the platform it builds for (`linux/arm64`), when the variant names platforms.
    Platform,
    /// Tag of a variant with platforms: the build key of its image for one platform.
    PlatformImage(String),
    /// Build: a workspace image the Dockerfile builds on (its build key).
    Parent(String),
    /// Build and Dockerfile tests: an external image, by the ID the engine resolved.
    Base(String),
    /// Test, tag: the build key of the image it tests or tags.
    Image,
    Network,
    /// Test: the `run` lines.
    Run,
    TestDockerfile,
    TestContext,
    /// Test: another workspace image a Dockerfile test names.
    Uses(String),
    /// Tag: the variant's references.
    References,
    /// Push: the tag key.
    Tag,
    Registry,
    /// Push: the layer compression, when it is not the default (gzip).
    Compression,
    /// Push: a test's key (`smoke`, `smoke@linux/arm64`): the push records in the registry
    /// which tests passed on the image, and a changed test changes that record.
    Tested(String),
}

impl Component {
    /// What changed, in words, for a plan's reason ("build arg NODE_VERSION changed").
    pub fn changed(&self) -> String {
        match self {
            Component::Path => "render path changed".to_owned(),
            Component::Dockerfile => "rendered Dockerfile changed (template or its values)".to_owned(),
            Component::Context => "build context changed".to_owned(),
            Component::Arg(arg) => format!("build arg {arg} changed"),
            Component::Label(label) => format!("label {label} changed"),
            Component::Target => "build target changed".to_owned(),
            Component::Builder => "builder changed".to_owned(),
            Component::Platform => "platform changed".to_owned(),
            Component::PlatformImage(platform) => format!("its {platform} image was rebuilt"),
            Component::Parent(parent) => format!("parent {parent} changed"),
            Component::Base(base) => format!("base image {base} moved"),
            Component::Image => "its image was rebuilt".to_owned(),
            Component::Network => "test network changed".to_owned(),
            Component::Run => "test commands changed".to_owned(),
            Component::TestDockerfile => "test Dockerfile changed".to_owned(),
            Component::TestContext => "test context changed".to_owned(),
            Component::Uses(used) => format!("{used}, which the test uses, changed"),
            Component::References => "tag references changed".to_owned(),
            // A push's key covers its tag node's: the image and the references it pushes.
            Component::Tag => "the image or references it pushes changed".to_owned(),
            Component::Registry => "registry changed".to_owned(),
            Component::Compression => "compression changed".to_owned(),
            Component::Tested(test) => format!("test {test} changed: the registry's record of it is updated"),
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, detail) = match self {
            Component::Path => ("path", None),
            Component::Dockerfile => ("dockerfile", None),
            Component::Context => ("context", None),
            Component::Arg(arg) => ("arg", Some(arg)),
            Component::Label(label) => ("label", Some(label)),
            Component::Target => ("target", None),
            Component::Builder => ("builder", None),
            Component::Platform => ("platform", None),
            Component::PlatformImage(platform) => ("image", Some(platform)),
            Component::Parent(parent) => ("parent", Some(parent)),
            Component::Base(base) => ("base", Some(base)),
            Component::Image => ("image", None),
            Component::Network => ("network", None),
            Component::Run => ("run", None),
            Component::TestDockerfile => ("test dockerfile", None),
            Component::TestContext => ("test context", None),
            Component::Uses(used) => ("uses", Some(used)),
            Component::References => ("references", None),
            Component::Tag => ("tag", None),
            Component::Registry => ("registry", None),
            Component::Compression => ("compression", None),
            Component::Tested(test) => ("tested", Some(test)),
        };
        match detail {
            Some(detail) => write!(f, "{name} {detail}"),
            None => f.write_str(name),
        }
    }
}

impl std::str::FromStr for Component {
    type Err = ();

    /// The inverse of `Display`, for records written by earlier runs.
    fn from_str(text: &str) -> Result<Self, ()> {
        let simple = [
            Component::Path,
            Component::Dockerfile,
            Component::Context,
            Component::Target,
            Component::Builder,
            Component::Platform,
            Component::Image,
            Component::Network,
            Component::Run,
            Component::TestDockerfile,
            Component::TestContext,
            Component::References,
            Component::Tag,
            Component::Registry,
            Component::Compression,
        ];
        if let Some(found) = simple.into_iter().find(|c| c.to_string() == text) {
            return Ok(found);
        }
        let (name, detail) = text.split_once(' ').ok_or(())?;
        let detail = detail.to_owned();
        match name {
            "arg" => Ok(Component::Arg(detail)),
            "label" => Ok(Component::Label(detail)),
            "parent" => Ok(Component::Parent(detail)),
            "base" => Ok(Component::Base(detail)),
            "uses" => Ok(Component::Uses(detail)),
            "image" => Ok(Component::PlatformImage(detail)),
            "tested" => Ok(Component::Tested(detail)),
            _ => Err(()),
        }
    }
}

/// A key's components with their hashes (hex), in the key's own order.
pub type Components = Vec<(Component, String)>;

/// A key built from named components, each hashed on its own, so that a later plan can say
/// which input changed ("build arg NODE_VERSION", "context", "parent node/22/bookworm").
pub struct ComponentKey {
    domain: &'static str,
    components: Vec<(Component, NodeKey)>,
}

impl ComponentKey {
    pub fn new(domain: &'static str) -> Self {
        Self { domain, components: Vec::new() }
    }

    pub fn text(&mut self, component: Component, value: &str) -> &mut Self {
        let hash = KeyHasher::new("component").str(value).finish();
        self.components.push((component, hash));
        self
    }

    pub fn key(&mut self, component: Component, key: &NodeKey) -> &mut Self {
        self.components.push((component, *key));
        self
    }

    /// The key and its components (hex).
    pub fn finish(self) -> (NodeKey, Components) {
        let mut hasher = KeyHasher::new(self.domain);
        hasher.count(self.components.len());
        for (component, hash) in &self.components {
            hasher.str(&component.to_string()).key(hash);
        }
        let key = hasher.finish();
        (key, self.components.into_iter().map(|(c, h)| (c, h.to_hex())).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixing_separates_fields() {
        let a = KeyHasher::new("t").str("ab").str("c").finish();
        let b = KeyHasher::new("t").str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn component_names_read_back() {
        let all = [
            Component::Path,
            Component::Dockerfile,
            Component::Context,
            Component::Arg("NODE_VERSION".into()),
            Component::Label("org.example.x y".into()),
            Component::Target,
            Component::Builder,
            Component::Platform,
            Component::PlatformImage("linux/arm/v7".into()),
            Component::Parent("node/22/bookworm".into()),
            Component::Base("debian:bookworm".into()),
            Component::Image,
            Component::Network,
            Component::Run,
            Component::TestDockerfile,
            Component::TestContext,
            Component::Uses("app/1".into()),
            Component::References,
            Component::Tag,
            Component::Registry,
            Component::Compression,
        ];
        for component in all {
            assert_eq!(component.to_string().parse::<Component>(), Ok(component.clone()), "{component}");
        }
        assert_eq!("no such".parse::<Component>(), Err(()));
    }

    #[test]
    fn domains_separate_kinds() {
        assert_ne!(KeyHasher::new("build").str("x").finish(), KeyHasher::new("test").str("x").finish());
    }
}
