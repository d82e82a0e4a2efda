//! Class labels and the seeded few-label split.
//!
//! A linear probe measures how much label information a frozen representation exposes to a
//! *linear* read-out from very few labelled examples. The split therefore draws exactly `N`
//! examples per class (so rare classes are not starved), uniformly and repeatably for a seed,
//! and keeps everything else for testing.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::ProbeError;

/// Class ids per example and the class names they index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    ids: Vec<usize>,
    names: Vec<String>,
}

impl Labels {
    /// Wraps class ids (`0..names.len()`) and their names.
    ///
    /// Errors when an id has no name or two classes share a name, since either would make
    /// reports ambiguous.
    pub fn new(ids: Vec<usize>, names: Vec<String>) -> Result<Self, ProbeError> {
        if let Some((i, &id)) = ids.iter().enumerate().find(|(_, &id)| id >= names.len()) {
            return Err(ProbeError::InvalidParameter(format!(
                "label {i} is class {id}, but only {} class names were given",
                names.len()
            )));
        }
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(ProbeError::InvalidParameter(format!(
                "class name `{}` appears twice",
                w[0]
            )));
        }
        Ok(Self { ids, names })
    }

    /// Maps label strings to class ids.
    ///
    /// Classes are ordered numerically when every name is an integer (so digits come out
    /// `0, 1, …, 10` rather than `0, 1, 10, …`), lexicographically otherwise; either way the
    /// ids do not depend on the order of the examples, which keeps seeded splits stable when
    /// the input is reordered per class.
    pub fn from_names<S: AsRef<str>>(labels: &[S]) -> Self {
        let mut names: Vec<String> = labels.iter().map(|s| s.as_ref().to_string()).collect();
        let numeric = names.iter().all(|n| n.trim().parse::<i64>().is_ok());
        if numeric {
            names.sort_by_key(|n| (n.trim().parse::<i64>().unwrap_or_default(), n.clone()));
        } else {
            names.sort();
        }
        names.dedup();
        let id_of: HashMap<&str, usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let ids = labels
            .iter()
            .map(|s| id_of.get(s.as_ref()).copied().unwrap_or_default())
            .collect();
        Self { ids, names }
    }

    /// The class id of every example.
    pub fn ids(&self) -> &[usize] {
        &self.ids
    }

    /// Class names, indexed by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of classes (including classes without examples).
    pub fn n_classes(&self) -> usize {
        self.names.len()
    }

    /// Examples per class, indexed by id.
    pub fn counts(&self) -> Vec<usize> {
        let mut c = vec![0; self.names.len()];
        for &id in &self.ids {
            c[id] += 1;
        }
        c
    }
}

/// Which examples are labelled for training and which are held out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Training examples, ascending.
    pub train: Vec<usize>,
    /// Test examples (all the others), ascending.
    pub test: Vec<usize>,
}

/// Draws exactly `n_per_class` training examples from every class, uniformly at random and
/// repeatably for `seed`; all other examples are the test set.
///
/// Classes are visited in id order and each class's examples in index order, so the result
/// depends only on the labels, `n_per_class` and `seed`. A class with `n_per_class` examples
/// or fewer is an error naming it: it would contribute nothing to the test accuracy, and a
/// silently smaller training set would make results at different `N` incomparable.
pub fn few_label_split(
    labels: &Labels,
    n_per_class: usize,
    seed: u64,
) -> Result<Split, ProbeError> {
    if labels.is_empty() {
        return Err(ProbeError::Empty("no labelled examples to split".into()));
    }
    if n_per_class == 0 {
        return Err(ProbeError::InvalidParameter(
            "the number of training examples per class must be at least 1".into(),
        ));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); labels.n_classes()];
    for (i, &c) in labels.ids().iter().enumerate() {
        members[c].push(i);
    }
    if let Some((c, m)) = members
        .iter()
        .enumerate()
        .find(|(_, m)| m.len() <= n_per_class)
    {
        return Err(ProbeError::TooFewExamples {
            class: labels.names()[c].clone(),
            count: m.len(),
            n_per_class,
        });
    }
    let mut rng = SplitMix64::seed_from_u64(seed);
    let mut is_train = vec![false; labels.len()];
    for mut m in members {
        // Partial Fisher–Yates: the first `n_per_class` slots become a uniform sample.
        for k in 0..n_per_class {
            let j = rng.random_range(k..m.len());
            m.swap(k, j);
            is_train[m[k]] = true;
        }
    }
    let (train, test): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| is_train[i]);
    Ok(Split { train, test })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(counts: &[usize]) -> Labels {
        let mut ids = Vec::new();
        // Interleave the classes so that index order and class order differ.
        let max = counts.iter().copied().max().unwrap_or(0);
        for k in 0..max {
            for (c, &n) in counts.iter().enumerate() {
                if k < n {
                    ids.push(c);
                }
            }
        }
        let names = (0..counts.len()).map(|c| format!("c{c}")).collect();
        Labels::new(ids, names).unwrap()
    }

    #[test]
    fn split_is_a_partition_with_exactly_n_per_class() {
        let l = labels(&[7, 12, 30]);
        let s = few_label_split(&l, 5, 3).unwrap();
        let mut all: Vec<usize> = s.train.iter().chain(&s.test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..l.len()).collect::<Vec<_>>());
        assert!(s.train.windows(2).all(|w| w[0] < w[1]));
        assert!(s.test.windows(2).all(|w| w[0] < w[1]));
        for c in 0..3 {
            assert_eq!(s.train.iter().filter(|&&i| l.ids()[i] == c).count(), 5);
        }
        assert_eq!(s.test.len(), 49 - 15);
    }

    #[test]
    fn split_is_repeatable_and_depends_on_the_seed() {
        let l = labels(&[40, 40, 40]);
        let a = few_label_split(&l, 4, 11).unwrap();
        assert_eq!(a, few_label_split(&l, 4, 11).unwrap());
        let b = few_label_split(&l, 4, 12).unwrap();
        assert_ne!(a.train, b.train);
    }

    #[test]
    fn split_is_roughly_uniform() {
        // Each of 10 examples of a class should be picked with probability 1/5.
        let l = labels(&[10, 10]);
        let mut hits = [0usize; 20];
        for seed in 0..5000 {
            for i in few_label_split(&l, 2, seed).unwrap().train {
                hits[i] += 1;
            }
        }
        for h in hits {
            assert!((800..1200).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn too_few_examples_names_the_class() {
        let l = labels(&[8, 3]);
        let err = few_label_split(&l, 3, 0).unwrap_err();
        assert!(
            matches!(&err, ProbeError::TooFewExamples { class, count: 3, n_per_class: 3 } if class == "c1"),
            "{err}"
        );
        assert!(err.to_string().contains("`c1`"), "{err}");
        assert!(few_label_split(&l, 0, 0).is_err());
        let empty = Labels::new(vec![], vec!["a".into()]).unwrap();
        assert!(matches!(
            few_label_split(&empty, 1, 0),
            Err(ProbeError::Empty(_))
        ));
    }

    #[test]
    fn names_map_to_sorted_ids() {
        let l = Labels::from_names(&["10", "2", "2", "1"]);
        assert_eq!(l.names(), ["1", "2", "10"]);
        assert_eq!(l.ids(), [2, 1, 1, 0]);
        let l = Labels::from_names(&["cat", "ant", "cat"]);
        assert_eq!(l.names(), ["ant", "cat"]);
        assert_eq!(l.ids(), [1, 0, 1]);
        assert!(Labels::new(vec![0, 2], vec!["a".into(), "b".into()]).is_err());
        assert!(Labels::new(vec![0], vec!["a".into(), "a".into()]).is_err());
    }
}
