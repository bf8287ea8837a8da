//! PEFT's LoRA adapter files: `adapter_model.safetensors` (`base_model.model.<module>.lora_A.weight`
//! `[r, in]`, `lora_B.weight` `[out, r]`) and `adapter_config.json` (`r`, `lora_alpha`,
//! `target_modules`), read into and written from [`Adapters`].

use super::safetensors::{write_safetensors, Dtype, SafeTensorsFile, TensorOut};
use crate::config::LlamaConfig;
use crate::files::write_json;
use crate::model::lora::Adapters;
use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use std::path::Path;

/// PEFT's module names for the seven linear layers of a Llama block.
pub const TARGETS: [(&str, &str); 7] = [
    ("q", "self_attn.q_proj"),
    ("k", "self_attn.k_proj"),
    ("v", "self_attn.v_proj"),
    ("o", "self_attn.o_proj"),
    ("gate", "mlp.gate_proj"),
    ("up", "mlp.up_proj"),
    ("down", "mlp.down_proj"),
];

/// `adapter_model.safetensors` + `adapter_config.json` as PEFT writes them.
pub fn save_peft(l: &Adapters, dir: &Path, base_model: &str) -> Result<()> {
    let name = |m: &str, ab: &str| format!("base_model.model.{m}.lora_{ab}.weight");
    let mut tensors = vec![];
    for t in &l.targets {
        tensors.push(TensorOut {
            name: name(&t.module, "A"),
            shape: vec![l.rank, t.inp],
            data: &l.weights[t.a.clone()],
            plus: None,
        });
        tensors.push(TensorOut {
            name: name(&t.module, "B"),
            shape: vec![t.out, l.rank],
            data: &l.weights[t.b.clone()],
            plus: None,
        });
    }
    write_safetensors(&dir.join("adapter_model.safetensors"), &tensors, Dtype::F32, &Default::default())?;
    let mut modules: Vec<&str> = l.targets.iter().filter_map(|t| t.module.rsplit('.').next()).collect::<Vec<_>>();
    modules.sort();
    modules.dedup();
    write_json(
        &dir.join("adapter_config.json"),
        &json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": l.rank, "lora_alpha": l.alpha,
            "lora_dropout": 0.0, "bias": "none", "target_modules": modules, "fan_in_fan_out": false,
            "use_rslora": false, "init_lora_weights": true, "base_model_name_or_path": base_model}),
    )
}

/// Adapter weights from a PEFT `adapter_model.safetensors` (in `dir`), which must cover the same
/// targets and rank.
pub fn load_peft(l: &mut Adapters, dir: &Path) -> Result<()> {
    let path = dir.join("adapter_model.safetensors");
    let f = SafeTensorsFile::open(&path)?;
    for t in &l.targets {
        for (ab, range, shape) in [("A", &t.a, [l.rank, t.inp]), ("B", &t.b, [t.out, l.rank])] {
            let name = format!("base_model.model.{}.lora_{ab}.weight", t.module);
            let (v, dims) = f.read_f32(&name).with_context(|| format!("{}: no {name}", path.display()))?;
            if dims != shape {
                bail!(
                    "{}: {name} has shape {dims:?}, where this model's {} ({}×{}) at rank {} needs {shape:?}: the adapter is for another model or rank",
                    path.display(),
                    t.module,
                    t.out,
                    t.inp,
                    l.rank
                );
            }
            l.weights[range.clone()].copy_from_slice(&v);
        }
    }
    Ok(())
}

/// A PEFT adapter directory for a model of `cfg`: its config read (plain LoRA only: no rsLoRA,
/// DoRA or bias), its adapters built on the modules it names and their weights loaded, every
/// shape checked against the model.
pub fn read_adapter(dir: &Path, cfg: &LlamaConfig) -> Result<Adapters> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} is not a PEFT adapter directory (no adapter_config.json)", dir.display()))?;
    let c: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    ensure!(
        c["peft_type"].as_str().is_none_or(|t| t == "LORA"),
        "{}: peft_type {} is not LoRA",
        path.display(),
        c["peft_type"]
    );
    for (key, off) in [("use_rslora", json!(false)), ("use_dora", json!(false))] {
        ensure!(c[key].is_null() || c[key] == off, "{}: {key} is set, which tinyllama does not apply", path.display());
    }
    ensure!(
        c["bias"].as_str().is_none_or(|b| b == "none"),
        "{}: bias {} is not supported (only \"none\")",
        path.display(),
        c["bias"]
    );
    let rank = c["r"].as_u64().with_context(|| format!("{}: no rank `r`", path.display()))? as usize;
    let alpha = c["lora_alpha"].as_f64().with_context(|| format!("{}: no `lora_alpha`", path.display()))?;
    let names: Vec<String> = match &c["target_modules"] {
        serde_json::Value::Array(v) => v.iter().filter_map(|m| m.as_str().map(str::to_string)).collect(),
        serde_json::Value::String(s) => vec![s.clone()],
        _ => bail!("{}: no `target_modules`", path.display()),
    };
    let mut modules = vec![];
    for n in &names {
        let Some((_, suffix)) = TARGETS.iter().find(|(_, m)| m.ends_with(&format!(".{n}"))) else {
            bail!("{}: target module {n} is not a Llama linear layer (q_proj … down_proj)", path.display());
        };
        modules.push(suffix.to_string());
    }
    let mut a =
        Adapters::new(cfg, &modules, rank, alpha, 0).with_context(|| format!("the adapter {}", dir.display()))?;
    load_peft(&mut a, dir)?;
    Ok(a)
}
