//! AWS shared profile files (`~/.aws/credentials`, `~/.aws/config`): `object_store` reads
//! credentials from the environment (and instance or container metadata) only, while most
//! people's keys live in these files. Static keys, region and `endpoint_url` are read; SSO,
//! `role_arn` and `credential_process` profiles are not.

use std::collections::HashMap;
use std::path::PathBuf;

/// What a profile says, where the environment does not already.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct AwsProfile {
    /// Pairs of `object_store` S3 config keys and values.
    pub options: Vec<(&'static str, String)>,
}

/// The `key = value` lines of section `[name]` of an INI file.
fn section(text: &str, name: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(head) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = head.trim() == name;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            out.entry(k.trim().to_ascii_lowercase())
                .or_insert_with(|| v.trim().to_string());
        }
    }
    out
}

impl AwsProfile {
    /// Reads the profile named by `AWS_PROFILE` (else `default`) through `env` (an
    /// environment lookup) and `read` (a file reader), so tests need neither.
    pub fn load(
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&PathBuf) -> Option<String>,
    ) -> Self {
        let home = env("HOME").map(PathBuf::from);
        let file = |var: &str, default: &str| {
            env(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(default)))
        };
        let name = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        let creds = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
            .and_then(|p| read(&p))
            .map(|t| section(&t, &name))
            .unwrap_or_default();
        let config_section = match name.as_str() {
            "default" => "default".to_string(),
            n => format!("profile {n}"),
        };
        let config = file("AWS_CONFIG_FILE", "config")
            .and_then(|p| read(&p))
            .map(|t| section(&t, &config_section))
            .unwrap_or_default();
        let get = |k: &str| creds.get(k).or_else(|| config.get(k)).cloned();
        let mut options = Vec::new();
        if env("AWS_ACCESS_KEY_ID").is_none() {
            if let (Some(id), Some(secret)) =
                (get("aws_access_key_id"), get("aws_secret_access_key"))
            {
                options.push(("aws_access_key_id", id));
                options.push(("aws_secret_access_key", secret));
                if let Some(token) = get("aws_session_token") {
                    options.push(("aws_session_token", token));
                }
            }
        }
        if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            if let Some(region) = get("region") {
                options.push(("aws_region", region));
            }
        }
        if env("AWS_ENDPOINT_URL").is_none() && env("AWS_ENDPOINT_URL_S3").is_none() {
            if let Some(endpoint) = get("endpoint_url") {
                options.push(("aws_endpoint", endpoint));
            }
        }
        Self { options }
    }

    /// The profile of this process's environment and files.
    pub fn from_env() -> Self {
        Self::load(
            |k| std::env::var(k).ok().filter(|v| !v.is_empty()),
            |p| std::fs::read_to_string(p).ok(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREDS: &str = "# keys\n[default]\naws_access_key_id = AKD\naws_secret_access_key=SD\n\n\
                         [work]\naws_access_key_id = AKW\naws_secret_access_key = SW\n\
                         aws_session_token = TW\n";
    const CONFIG: &str = "[default]\nregion = eu-west-1\n[profile work]\nregion = us-west-2\n\
                          endpoint_url = http://127.0.0.1:9000\n";

    fn load(vars: &[(&str, &str)]) -> Vec<(&'static str, String)> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        AwsProfile::load(
            |k| vars.get(k).cloned(),
            |p| match p.to_str()? {
                "/h/.aws/credentials" => Some(CREDS.into()),
                "/h/.aws/config" => Some(CONFIG.into()),
                _ => None,
            },
        )
        .options
    }

    #[test]
    fn the_named_profile_fills_what_the_environment_lacks() {
        let got = load(&[("HOME", "/h")]);
        assert_eq!(
            got,
            [
                ("aws_access_key_id", "AKD".to_string()),
                ("aws_secret_access_key", "SD".into()),
                ("aws_region", "eu-west-1".into())
            ]
        );
        let got = load(&[("HOME", "/h"), ("AWS_PROFILE", "work")]);
        assert_eq!(got.len(), 5, "{got:?}");
        assert!(got.contains(&("aws_session_token", "TW".into())));
        assert!(got.contains(&("aws_endpoint", "http://127.0.0.1:9000".into())));
    }

    #[test]
    fn the_environment_wins_and_missing_files_are_fine() {
        let got = load(&[
            ("HOME", "/h"),
            ("AWS_ACCESS_KEY_ID", "E"),
            ("AWS_REGION", "r"),
        ]);
        assert!(got.is_empty(), "{got:?}");
        assert!(load(&[("HOME", "/nowhere")]).is_empty());
    }
}
