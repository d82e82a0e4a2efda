//! Brace patterns as webdataset and open_clip write them: `shards/{00000..00999}.tar`,
//! `{train,extra}.tsv`, inside paths, URLs and `pipe:` commands alike.
//!
//! The workspace's one brace expander: `clip-data` re-exports it for local `--data` patterns.

/// Most names one pattern may expand to: `{0..99999999999}` would otherwise fill memory
/// before anything is read.
pub const MAX_EXPANSION: usize = 1 << 22;

/// Where the next brace group is, as (open, close) byte indices; `${…}` is left alone so
/// that shell variables in a `pipe:` command (`-H "Authorization: Bearer ${HF_TOKEN}"`)
/// reach the shell.
fn next_group(pattern: &str) -> Result<Option<(usize, usize)>, String> {
    let b = pattern.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'{' => {
                let close = pattern[i..]
                    .find('}')
                    .map(|c| i + c)
                    .ok_or_else(|| format!("{pattern:?} has a `{{` without a `}}`"))?;
                if i > 0 && b[i - 1] == b'$' {
                    i = close + 1;
                    continue;
                }
                return Ok(Some((i, close)));
            }
            b'}' => return Err(format!("{pattern:?} has a `}}` without a `{{`")),
            _ => i += 1,
        }
    }
    Ok(None)
}

/// The choices of one group's body: `a..b` is a numeric range (zero-padded to the width of
/// the wider bound when either bound has a leading zero, as webdataset does), `x,y` a list.
fn choices(pattern: &str, body: &str) -> Result<Vec<String>, String> {
    match body.split_once("..") {
        Some((lo, hi)) => {
            let parse = |s: &str| {
                s.parse::<u64>()
                    .map_err(|_| format!("{pattern:?}: `{s}` in `{{{body}}}` is not a number"))
            };
            let (a, b) = (parse(lo)?, parse(hi)?);
            if a > b {
                return Err(format!(
                    "{pattern:?}: the range `{{{body}}}` runs backwards"
                ));
            }
            if b - a >= MAX_EXPANSION as u64 {
                return Err(too_many(pattern));
            }
            let padded = lo.starts_with('0') || hi.starts_with('0');
            let width = if padded { lo.len().max(hi.len()) } else { 0 };
            Ok((a..=b).map(|i| format!("{i:0width$}")).collect())
        }
        None if body.contains(',') => Ok(body.split(',').map(str::to_string).collect()),
        None => Err(format!(
            "{pattern:?}: `{{{body}}}` is neither a range nor a list"
        )),
    }
}

fn too_many(pattern: &str) -> String {
    format!("{pattern:?} expands to more than {MAX_EXPANSION} names")
}

/// Expands brace groups left to right; the first group varies slowest and a list keeps its
/// own order. Text without braces comes back as it is.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, String> {
    let Some((open, close)) = next_group(pattern)? else {
        return Ok(vec![pattern.to_string()]);
    };
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let choices = choices(pattern, body)?;
    let tails = expand_braces(tail)?;
    if choices.len().saturating_mul(tails.len()) > MAX_EXPANSION {
        return Err(too_many(pattern));
    }
    let mut out = Vec::with_capacity(choices.len() * tails.len());
    for c in &choices {
        for t in &tails {
            out.push(format!("{head}{c}{t}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_ranges_with_padding_and_lists_in_order() {
        assert_eq!(
            expand_braces("s/{000..002}.tar").unwrap(),
            ["s/000.tar", "s/001.tar", "s/002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{b,a}.tsv").unwrap(), ["b.tsv", "a.tsv"]);
        assert_eq!(
            expand_braces("{a,b}/{0..1}").unwrap(),
            ["a/0", "a/1", "b/0", "b/1"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["{1..x}", "{3..1}", "{a", "a}", "{a}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shell_variables_are_left_for_the_shell() {
        assert_eq!(
            expand_braces("curl -H \"Bearer ${TOKEN}\" h/{0..1}.tar").unwrap(),
            [
                "curl -H \"Bearer ${TOKEN}\" h/0.tar",
                "curl -H \"Bearer ${TOKEN}\" h/1.tar"
            ]
        );
        assert_eq!(expand_braces("${A}${B}").unwrap(), ["${A}${B}"]);
        assert!(expand_braces("${A").is_err());
    }

    #[test]
    fn huge_expansions_are_refused_before_allocating() {
        let err = expand_braces("{0..99999999999}").unwrap_err();
        assert!(err.contains("more than"), "{err}");
        let err = expand_braces("{0000..9999}{0000..9999}").unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
