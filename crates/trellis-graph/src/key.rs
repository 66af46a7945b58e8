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

/// A key built from named components, each hashed on its own, so that a later plan can say
/// which input changed ("build arg NODE_VERSION", "context", "parent node/22/bookworm").
pub struct ComponentKey {
    domain: &'static str,
    components: Vec<(String, NodeKey)>,
}

impl ComponentKey {
    pub fn new(domain: &'static str) -> Self {
        Self { domain, components: Vec::new() }
    }

    pub fn text(&mut self, name: impl Into<String>, value: &str) -> &mut Self {
        let hash = KeyHasher::new("component").str(value).finish();
        self.components.push((name.into(), hash));
        self
    }

    pub fn key(&mut self, name: impl Into<String>, key: &NodeKey) -> &mut Self {
        self.components.push((name.into(), *key));
        self
    }

    /// The key and its components (name → hex).
    pub fn finish(self) -> (NodeKey, Vec<(String, String)>) {
        let mut hasher = KeyHasher::new(self.domain);
        hasher.count(self.components.len());
        for (name, hash) in &self.components {
            hasher.str(name).key(hash);
        }
        let key = hasher.finish();
        (key, self.components.into_iter().map(|(n, h)| (n, h.to_hex())).collect())
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
    fn domains_separate_kinds() {
        assert_ne!(KeyHasher::new("build").str("x").finish(), KeyHasher::new("test").str("x").finish());
    }
}
