//! How a model is named from the Hugging Face Hub (`--revision`, `--hf-file`, `--offline`, on
//! every command that names a model), and `tinyllama download`.

use anyhow::Result;
use clap::Args;
use std::path::{Path, PathBuf};
use tinyllama::hub::{FetchOptions, HubId, Settings, Wanted};

/// Flags for a model named by Hub id (`org/name`, `org/name:Q4_0`); a local path always wins.
#[derive(Args, Clone)]
pub struct HubArgs {
    /// For a model named by Hub id: the branch, tag or commit to use.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// For a Hub id of a GGUF repository: the file to use (instead of `org/name:TAG`).
    #[arg(long)]
    pub hf_file: Option<String>,
    /// Read only the Hugging Face cache, as HF_HUB_OFFLINE=1 does: no request to the Hub.
    #[arg(long)]
    pub offline: bool,
}

impl HubArgs {
    fn options(&self, progress: bool) -> FetchOptions {
        FetchOptions { revision: self.revision.clone(), hf_file: self.hf_file.clone(), offline: self.offline, progress }
    }

    /// The command's model: a local path, or a Hub id fetched into the cache (said on stderr).
    pub fn locate(&self, name: &Path) -> Result<PathBuf> {
        locate(name, &self.options(true))
    }

    /// Another model of the command (`--draft`, `--ref-model`): `--revision` and `--hf-file`
    /// concern the command's model, so this one is at `main` (or its own `:TAG`).
    pub fn locate_other(&self, name: &Path) -> Result<PathBuf> {
        locate(name, &FetchOptions { offline: self.offline, ..FetchOptions::default() })
    }
}

fn locate(name: &Path, o: &FetchOptions) -> Result<PathBuf> {
    let (path, note) = tinyllama::hub::locate_model(name, o, &Settings::from_env())?;
    if let Some(n) = note {
        eprintln!("{n}");
    }
    Ok(path)
}

/// `tinyllama download`: fetch a model (or files) from the Hub into the cache, run nothing.
#[derive(Args)]
pub struct DownloadArgs {
    /// The repository: `org/name`, or `org/name:TAG` for one GGUF file of a GGUF repository.
    repo: String,
    /// Files to fetch (fnmatch patterns, e.g. "*.json"; may be given several times) [default: what
    /// the model needs: its safetensors weights, config, tokenizer and chat-template files].
    #[arg(long)]
    include: Vec<String>,
    #[command(flatten)]
    hub: HubArgs,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

pub fn download(a: DownloadArgs) -> Result<()> {
    let Some(id) = HubId::parse(&a.repo) else {
        anyhow::bail!("{} is not a Hub repository id: name it as org/name or org/name:TAG", a.repo);
    };
    let want = if a.include.is_empty() { Wanted::Model } else { Wanted::Matching(&a.include) };
    let fetched = tinyllama::hub::fetch(&id, want, &a.hub.options(!a.quiet), &Settings::from_env())?;
    eprintln!("{}", fetched.note);
    println!("{}", fetched.path.display());
    Ok(())
}
