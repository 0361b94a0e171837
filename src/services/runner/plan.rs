//! The pure part of a pipeline: checking a plan and turning it into dependency indices.

use std::collections::HashMap;

use super::{PipelineOptions, RunSpec};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `after` edges.
    Graph,
    /// Each spec after the previous one.
    Sequential,
    /// No edges.
    Parallel,
}

impl Mode {
    /// Why `spec` is skipped when `failed` failed.
    pub(super) fn skip_error(self, spec: &str, failed: &str) -> Error {
        match self {
            Mode::Sequential => Error::PipelineStopped {
                spec: spec.to_string(),
                failed: failed.to_string(),
            },
            Mode::Graph | Mode::Parallel => Error::DependencyFailed {
                spec: spec.to_string(),
                dependency: failed.to_string(),
            },
        }
    }
}

/// Validates the plan and returns, for each spec, the indices of the specs it waits for.
pub(super) fn plan(
    specs: &[RunSpec],
    mode: Mode,
    opts: &PipelineOptions,
) -> Result<Vec<Vec<usize>>> {
    if opts.max_parallel == Some(0) {
        return Err(Error::InvalidPlan {
            reason: "max_parallel must be at least 1".into(),
        });
    }
    let mut index = HashMap::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        if spec.name.trim().is_empty() {
            return Err(Error::InvalidName {
                what: "spec name",
                name: spec.name.clone(),
                reason: "must not be empty",
            });
        }
        if index.insert(spec.name.as_str(), i).is_some() {
            return Err(Error::DuplicateSpec {
                name: spec.name.clone(),
            });
        }
        spec.validate().map_err(|e| Error::InvalidPlan {
            reason: format!("spec `{}`: {e}", spec.name),
        })?;
    }
    match mode {
        Mode::Parallel => Ok(vec![Vec::new(); specs.len()]),
        Mode::Sequential => Ok((0..specs.len())
            .map(|i| i.checked_sub(1).into_iter().collect())
            .collect()),
        Mode::Graph => {
            let mut deps = Vec::with_capacity(specs.len());
            for (i, spec) in specs.iter().enumerate() {
                let mut mine: Vec<usize> = Vec::with_capacity(spec.after.len());
                for after in &spec.after {
                    let Some(&d) = index.get(after.as_str()) else {
                        return Err(Error::UnknownDependency {
                            spec: spec.name.clone(),
                            after: after.clone(),
                            suggestion: closest(after, specs.iter().map(|s| s.name.as_str()))
                                .map(str::to_string),
                        });
                    };
                    if d == i {
                        return Err(Error::Cycle {
                            path: vec![spec.name.clone(), spec.name.clone()],
                        });
                    }
                    if !mine.contains(&d) {
                        mine.push(d);
                    }
                }
                deps.push(mine);
            }
            if let Some(cycle) = find_cycle(&deps) {
                return Err(Error::Cycle {
                    path: cycle.into_iter().map(|i| specs[i].name.clone()).collect(),
                });
            }
            Ok(deps)
        }
    }
}

/// The name among `names` closest to `wanted` by edit distance, when it is close enough to be a
/// typo: at most a third of the longer name's characters (rounded up) differ.
fn closest<'a>(wanted: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|name| (edit_distance(wanted, name), name))
        .filter(|&(d, name)| {
            let longer = wanted.chars().count().max(name.chars().count());
            d <= longer.div_ceil(3)
        })
        .min_by_key(|&(d, _)| d)
        .map(|(_, name)| name)
}

/// The Levenshtein distance between `a` and `b`, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A cycle in the graph `deps` (node → the nodes it waits for), as a path whose first node is
/// repeated at the end. Iterative, so a long chain cannot overflow the stack.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Colour {
        New,
        OnPath,
        Done,
    }
    let mut colour = vec![Colour::New; deps.len()];
    for root in 0..deps.len() {
        if colour[root] != Colour::New {
            continue;
        }
        // (node, index of the next edge to follow)
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = Colour::OnPath;
        while let Some(&(node, edge)) = path.last() {
            match deps[node].get(edge) {
                None => {
                    colour[node] = Colour::Done;
                    path.pop();
                }
                Some(&next) => {
                    if let Some(top) = path.last_mut() {
                        top.1 += 1;
                    }
                    match colour[next] {
                        Colour::New => {
                            colour[next] = Colour::OnPath;
                            path.push((next, 0));
                        }
                        Colour::OnPath => {
                            let start = path.iter().position(|&(n, _)| n == next).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                path[start..].iter().map(|&(n, _)| n).collect();
                            cycle.push(next);
                            return Some(cycle);
                        }
                        Colour::Done => {}
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, after: &[&str]) -> RunSpec {
        let mut s = RunSpec::new(name, "true");
        s.after = after.iter().map(|a| a.to_string()).collect();
        s
    }

    fn graph(specs: &[RunSpec]) -> Result<Vec<Vec<usize>>> {
        plan(specs, Mode::Graph, &PipelineOptions::new())
    }

    #[test]
    fn a_skip_names_the_failed_spec_by_mode() {
        match Mode::Sequential.skip_error("b", "a") {
            Error::PipelineStopped { spec, failed } => {
                assert_eq!((spec, failed), ("b".into(), "a".into()))
            }
            other => panic!("{other:?}"),
        }
        for mode in [Mode::Graph, Mode::Parallel] {
            match mode.skip_error("b", "a") {
                Error::DependencyFailed { spec, dependency } => {
                    assert_eq!((spec, dependency), ("b".into(), "a".into()));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn valid_plan_gives_dependency_indices() {
        let deps = graph(&[
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a", "b", "a"]),
        ])
        .unwrap();
        assert_eq!(deps, vec![vec![], vec![0], vec![0, 1]]);
        assert!(graph(&[]).unwrap().is_empty());
    }

    #[test]
    fn empty_and_duplicate_names_are_rejected() {
        for name in ["", "  "] {
            match graph(&[spec("a", &[]), spec(name, &[])]) {
                Err(Error::InvalidName { what, .. }) => assert_eq!(what, "spec name"),
                other => panic!("{other:?}"),
            }
        }
        for mode in [Mode::Graph, Mode::Sequential, Mode::Parallel] {
            let err = plan(
                &[spec("a", &[]), spec("b", &[]), spec("a", &[])],
                mode,
                &PipelineOptions::new(),
            )
            .unwrap_err();
            assert!(matches!(&err, Error::DuplicateSpec { name } if name == "a"));
            assert!(err.to_string().contains("`a`"), "{err}");
        }
    }

    #[test]
    fn unknown_dependency_names_both_specs() {
        let err = graph(&[spec("a", &[]), spec("b", &["nope"])]).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownDependency { spec, after, suggestion: None } if spec == "b" && after == "nope")
        );
        assert_eq!(
            err.to_string(),
            "invalid pipeline: spec `b` runs after `nope`, which is not in the pipeline"
        );
        // Sequential and parallel runs ignore `after`.
        plan(
            &[spec("b", &["nope"])],
            Mode::Sequential,
            &PipelineOptions::new(),
        )
        .unwrap();
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let err = graph(&[spec("a", &["a"])]).unwrap_err();
        assert!(matches!(&err, Error::Cycle { path } if path == &["a", "a"]));
        assert_eq!(err.to_string(), "invalid pipeline: dependency cycle a → a");
    }

    #[test]
    fn cycles_are_reported_as_a_path() {
        let err = graph(&[spec("a", &["b"]), spec("b", &["a"])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pipeline: dependency cycle a → b → a"
        );

        // A cycle reached from an acyclic prefix is reported without the prefix.
        let err = graph(&[
            spec("start", &[]),
            spec("x", &["start", "y"]),
            spec("y", &["z"]),
            spec("z", &["x"]),
            spec("w", &["x"]),
        ])
        .unwrap_err();
        match err {
            Error::Cycle { path } => assert_eq!(path, ["x", "y", "z", "x"]),
            other => panic!("{other:?}"),
        }

        // A diamond is not a cycle.
        graph(&[
            spec("a", &[]),
            spec("b", &["a"]),
            spec("c", &["a"]),
            spec("d", &["b", "c"]),
        ])
        .unwrap();
    }

    #[test]
    fn long_chains_do_not_overflow_the_stack() {
        let n = 100_000;
        let mut deps: Vec<Vec<usize>> = (0..n).map(|i| vec![i + 1]).collect();
        deps[n - 1] = vec![];
        assert_eq!(find_cycle(&deps), None);
        deps[n - 1] = vec![0];
        assert_eq!(find_cycle(&deps).map(|c| c.len()), Some(n + 1));
    }

    #[test]
    fn zero_max_parallel_is_rejected() {
        let err = plan(
            &[spec("a", &[])],
            Mode::Parallel,
            &PipelineOptions::new().max_parallel(0),
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidPlan { .. }));
    }

    #[test]
    fn sequential_plan_chains_the_specs() {
        let deps = plan(
            &[spec("a", &[]), spec("b", &[]), spec("c", &[])],
            Mode::Sequential,
            &PipelineOptions::new(),
        )
        .unwrap();
        assert_eq!(deps, vec![vec![], vec![0], vec![1]]);
    }

    #[test]
    fn a_misspelt_dependency_suggests_the_closest_name() {
        let err = graph(&[
            spec("build", &[]),
            spec("test", &[]),
            spec("deploy", &["biuld"]),
        ])
        .unwrap_err();
        assert!(
            matches!(&err, Error::UnknownDependency { suggestion: Some(s), .. } if s == "build"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "invalid pipeline: spec `deploy` runs after `biuld`, which is not in the pipeline \
             (did you mean `build`?)"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        // Deleting a leading character costs one, like any other edit.
        assert_eq!(edit_distance("ab", ""), 2);
        assert_eq!(edit_distance("xbuild", "build"), 1);
        assert_eq!(closest("tset", ["test", "lint"].into_iter()), Some("test"));
        assert_eq!(closest("zzzz", ["test", "lint"].into_iter()), None);
    }

    #[test]
    fn an_empty_command_is_a_plan_error_naming_the_spec() {
        for mode in [Mode::Graph, Mode::Sequential, Mode::Parallel] {
            let err = plan(
                &[spec("a", &[]), RunSpec::new("b", " ")],
                mode,
                &PipelineOptions::new(),
            )
            .unwrap_err();
            assert!(
                matches!(&err, Error::InvalidPlan { reason } if reason.contains("spec `b`") && reason.contains("empty")),
                "{err}"
            );
        }
    }
}
