//! Hugging Face checkpoint directories: `config.json` plus `model.safetensors`, or sharded
//! `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`. Tensor names are the
//! transformers `LlamaForCausalLM` names; f32, bf16 and f16 are read (and computed in f32).

use super::safetensors::{write_safetensors, Dtype, SafeTensorsFile, TensorOut};
use crate::config::LlamaConfig;
use crate::files::write_json;
use crate::model::Llama;
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// Loads a model from a Hugging Face checkpoint directory.
pub fn load_hf(dir: &Path) -> Result<Llama> {
    let cfg = LlamaConfig::from_hf_file(&dir.join("config.json"))?;
    let files = open_weight_files(dir)?;
    let mut model = Llama::from_params(cfg.clone(), vec![0.0; crate::model::ParamLayout::new(&cfg).total]);
    let tensors = model.layout.hf_tensors(&cfg);
    let mut wanted = BTreeSet::new();
    for t in &tensors {
        wanted.insert(t.name.as_str());
        let f = files
            .iter()
            .find(|f| f.tensors.contains_key(&t.name))
            .with_context(|| format!("{}: tensor `{}` is missing from the checkpoint", dir.display(), t.name))?;
        let info = f.info(&t.name)?;
        ensure!(
            info.shape == t.shape,
            "{}: tensor `{}` has shape {:?} but config.json implies {:?}",
            f.path.display(),
            t.name,
            info.shape,
            t.shape
        );
        f.read_f32_into(&t.name, &mut model.params[t.range.clone()])?;
    }
    for f in &files {
        for name in f.tensors.keys() {
            // Older Llama checkpoints store RoPE's inverse frequencies as a buffer; they are derived.
            if !wanted.contains(name.as_str()) && !name.ends_with("rotary_emb.inv_freq") {
                bail!("{}: unknown tensor `{name}` (not part of a Llama model with this config)", f.path.display());
            }
        }
    }
    Ok(model)
}

/// The format every weight of a checkpoint directory is stored in, where they share one (what
/// export and inference keep unless asked for another).
pub fn stored_dtype(dir: &Path) -> Result<Option<Dtype>> {
    let files = open_weight_files(dir)?;
    let mut dtypes = files.iter().flat_map(|f| f.tensors.values().map(|t| t.dtype));
    let first = dtypes.next().flatten();
    Ok(if dtypes.all(|d| d == first) { first } else { None })
}

fn open_weight_files(dir: &Path) -> Result<Vec<SafeTensorsFile>> {
    let index = dir.join(INDEX);
    if index.exists() {
        let text = std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
        let names: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        let files = names.into_iter().map(|n| SafeTensorsFile::open(&dir.join(n))).collect::<Result<Vec<_>>>()?;
        for (tensor, file) in map {
            let file = file.as_str().unwrap_or("");
            let f = files.iter().find(|f| f.path.file_name().map(|x| x == file).unwrap_or(false));
            ensure!(
                f.map(|f| f.tensors.contains_key(tensor)).unwrap_or(false),
                "{}: says `{tensor}` is in {file}, which does not hold it",
                index.display()
            );
        }
        Ok(files)
    } else {
        let single = dir.join(SINGLE);
        ensure!(single.exists(), "{}: neither {SINGLE} nor {INDEX} found", dir.display());
        Ok(vec![SafeTensorsFile::open(&single)?])
    }
}

/// Writes `model` as a Hugging Face checkpoint directory that transformers loads as
/// `LlamaForCausalLM`. Shards when the weights exceed `max_shard_bytes` (0: never). A model with
/// LoRA adapters is written with them merged.
pub fn save_hf(model: &Llama, dir: &Path, dtype: Dtype, max_shard_bytes: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cfg_json = model.cfg.to_hf_json();
    cfg_json["torch_dtype"] = Value::from(match dtype {
        Dtype::F32 => "float32",
        Dtype::BF16 => "bfloat16",
        Dtype::F16 => "float16",
    });
    write_json(&dir.join("config.json"), &cfg_json)?;
    let tensors = model.layout.hf_tensors(&model.cfg);
    // a model with LoRA adapters is written merged, one adapted tensor's copy at a time
    type Merge<'m> = Box<dyn Fn(&mut [f32]) + Sync + 'm>;
    let merges: Vec<Option<Merge>> = tensors
        .iter()
        .map(|t| {
            let a = model.adapters.as_ref()?;
            let target = a.targets.iter().find(|g| g.weight == t.range)?;
            Some(Box::new(move |w: &mut [f32]| a.add_delta(target, w)) as Merge)
        })
        .collect();
    let mut shards: Vec<Vec<TensorOut>> = vec![vec![]];
    let mut size = 0u64;
    for (t, merge) in tensors.iter().zip(&merges) {
        let bytes = (t.range.len() * dtype.size()) as u64;
        if max_shard_bytes > 0 && size > 0 && size + bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        size += bytes;
        shards.last_mut().unwrap().push(TensorOut {
            name: t.name.clone(),
            shape: t.shape.clone(),
            data: &model.params[t.range.clone()],
            plus: merge.as_deref(),
        });
    }
    let mut meta = Map::new();
    meta.insert("format".into(), "pt".into());
    if shards.len() == 1 {
        write_safetensors(&dir.join(SINGLE), &shards[0], dtype, &meta)?;
        let _ = std::fs::remove_file(dir.join(INDEX));
        return Ok(());
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (i, shard) in shards.iter().enumerate() {
        let fname = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_safetensors(&dir.join(&fname), shard, dtype, &meta)?;
        for t in shard {
            weight_map.insert(t.name.clone(), Value::from(fname.clone()));
        }
    }
    let total: usize = tensors.iter().map(|t| t.range.len() * dtype.size()).sum();
    write_json(&dir.join(INDEX), &serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map}))?;
    let _ = std::fs::remove_file(dir.join(SINGLE));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("tinyllama-hf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn small() -> LlamaConfig {
        let mut c = LlamaConfig::preset("tiny-10m").unwrap();
        c.vocab_size = 100;
        c.num_hidden_layers = 2;
        c
    }

    #[test]
    fn save_load_single_and_sharded() {
        let m = Llama::new_init(small(), 1);
        for (tag, shard) in [("single", 0u64), ("sharded", 200_000)] {
            let d = tmpdir(tag);
            save_hf(&m, &d, Dtype::F32, shard).unwrap();
            assert_eq!(d.join(INDEX).exists(), shard > 0);
            let back = load_hf(&d).unwrap();
            assert_eq!(back.cfg, m.cfg);
            assert!(back.params == m.params, "{tag}: weights differ after round trip");
            std::fs::remove_dir_all(d).unwrap();
        }
        let d = tmpdir("bf16");
        save_hf(&m, &d, Dtype::BF16, 0).unwrap();
        let back = load_hf(&d).unwrap();
        for (a, b) in back.params.iter().zip(&m.params) {
            assert_eq!(*a, half::bf16::from_f32(*b).to_f32());
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mismatched_or_missing_tensors_are_named() {
        let m = Llama::new_init(small(), 1);
        let d = tmpdir("bad");
        save_hf(&m, &d, Dtype::F32, 0).unwrap();
        // config says more layers than the weights hold
        let mut c = m.cfg.to_hf_json();
        c["num_hidden_layers"] = 3.into();
        write_json(&d.join("config.json"), &c).unwrap();
        let err = format!("{:#}", load_hf(&d).err().unwrap());
        assert!(err.contains("model.layers.2.input_layernorm.weight") && err.contains("missing"), "{err}");
        // config with another width
        let mut c = m.cfg.to_hf_json();
        c["intermediate_size"] = 300.into();
        write_json(&d.join("config.json"), &c).unwrap();
        let err = format!("{:#}", load_hf(&d).err().unwrap());
        assert!(err.contains("mlp.gate_proj.weight") && err.contains("shape"), "{err}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
