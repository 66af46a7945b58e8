//! Stages and shards: how CI splits a family over runners (DESIGN §9). A stage is a depth of
//! the parent graph (bases are stage 0); a shard is one of N balanced parts of a stage. Both are
//! pure functions of the dependencies and the weights given, so every machine that sees the
//! same workspace and weights splits it the same way.
//!
//! A variant comes after every variant it builds on and every variant its Dockerfile tests
//! use (`Dependencies::test_parents`): a test runs on the tested images of what it names, so
//! on a runner of a later stage those are served, never missing.

use std::fmt;
use std::str::FromStr;

use crate::graph::Dependencies;

/// Per variant, its depth in the parent graph: 0 without parents or variants its tests use,
/// else one more than the deepest of those.
pub fn depths(dependencies: &Dependencies) -> Vec<usize> {
    let mut depths = vec![0; dependencies.parents.len()];
    // `order` puts parents and test parents before the variants that use them.
    for &v in &dependencies.order {
        let tested_with = dependencies.test_parents[v].iter().flatten();
        depths[v] = dependencies.parents[v].iter().chain(tested_with).map(|&p| depths[p] + 1).max().unwrap_or(0);
    }
    depths
}

/// The variants of each stage, stage 0 first, each in variant order; `depths` as
/// [`depths`] returns them. Every stage holds at least one variant: a variant at depth K has a
/// parent at depth K − 1.
pub fn stages(depths: &[usize]) -> Vec<Vec<usize>> {
    let count = depths.iter().max().map_or(0, |deepest| deepest + 1);
    let mut stages = vec![Vec::new(); count];
    for (v, &depth) in depths.iter().enumerate() {
        stages[depth].push(v);
    }
    stages
}

/// Splits `variants` into `count` shards balanced by `weight` (longest processing time first):
/// heaviest first, ties by the lower variant index, each to the shard with the least weight
/// so far, ties to the lower shard. Every variant is in exactly one shard; each shard lists
/// its variants in ascending order; a shard is empty when there are fewer variants than
/// shards. The result does not depend on the order of `variants`, and the heaviest shard
/// weighs at most the lightest plus the heaviest variant. `count` 0 is taken as 1.
pub fn shards(variants: &[usize], weight: impl Fn(usize) -> u64, count: usize) -> Vec<Vec<usize>> {
    let mut shards = vec![Vec::new(); count.max(1)];
    let mut loads = vec![0u64; shards.len()];
    let mut heaviest_first: Vec<(u64, usize)> = variants.iter().map(|&v| (weight(v), v)).collect();
    heaviest_first.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (weight, v) in heaviest_first {
        let lightest = (0..loads.len()).min_by_key(|&s| (loads[s], s)).unwrap_or(0);
        loads[lightest] = loads[lightest].saturating_add(weight);
        shards[lightest].push(v);
    }
    for shard in &mut shards {
        shard.sort_unstable();
    }
    shards
}

/// `--shard I/N`: the I-th (counting from 1, as users write it) of N shards. Parsing
/// guarantees 1 ≤ I ≤ N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// This shard's variants of `variants` (see [`shards`]), in ascending order.
    pub fn pick(&self, variants: &[usize], weight: impl Fn(usize) -> u64) -> Vec<usize> {
        let mut all = shards(variants, weight, self.count);
        all.get_mut(self.index.wrapping_sub(1)).map(std::mem::take).unwrap_or_default()
    }
}

/// A `--shard` value that is not I/N with 1 ≤ I ≤ N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("not of the form I/N; {HINT}")]
    NotAFraction,
    #[error("`{0}` is not a whole number; {HINT}")]
    NotANumber(String),
    #[error("there is no shard {index} of {count}; {HINT}")]
    NoSuchShard { index: usize, count: usize },
}

const HINT: &str = "--shard wants I/N with 1 ≤ I ≤ N, e.g. 1/2";

impl FromStr for Shard {
    type Err = ShardError;

    fn from_str(text: &str) -> Result<Self, ShardError> {
        let (index, count) = text.split_once('/').ok_or(ShardError::NotAFraction)?;
        let number = |part: &str| part.trim().parse::<usize>().map_err(|_| ShardError::NotANumber(part.trim().into()));
        let (index, count) = (number(index)?, number(count)?);
        if index == 0 || index > count {
            return Err(ShardError::NoSuchShard { index, count });
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Dependencies with these parents, ordered parents first.
    fn dependencies(parents: &[&[usize]]) -> Dependencies {
        let parents: Vec<Vec<usize>> = parents.iter().map(|p| p.to_vec()).collect();
        let mut order = Vec::new();
        while order.len() < parents.len() {
            for (v, its) in parents.iter().enumerate() {
                if !order.contains(&v) && its.iter().all(|p| order.contains(p)) {
                    order.push(v);
                }
            }
        }
        let n = parents.len();
        Dependencies {
            external_bases: vec![Vec::new(); n],
            test_parents: vec![Vec::new(); n],
            test_bases: vec![Vec::new(); n],
            order,
            parents,
        }
    }

    #[test]
    fn a_variant_is_one_deeper_than_its_deepest_parent() {
        // 0 and 1 are bases; 2 on 0; 3 on 2 and 1 (a multi-stage Dockerfile); 4 on 1.
        let deps = dependencies(&[&[], &[], &[0], &[2, 1], &[1]]);
        let depths = depths(&deps);
        assert_eq!(depths, [0, 0, 1, 2, 1]);
        assert_eq!(stages(&depths), [vec![0, 1], vec![2, 4], vec![3]]);
    }

    #[test]
    fn a_variant_comes_after_what_its_tests_use() {
        // 1 is tested with 0 (the decoupled-runtime pattern); 2 builds on 1.
        let mut deps = dependencies(&[&[], &[], &[1]]);
        deps.test_parents[1] = vec![vec![], vec![0]];
        assert_eq!(depths(&deps), [0, 1, 2]);
    }

    #[test]
    fn no_variants_no_stages() {
        assert_eq!(stages(&depths(&dependencies(&[]))), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn heaviest_first_to_the_lightest_shard() {
        let weight = |v: usize| [5, 9, 1, 4, 4][v];
        // 1 (9) → shard 0; 0 (5) → 1; 3 (4) → 1 (load 5 < 9); 4 (4) → 0 (9 ≤ 9, lower shard);
        // 2 (1) → 1 (load 9 < 13).
        assert_eq!(shards(&[0, 1, 2, 3, 4], weight, 2), [vec![1, 4], vec![0, 2, 3]]);
    }

    #[test]
    fn equal_weights_go_round_in_variant_order() {
        assert_eq!(shards(&[7, 3, 5, 9], |_| 1, 3), [vec![3, 9], vec![5], vec![7]]);
    }

    #[test]
    fn more_shards_than_variants_leaves_some_empty() {
        assert_eq!(shards(&[4, 2], |_| 1, 3), [vec![2], vec![4], vec![]]);
        assert_eq!(shards(&[], |_| 1, 2), [Vec::<usize>::new(), vec![]]);
    }

    #[test]
    fn a_shard_picks_its_part() {
        let shard: Shard = "2/3".parse().unwrap();
        assert_eq!(shard.pick(&[7, 3, 5, 9], |_| 1), [5]);
    }

    #[test]
    fn shard_parses_i_of_n() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        assert_eq!("1/1".parse(), Ok(Shard { index: 1, count: 1 }));
        for (text, error) in [
            ("0/2", ShardError::NoSuchShard { index: 0, count: 2 }),
            ("3/2", ShardError::NoSuchShard { index: 3, count: 2 }),
            ("1/0", ShardError::NoSuchShard { index: 1, count: 0 }),
            ("1", ShardError::NotAFraction),
            ("a/2", ShardError::NotANumber("a".into())),
            ("1/2/3", ShardError::NotANumber("2/3".into())),
            ("-1/2", ShardError::NotANumber("-1".into())),
        ] {
            assert_eq!(text.parse::<Shard>(), Err(error), "{text}");
        }
        assert_eq!(
            "3/2".parse::<Shard>().unwrap_err().to_string(),
            "there is no shard 3 of 2; --shard wants I/N with 1 ≤ I ≤ N, e.g. 1/2"
        );
        assert_eq!(Shard { index: 2, count: 5 }.to_string(), "2/5");
    }

    /// Distinct variant indices in some order, a weight for each index, and a shard count.
    fn workload() -> impl Strategy<Value = (Vec<usize>, Vec<u64>, usize)> {
        (proptest::collection::vec(0..1_000u64, 0..40), 1..8usize).prop_flat_map(|(weights, count)| {
            let indices = proptest::sample::subsequence((0..weights.len()).collect::<Vec<_>>(), 0..=weights.len());
            (indices.prop_shuffle(), Just(weights), Just(count))
        })
    }

    proptest! {
        #[test]
        fn shards_are_disjoint_complete_deterministic_and_balanced((variants, weights, count) in workload()) {
            let weight = |v: usize| weights[v];
            let split = shards(&variants, weight, count);
            prop_assert_eq!(split.len(), count);

            // Disjoint and complete, each shard ascending.
            let mut all: Vec<usize> = split.iter().flatten().copied().collect();
            all.sort_unstable();
            let mut expected = variants.clone();
            expected.sort_unstable();
            prop_assert_eq!(&all, &expected);
            for shard in &split {
                prop_assert!(shard.is_sorted(), "{:?}", shard);
            }

            // The same split again, and from the variants in another order.
            prop_assert_eq!(&split, &shards(&variants, weight, count));
            prop_assert_eq!(&split, &shards(&expected, weight, count));

            // Balanced: the heaviest shard exceeds the lightest by at most the heaviest
            // variant's weight — and, heaviest first, by at most its own lightest variant's
            // (the last one it got, when it was the lightest shard).
            let loads: Vec<u64> = split.iter().map(|s| s.iter().map(|&v| weight(v)).sum()).collect();
            let heaviest_variant = variants.iter().map(|&v| weight(v)).max().unwrap_or(0);
            let (min, max) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
            prop_assert!(max <= min + heaviest_variant, "loads {:?}, heaviest variant {}", loads, heaviest_variant);
            let fullest = loads.iter().position(|&load| load == max).unwrap();
            let its_lightest = split[fullest].iter().map(|&v| weight(v)).min().unwrap_or(0);
            prop_assert!(max <= min + its_lightest, "loads {:?}, shards {:?}", loads, split);

            // Each shard's own pick is its part.
            for (i, part) in split.iter().enumerate() {
                prop_assert_eq!(&Shard { index: i + 1, count }.pick(&variants, weight), part);
            }
        }

        #[test]
        fn a_shard_reads_back_what_it_displays(count in 1..10_000usize, index in 1..10_000usize) {
            let shard = Shard { index: index.min(count), count };
            prop_assert_eq!(shard.to_string().parse::<Shard>(), Ok(shard));
        }
    }
}
