//! FILTERs pick variants (`node`, `node=22.*`, `node/22.20.0/*`) and pull in their parents,
//! since a child cannot be built without them.

use trellis_model::Model;

use crate::graph::Dependencies;

/// A FILTER that matched no variant: almost always a typo, so it is an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter `{filter}` matches no variant")]
pub struct UnmatchedFilter {
    pub filter: String,
}

/// Which variants to act on: `selected[v]`; `matched[v]` when a FILTER named it (rather
/// than it being pulled in as a parent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub selected: Vec<bool>,
    pub matched: Vec<bool>,
}

impl Selection {
    pub fn all(workspace: &Model) -> Self {
        Self { selected: vec![true; workspace.variants.len()], matched: vec![true; workspace.variants.len()] }
    }

    /// Variants matching any filter, plus their ancestors (what they build on or test with).
    /// No filters selects everything.
    pub fn new(workspace: &Model, dependencies: &Dependencies, filters: &[String]) -> Result<Self, UnmatchedFilter> {
        if filters.is_empty() {
            return Ok(Self::all(workspace));
        }
        let mut selected = vec![false; workspace.variants.len()];
        for filter in filters {
            let mut any = false;
            for (v, variant) in workspace.variants.iter().enumerate() {
                if matches(filter, variant, &workspace.image_of(variant).name) {
                    selected[v] = true;
                    any = true;
                }
            }
            if !any {
                return Err(UnmatchedFilter { filter: filter.clone() });
            }
        }
        let matched = selected.clone();
        let mut stack: Vec<usize> = (0..selected.len()).filter(|v| selected[*v]).collect();
        while let Some(v) = stack.pop() {
            // Tests need the other images they use too.
            let tested_with = dependencies.test_parents[v].iter().flatten();
            for &parent in dependencies.parents[v].iter().chain(tested_with) {
                if !selected[parent] {
                    selected[parent] = true;
                    stack.push(parent);
                }
            }
        }
        Ok(Self { selected, matched })
    }

    pub fn contains(&self, variant: usize) -> bool {
        self.selected.get(variant).copied().unwrap_or(false)
    }
}

fn matches(filter: &str, variant: &trellis_model::Variant, image: &str) -> bool {
    let glob = |pattern: &str, text: &str| wildmatch::WildMatch::new(pattern).matches(text);
    if let Some((axis, pattern)) = filter.split_once('=') {
        return variant.values.get(axis).is_some_and(|value| glob(pattern, value));
    }
    if filter.contains('/') {
        return glob(filter, &variant.id);
    }
    glob(filter, image)
}
