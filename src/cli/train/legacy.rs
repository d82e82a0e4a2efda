//! `run.json` as `clip train` wrote it before it saved a [`clip::training::RunConfig`]: the
//! command line's options by field name, enums by Rust variant name ("ImageText", "NtXent").
//! Such a file is read back as the command line it recorded, so it resumes with the meaning
//! it had.

use anyhow::{anyhow, bail, Result};
use clap::{Args, FromArgMatches, ValueEnum};
use clip::training::{LossKind, Objective, Precision, Projection, ScheduleKind};
use clip::DeviceKind;
use serde_json::Value;

use super::args::TrainArgs;

/// Whether `json` is a run.json of the old form (the new one holds a `train` object).
pub fn is_legacy(json: &Value) -> bool {
    json.get("train").is_none()
}

/// The options an old run.json recorded. A field it lacks takes its flag's default, as it
/// did then; a bundled run (whose file named the bundled folder) is the bundled run again.
pub fn args(json: &Value) -> Result<TrainArgs> {
    let fields = json
        .as_object()
        .ok_or_else(|| anyhow!("not a JSON object"))?;
    let cmd = TrainArgs::augment_args(clap::Command::new("train").no_binary_name(true));
    let mut argv: Vec<String> = Vec::new();
    for arg in cmd.get_arguments() {
        let (Some(long), Some(value)) = (arg.get_long(), fields.get(arg.get_id().as_str())) else {
            continue;
        };
        if arg.get_id().as_str() == "data" && is_bundled(fields) {
            continue;
        }
        let values = match value {
            Value::Null | Value::Bool(false) => continue,
            Value::Bool(true) => {
                argv.push(format!("--{long}"));
                continue;
            }
            Value::Array(items) => items.iter().map(word).collect::<Result<_>>()?,
            other => vec![variant(arg.get_id().as_str(), word(other)?)?],
        };
        for v in values {
            argv.extend([format!("--{long}"), v]);
        }
    }
    // Image–text runs on the user's data trained at 1e-3 when these files were written; the
    // default has since moved (`IMAGE_TEXT_LR`), and a resumed run keeps the meaning it had.
    let lr_unset = fields.get("lr").is_none_or(Value::is_null);
    if lr_unset && !is_bundled(fields) && objective(fields) == Objective::ImageText {
        argv.extend(["--lr".into(), "0.001".into()]);
    }
    let matches = cmd.try_get_matches_from(&argv)?;
    Ok(TrainArgs::from_arg_matches(&matches)?)
}

/// Whether the old file's data is the bundled sample of its objective.
fn objective(fields: &serde_json::Map<String, Value>) -> Objective {
    let objective = fields.get("objective").and_then(Value::as_str);
    match objective.map(|o| variant("objective", o.to_string())) {
        Some(Ok(o)) => Objective::from_str(&o, false).unwrap_or_default(),
        _ => Objective::default(),
    }
}

fn is_bundled(fields: &serde_json::Map<String, Value>) -> bool {
    let bundled = clip::training::bundled(objective(fields)).0;
    fields.get("data") == Some(&Value::from(vec![bundled.display().to_string()]))
}

/// A scalar as a command-line word.
fn word(v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        other => bail!("unexpected value {other}"),
    }
}

/// An enum option's Rust variant name as its command-line value; other values unchanged.
fn variant(field: &str, value: String) -> Result<String> {
    fn named<T: ValueEnum + std::fmt::Debug>(value: &str) -> Result<String> {
        let found = T::value_variants()
            .iter()
            .find(|v| format!("{v:?}") == value);
        let found = found.and_then(|v| v.to_possible_value());
        found
            .map(|p| p.get_name().to_string())
            .ok_or_else(|| anyhow!("unknown value {value:?}"))
    }
    match field {
        "objective" => named::<Objective>(&value),
        "loss" => named::<LossKind>(&value),
        "schedule" => named::<ScheduleKind>(&value),
        "precision" => named::<Precision>(&value),
        "device" => named::<DeviceKind>(&value),
        "projection" => named::<Projection>(&value),
        _ => Ok(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file `clip train` wrote before the refactor means the flags it recorded.
    #[test]
    fn an_old_run_json_reads_as_its_command_line() {
        let text = include_str!("../../../tests/fixtures/old_run/run.json");
        let json: Value = serde_json::from_str(text).unwrap();
        assert!(is_legacy(&json));
        let c = args(&json).unwrap().config().unwrap();
        assert_eq!(c.data, [std::path::PathBuf::from("data/emoji-noto")]);
        assert_eq!(c.init.as_deref(), Some("tests/fixtures/hf_tiny"));
        let t = &c.train;
        assert_eq!(
            (t.steps, t.batch_size, t.save_every, t.log_every),
            (4, 8, 2, 1)
        );
        assert_eq!(
            (t.loss, t.schedule),
            (LossKind::Debiased, ScheduleKind::Constant)
        );
        assert_eq!((t.augment.scale, t.augment.hflip), ([0.8, 1.0], 0.5));
        assert_eq!(t.lr, 1e-3, "the default when the file was written");
        assert_eq!(
            (c.examples, t.cache.mode),
            (2, clip::training::CacheMode::Off)
        );
        // A bundled run is the bundled run again, with its own schedule.
        let bundled = clip::training::bundled(Objective::ImageText).0;
        let mut old = json.clone();
        old["data"] = Value::from(vec![bundled.display().to_string()]);
        old["steps"] = Value::Null;
        old["lock_text"] = Value::Bool(true);
        let c = args(&old).unwrap().config().unwrap();
        assert!(c.is_bundled() && c.train.lock_text);
        assert_eq!(
            c.train.steps,
            clip::training::demo(Objective::ImageText).steps
        );
    }
}
