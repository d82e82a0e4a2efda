//! The README's first command, `clip train` with no `--data`: what it prints at the end (recall
//! beside its chance level, what was measured, example searches with their captions and
//! ranks) and the next-step commands it prints, run as printed. Two steps instead of the
//! bundled run's full schedule, so the figures are near chance; only their form is checked.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::s;

/// Splits a printed command into words: bare words and single-quoted ones (the only quoting
/// the command printer uses).
fn words(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '\'' => (quoted, any) = (!quoted, true),
            ' ' if !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            c => (cur, any) = (cur + &c.to_string(), true),
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Runs `argv` in `dir` on two threads; its stdout, or a panic with its stderr.
fn run_in(dir: &Path, argv: &[String]) -> String {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value and chance columns of metric `name` in the validation table.
fn metric(stdout: &str, name: &str) -> (f64, Option<f64>) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"));
    let cols: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (cols[0], cols.get(1).copied())
}

#[test]
fn the_first_run_prints_chance_levels_examples_and_next_steps_that_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let exe = env!("CARGO_BIN_EXE_clip").to_string();
    let train = ["train", "--steps", "2", "--batch-size", "8", "--out", "run"];
    let argv: Vec<String> = std::iter::once(exe.as_str())
        .chain(train)
        .map(String::from)
        .collect();
    let stdout = run_in(dir, &argv);

    // Recall beside its chance level: 1906 Twemoji images, 1905 distinct captions.
    assert!(
        stdout.contains("validation (1906 images, 1905 distinct captions)"),
        "{stdout}"
    );
    for (name, chance) in [
        ("image_to_text_R@1", 1.0 / 1905.0),
        ("image_to_text_R@10", 10.0 / 1905.0),
    ] {
        let (value, c) = metric(&stdout, name);
        assert!((0.0..=1.0).contains(&value), "{name} = {value}");
        let c = c.unwrap_or_else(|| panic!("{name} has no chance level: {stdout}"));
        assert!(
            (c - chance).abs() < 5e-5,
            "{name}: chance {c}, expected {chance}"
        );
    }
    let (_, c) = metric(&stdout, "text_to_image_R@10");
    assert!((c.unwrap() - 10.0 / 1906.0).abs() < 1e-4, "{stdout}");
    assert!(
        stdout.contains("a drawing style the model never saw in training")
            && stdout.contains("of a random ranking")
            && stdout.contains("README.md"),
        "{stdout}"
    );

    // The six example queries, each with its rank and every hit with its own caption.
    let twemoji = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/emoji-twemoji");
    for (q, right) in [
        ("red apple", "1f34e.png"),
        ("dog face", "1f436.png"),
        ("rocket", "1f680.png"),
        ("pizza", "1f355.png"),
        ("smiling face with sunglasses", "1f60e.png"),
        ("france flag", "1f1eb-1f1f7.png"),
    ] {
        let head = format!("  \"{q}\": the right image at rank ");
        let at = stdout
            .find(&head)
            .unwrap_or_else(|| panic!("no {q:?} example: {stdout}"));
        let rest = &stdout[at + head.len()..];
        let rank: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
        assert!((1..=1906).contains(&rank), "{q}: rank {rank}");
        let top3: Vec<&str> = rest.lines().skip(1).take(3).collect();
        let ticked = top3.iter().position(|l| l.contains('✓')).map(|r| r + 1);
        assert_eq!(ticked, Some(rank).filter(|&r| r <= 3), "{q}: {top3:?}");
        for hit in top3 {
            let file = hit.split_whitespace().nth(1).unwrap();
            let caption = std::fs::read_to_string(twemoji.join(file).with_extension("txt"))
                .unwrap_or_else(|e| panic!("{file} (line {hit:?}): {e}"));
            assert!(hit.contains(caption.trim()), "{hit:?} lacks {caption:?}");
            assert_eq!(hit.contains('✓'), file == right, "{hit}");
        }
    }

    // The next steps, run as printed (the server on any free port instead of 1234, the
    // fine-tuning on a folder of eight pairs for one step).
    let steps: Vec<Vec<String>> = stdout
        .split("\nnext steps:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no next steps: {stdout}"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(words)
        .collect();
    assert_eq!(
        steps
            .iter()
            .map(|c| c.get(1).map_or("", String::as_str))
            .collect::<Vec<_>>(),
        ["index", "search", "serve", "train"],
        "{stdout}"
    );
    assert!(steps.iter().all(|c| c[0] == exe), "{steps:?}");
    run_in(dir, &steps[0]);
    let found = run_in(dir, &steps[1]);
    assert!(found.contains(".png"), "{found}");

    let mut server = Command::new(&steps[2][0])
        .args(&steps[2][1..])
        .args(["--port", "0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?}"
    );

    let mine = dir.join("mine");
    std::fs::create_dir(&mine).unwrap();
    let noto = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/emoji-noto");
    for stem in ["1f34e", "1f436", "1f680", "1f355"] {
        for ext in ["png", "txt"] {
            let f = format!("{stem}.{ext}");
            std::fs::copy(noto.join(&f), mine.join(&f)).unwrap();
        }
    }
    let mut tune: Vec<String> = steps[3]
        .iter()
        .map(|w| {
            if w == "YOUR_FOLDER" {
                s(&mine).into()
            } else {
                w.clone()
            }
        })
        .collect();
    assert!(tune.contains(&s(&mine).to_string()), "{tune:?}");
    tune.extend(["--steps", "1", "--batch-size", "4"].map(String::from));
    run_in(dir, &tune);
    assert!(dir.join("fine-tuned/final/model.safetensors").is_file());
}
