//! Where the Hub is and where its cache lives, read from the environment exactly as
//! huggingface_hub reads it (`constants.py`): `HF_HOME`, `HF_HUB_CACHE` (or the older
//! `HUGGINGFACE_HUB_CACHE`), `HF_ENDPOINT`, `HF_TOKEN` (or the token file, `HF_TOKEN_PATH`),
//! `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`).

use std::path::PathBuf;

/// The Hub's public address, used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

#[derive(Clone, Debug)]
pub struct Settings {
    /// The Hub's base URL, without a trailing `/`.
    pub endpoint: String,
    /// The cache root (`models--org--name` folders live here).
    pub cache_dir: PathBuf,
    /// The access token, sent as `Authorization: Bearer` to the Hub itself (never to a CDN).
    pub token: Option<String>,
    /// No request at all: the cache alone.
    pub offline: bool,
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings::from_vars(|k| std::env::var(k).ok())
    }

    /// The settings from a variable lookup (the environment, or a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Settings {
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let home_dir = set("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"));
        let expand = |v: String| -> PathBuf {
            match v.strip_prefix("~/") {
                Some(rest) => home_dir.join(rest),
                None if v == "~" => home_dir.clone(),
                None => PathBuf::from(v),
            }
        };
        let hf_home = set("HF_HOME").map(expand).unwrap_or_else(|| {
            set("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home_dir.join(".cache")).join("huggingface")
        });
        let cache_dir = set("HF_HUB_CACHE")
            .or_else(|| set("HUGGINGFACE_HUB_CACHE"))
            .map(expand)
            .unwrap_or_else(|| hf_home.join("hub"));
        let token_file = set("HF_TOKEN_PATH").map(expand).unwrap_or_else(|| hf_home.join("token"));
        let token = set("HF_TOKEN")
            .or_else(|| set("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| std::fs::read_to_string(&token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let truthy = |k: &str| set(k).is_some_and(|v| ["1", "ON", "YES", "TRUE"].contains(&v.to_uppercase().as_str()));
        Settings {
            endpoint: set("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE") || truthy("TRANSFORMERS_OFFLINE"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Settings {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn variables_take_precedence_as_in_huggingface_hub() {
        let s = from(&[("HOME", "/h")]);
        assert_eq!(s.cache_dir, PathBuf::from("/h/.cache/huggingface/hub"));
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert!(!s.offline && s.token.is_none());
        let s = from(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]);
        assert_eq!(s.cache_dir, PathBuf::from("/x/huggingface/hub"));
        let s = from(&[("HOME", "/h"), ("HF_HOME", "~/hf"), ("HUGGINGFACE_HUB_CACHE", "/old")]);
        assert_eq!(s.cache_dir, PathBuf::from("/old"));
        let s = from(&[("HF_HOME", "/hf"), ("HUGGINGFACE_HUB_CACHE", "/old"), ("HF_HUB_CACHE", "/new")]);
        assert_eq!(s.cache_dir, PathBuf::from("/new"));
        let s = from(&[("HF_ENDPOINT", "http://127.0.0.1:9/"), ("HF_TOKEN", " hf_x\n"), ("HF_HUB_OFFLINE", "1")]);
        assert_eq!((s.endpoint.as_str(), s.token.as_deref(), s.offline), ("http://127.0.0.1:9", Some("hf_x"), true));
        assert!(from(&[("TRANSFORMERS_OFFLINE", "yes")]).offline);
        assert!(!from(&[("HF_HUB_OFFLINE", "0")]).offline);
    }

    #[test]
    fn the_token_file_is_read_when_hf_token_is_unset() {
        let dir = std::env::temp_dir().join(format!("tinyllama-hub-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "hf_file_token\n").unwrap();
        let home = dir.to_str().unwrap();
        assert_eq!(from(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file_token"));
        assert_eq!(from(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]).token.as_deref(), Some("hf_env"));
        std::fs::write(dir.join("other"), "hf_other").unwrap();
        let other = dir.join("other");
        assert_eq!(from(&[("HF_TOKEN_PATH", other.to_str().unwrap())]).token.as_deref(), Some("hf_other"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
