//! Which of a repository's files a model needs: a model directory's weights (safetensors, whole
//! or sharded with its index), config, tokenizer and chat-template files; or one GGUF file,
//! chosen by a quantization tag as llama.cpp's `-hf org/name:Q4_K_M` chooses it.

use anyhow::{bail, Context, Result};

/// A model directory's files besides its weights (those present are fetched).
pub const DIRECTORY_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
];

/// The index of sharded safetensors weights.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

/// The GGUF file llama.cpp takes from a repository of many when no tag is given.
const DEFAULT_GGUF_TAG: &str = "Q4_K_M";

#[derive(Debug, PartialEq)]
pub enum Plan {
    /// A model directory: these files, and (after the index is read) its shards.
    Directory { files: Vec<String>, index: Option<String> },
    /// One GGUF file.
    Gguf(String),
}

/// What to fetch of a repository holding `files` (its top-level and nested paths).
/// `tag`: `org/name:TAG`; `hf_file`: `--hf-file`.
pub fn plan(repo: &str, files: &[String], tag: Option<&str>, hf_file: Option<&str>) -> Result<Plan> {
    if let Some(f) = hf_file {
        if !files.iter().any(|x| x == f) {
            bail!("{repo} has no file {f} (its GGUF files: {})", list_or_none(&gguf_files(files)));
        }
        return Ok(Plan::Gguf(f.to_string()));
    }
    let ggufs = gguf_files(files);
    if let Some(tag) = tag {
        return pick_gguf(repo, &ggufs, Some(tag)).map(Plan::Gguf);
    }
    let has = |f: &str| files.iter().any(|x| x == f);
    let top_safetensors: Vec<&String> =
        files.iter().filter(|f| !f.contains('/') && f.ends_with(".safetensors")).collect();
    if has("config.json") && (has(SAFETENSORS_INDEX) || !top_safetensors.is_empty()) {
        let mut wanted: Vec<String> = DIRECTORY_FILES.iter().filter(|f| has(f)).map(|f| f.to_string()).collect();
        let index = has(SAFETENSORS_INDEX).then(|| SAFETENSORS_INDEX.to_string());
        if index.is_none() {
            wanted.extend(top_safetensors.into_iter().cloned());
        }
        return Ok(Plan::Directory { files: wanted, index });
    }
    if !ggufs.is_empty() {
        return pick_gguf(repo, &ggufs, None).map(Plan::Gguf);
    }
    if has("pytorch_model.bin") || files.iter().any(|f| f.starts_with("pytorch_model-")) {
        bail!("{repo} has only PyTorch .bin weights; tinyllama reads safetensors and GGUF (convert it, or choose a repository with model.safetensors)");
    }
    bail!("{repo} holds no model tinyllama can read: no config.json with safetensors weights, and no .gguf file")
}

/// The shard files an index names, each once, in order.
pub fn shards_of_index(text: &str, name: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(text).with_context(|| format!("{name} is not JSON"))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).with_context(|| format!("{name} has no weight_map"))?;
    let mut shards: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f.as_str().with_context(|| format!("{name}: a weight_map value is not a file name"))?;
        if f.contains("..") || f.starts_with('/') {
            bail!("{name} names a shard outside the repository: {f}");
        }
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    Ok(shards)
}

fn gguf_files(files: &[String]) -> Vec<&str> {
    let is_model = |f: &&String| f.to_lowercase().ends_with(".gguf") && !f.to_lowercase().contains("mmproj");
    files.iter().filter(is_model).map(String::as_str).collect()
}

fn list_or_none(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Whether `file`'s name carries `tag` as a whole part: `….Q4_0.gguf`, `…-q4_0.gguf`.
fn has_tag(file: &str, tag: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_lowercase();
    let tag = tag.to_lowercase();
    name.match_indices(&tag).any(|(i, _)| {
        let before = name[..i].chars().last();
        let after = name[i + tag.len()..].chars().next();
        before.is_none_or(|c| matches!(c, '.' | '-' | '_')) && after.is_some_and(|c| matches!(c, '.' | '-'))
    })
}

fn pick_gguf(repo: &str, ggufs: &[&str], tag: Option<&str>) -> Result<String> {
    if ggufs.is_empty() {
        bail!("{repo} has no .gguf file (for a model directory, drop the :{} tag)", tag.unwrap_or(""));
    }
    let chosen = match tag {
        None if ggufs.len() == 1 => return Ok(ggufs[0].to_string()),
        None => DEFAULT_GGUF_TAG,
        Some(t) => t,
    };
    let matching: Vec<&str> = ggufs.iter().copied().filter(|f| has_tag(f, chosen)).collect();
    match matching.as_slice() {
        [one] => Ok(one.to_string()),
        [] if tag.is_none() => {
            bail!("{repo} holds several GGUF files: name one with {repo}:TAG or --hf-file FILE ({})", ggufs.join(", "))
        }
        [] => bail!("{repo} has no GGUF file tagged {chosen} (its GGUF files: {})", ggufs.join(", ")),
        many if many.iter().any(|f| f.contains("-of-")) => {
            bail!(
                "{repo}:{chosen} is split into several files ({}); tinyllama reads one-file GGUF models",
                many.join(", ")
            )
        }
        many => bail!("{repo}: several GGUF files match {chosen} ({}); choose one with --hf-file", many.join(", ")),
    }
}

/// A repository path that stays inside the snapshot folder (huggingface_hub's
/// `_validate_relative_filename`): relative, no empty, `.` or `..` part. A listing from the network
/// is untrusted.
pub fn is_safe_repo_path(f: &str) -> bool {
    !f.is_empty()
        && !f.starts_with('/')
        && !f.contains('\\')
        && f.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// fnmatch as huggingface_hub's `allow_patterns` uses it: `*` matches anything (`/` too), `?` one
/// character; a pattern ending in `/` matches everything under that folder.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let pattern = if pattern.ends_with('/') { format!("{pattern}*") } else { pattern.to_string() };
    fn go(p: &[char], s: &[char]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some(('*', rest)) => (0..=s.len()).any(|i| go(rest, &s[i..])),
            Some(('?', rest)) => !s.is_empty() && go(rest, &s[1..]),
            Some((c, rest)) => s.first() == Some(c) && go(rest, &s[1..]),
        }
    }
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    go(&p, &s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_model_directory_takes_its_weights_config_and_tokenizer() {
        let files = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "eval_results.json",
        ]);
        let Plan::Directory { files: got, index } = plan("o/n", &files, None, None).unwrap() else { panic!() };
        assert_eq!(index, None);
        let mut want = names(&[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer.model",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "model.safetensors",
        ]);
        let mut got = got;
        got.sort();
        want.sort();
        assert_eq!(got, want);
        let sharded = names(&["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors"]);
        let Plan::Directory { index, files } = plan("o/n", &sharded, None, None).unwrap() else { panic!() };
        assert_eq!((index.as_deref(), files), (Some(SAFETENSORS_INDEX), names(&["config.json"])));
        let idx = r#"{"metadata":{},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors","c":"m-1.safetensors"}}"#;
        assert_eq!(shards_of_index(idx, "i").unwrap(), names(&["m-1.safetensors", "m-2.safetensors"]));
        assert!(shards_of_index(r#"{"weight_map":{"a":"../x"}}"#, "i").is_err());
        let bin = plan("o/n", &names(&["config.json", "pytorch_model.bin"]), None, None).unwrap_err();
        assert!(format!("{bin}").contains("PyTorch .bin"), "{bin}");
    }

    #[test]
    fn gguf_files_are_chosen_by_tag_as_llama_cpp_does() {
        let files = names(&[
            "tinyllama-1.1b-chat-v1.0.Q2_K.gguf",
            "tinyllama-1.1b-chat-v1.0.Q4_0.gguf",
            "tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
            "tinyllama-1.1b-chat-v1.0.Q4_K_S.gguf",
            "README.md",
        ]);
        let g = |t: Option<&str>| plan("o/n", &files, t, None);
        assert_eq!(g(Some("Q4_0")).unwrap(), Plan::Gguf("tinyllama-1.1b-chat-v1.0.Q4_0.gguf".into()));
        assert_eq!(g(Some("q4_k_m")).unwrap(), Plan::Gguf("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf".into()));
        assert_eq!(g(None).unwrap(), Plan::Gguf("tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf".into()));
        let e = format!("{}", g(Some("Q8_0")).unwrap_err());
        assert!(e.contains("no GGUF file tagged Q8_0") && e.contains("Q2_K.gguf"), "{e}");
        assert!(!has_tag("x.Q4_K_M.gguf", "Q4_K"));
        let one = names(&["model-f16.gguf"]);
        assert_eq!(plan("o/n", &one, None, None).unwrap(), Plan::Gguf("model-f16.gguf".into()));
        assert!(plan("o/n", &files, None, Some("nope.gguf")).is_err());
    }

    #[test]
    fn only_paths_inside_the_snapshot_are_taken() {
        assert!(is_safe_repo_path("config.json") && is_safe_repo_path("onnx/model.onnx"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/", "a\\b"] {
            assert!(!is_safe_repo_path(bad), "{bad}");
        }
    }

    #[test]
    fn include_patterns_are_fnmatch() {
        assert!(glob_match("*.json", "config.json") && glob_match("*.json", "sub/x.json"));
        assert!(glob_match("model-0000?-of-00002.safetensors", "model-00001-of-00002.safetensors"));
        assert!(glob_match("onnx/", "onnx/model.onnx") && !glob_match("*.gguf", "config.json"));
    }
}
