//! Generates and scores InstructEval's tasks ([`super::instruct`]): greedy (or seeded sampling)
//! decoding of at most the task's new tokens, EOS stops, the prediction is the decoded new
//! tokens (special tokens skipped); an item is correct iff the stripped prediction starts with
//! its label, a HumanEval completion iff its program passes. The items of a subtask share their
//! few-shot prefix: it is prefilled once into the decode engine's prefix cache and each item continues
//! from a copy; items decode together, and every item's tokens are those it gets alone.

use super::humaneval::{self, Outcome, Sandbox};
use super::instruct::{py_strip, GenItem, GenTask};
use crate::decode::{Engine, EngineOptions, Event, Request, SamplingOptions};
use crate::model::InferenceModel;
use crate::tokenizer::Tokenizer;
use anyhow::{ensure, Context, Result};
use rayon::prelude::*;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;

#[derive(Clone, Debug)]
pub struct GenOptions {
    /// Sequences decoding together.
    pub max_batch: usize,
    /// Greedy by default; HumanEval's paper run sampled at temperature 0.1.
    pub sampling: SamplingOptions,
    /// Samples per HumanEval problem (pass@k for k ≤ samples).
    pub samples: usize,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { max_batch: 16, sampling: SamplingOptions::default(), samples: 1 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SubtaskScore {
    pub subtask: String,
    pub n: usize,
    pub score: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenResult {
    pub task: String,
    /// `exact_match` (stripped prediction starts with the label) or `pass@1`.
    pub metric: String,
    /// MMLU: micro-average over items; BBH: mean over tasks; DROP: accuracy; HumanEval: pass@1.
    pub score: f64,
    /// Items scored (HumanEval: problems).
    pub n: usize,
    pub files: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subtasks: Vec<SubtaskScore>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pass_at_k: BTreeMap<String, f64>,
    pub shots: usize,
    /// Prompts that dropped shots to fit the input limit.
    pub shrunk_prompts: usize,
    /// Prompts still longer than the input limit (no shots left to drop, or HumanEval's).
    pub over_input_limit: usize,
    /// Items whose prompt plus new tokens ran past the model's trained context.
    pub past_context: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub excluded: Option<serde_json::Value>,
    pub sampling: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Set by the caller from [`generate_items`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<GenWork>,
    pub seconds: f64,
    pub items_per_s: f64,
}

impl GenTask {
    /// Positions the model must allow: the longest prompt plus the new tokens.
    pub fn positions_needed(&self) -> usize {
        self.items.iter().map(|i| i.tokens.len()).max().unwrap_or(0) + self.max_new
    }
}

fn describe_sampling(s: &SamplingOptions, samples: usize) -> String {
    let base = if s.temperature <= 0.0 {
        "greedy".to_string()
    } else {
        format!("temperature {}, top_k {}, top_p {}, seed {}", s.temperature, s.top_k, s.top_p, s.seed)
    };
    if samples > 1 {
        format!("{base}, {samples} samples per problem")
    } else {
        base
    }
}

/// The longest token prefix shared by the prompts that kept every shot (else by all).
fn shared_prefix(items: &[&GenItem], shots: usize) -> Vec<u32> {
    let full: Vec<&&GenItem> = items.iter().filter(|i| i.shots == shots).collect();
    let pool: Vec<&[u32]> = if full.is_empty() {
        items.iter().map(|i| i.tokens.as_slice()).collect()
    } else {
        full.iter().map(|i| i.tokens.as_slice()).collect()
    };
    let Some(first) = pool.first() else { return vec![] };
    let mut n = first.len();
    for p in &pool[1..] {
        n = n.min(first.iter().zip(p.iter()).take_while(|(a, b)| a == b).count());
    }
    first[..n].to_vec()
}

/// Where a task's generation time went.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GenWork {
    /// Shared few-shot prefixes: tokens computed once per subtask, and the seconds they took.
    pub prefix_tokens: usize,
    pub prefix_seconds: f64,
    /// Prompt tokens computed per item (after the shared prefix).
    pub item_prompt_tokens: usize,
    pub generated_tokens: usize,
}

/// New tokens for every item and sample (`[item][sample]`). `on_item` sees items finish.
pub fn generate_items(
    model: &InferenceModel,
    tok: &Tokenizer,
    task: &GenTask,
    opts: &GenOptions,
    on_item: &mut dyn FnMut(usize),
) -> Result<(Vec<Vec<Vec<u32>>>, GenWork)> {
    ensure!(!task.items.is_empty(), "task `{}` has no items", task.name);
    let need = task.positions_needed();
    ensure!(
        model.max_positions() >= need,
        "task `{}` needs {need} positions; the model allows {} (extend_positions first)",
        task.name,
        model.max_positions()
    );
    let samples = if task.name == "humaneval" { opts.samples.max(1) } else { 1 };
    let eos = crate::decode::end_ids(&model.cfg, tok);
    let mut engine = Engine::new(model, None, EngineOptions::for_model(model, opts.max_batch, need))?;
    let mut out: Vec<Vec<Vec<u32>>> = vec![vec![]; task.items.len()];
    let mut done = 0usize;
    let mut work = GenWork::default();
    // consecutive items of one subtask share a prefix
    let mut start = 0;
    while start < task.items.len() {
        let sub = &task.items[start].subtask;
        let end = start + task.items[start..].iter().take_while(|i| &i.subtask == sub).count();
        let group: Vec<&GenItem> = task.items[start..end].iter().collect();
        let prefix = shared_prefix(&group, task.shots);
        if prefix.len() >= 2 {
            let t0 = std::time::Instant::now();
            engine.add(Request::new(prefix.clone(), 0, opts.sampling.clone(), vec![]))?;
            engine.run(&mut |_, _| Ok(()))?;
            work.prefix_tokens += prefix.len();
            work.prefix_seconds += t0.elapsed().as_secs_f64();
        }
        // request id → (item of the group, sample)
        let mut index = std::collections::HashMap::new();
        for (j, item) in group.iter().enumerate() {
            for s in 0..samples {
                let k = ((start + j) * samples + s) as u64;
                let mut sampling = opts.sampling.clone();
                sampling.seed = sampling.seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let id = engine.add(Request::new(item.tokens.clone(), task.max_new, sampling, eos.clone()))?;
                index.insert(id, (j, s));
            }
        }
        let mut new: Vec<Vec<Vec<u32>>> = vec![vec![vec![]; samples]; group.len()];
        let mut left = vec![samples; group.len()];
        engine.run(&mut |_, ev| {
            match ev {
                Event::Token { seq, id, .. } => {
                    let (j, s) = index[&seq];
                    new[j][s].push(id);
                }
                Event::Finished { seq, reused, .. } => {
                    let (j, _) = index[&seq];
                    work.item_prompt_tokens += group[j].tokens.len() - reused;
                    left[j] -= 1;
                    if left[j] == 0 {
                        done += 1;
                        on_item(done);
                    }
                }
                Event::Failed { message, .. } => anyhow::bail!("{message}"),
                Event::PromptLogprobs { .. } => {}
            }
            Ok(())
        })?;
        for (j, toks) in new.into_iter().enumerate() {
            work.generated_tokens += toks.iter().map(Vec::len).sum::<usize>();
            out[start + j] = toks;
        }
        start = end;
    }
    Ok((out, work))
}

/// Scores `new_tokens` (from [`generate_items`]) and writes one `--log-samples` line per item
/// (per sample for HumanEval). `model_ctx`: the trained context, to count items that ran past it.
/// The caller sets `seconds` and `items_per_s` (this measures only the scoring).
pub fn score_task(
    model_ctx: Option<usize>,
    tok: &Tokenizer,
    task: &GenTask,
    new_tokens: &[Vec<Vec<u32>>],
    opts: &GenOptions,
    sandbox: Option<&Sandbox>,
    log: Option<&mut dyn Write>,
) -> Result<GenResult> {
    let t0 = std::time::Instant::now();
    let preds: Vec<Vec<String>> = new_tokens
        .iter()
        .map(|samples| samples.iter().map(|t| tok.decode(t)).collect::<Result<Vec<_>>>())
        .collect::<Result<_>>()?;
    let past: usize = match model_ctx {
        Some(ctx) => {
            task.items.iter().zip(new_tokens).filter(|(i, s)| s.iter().any(|t| i.tokens.len() + t.len() > ctx)).count()
        }
        None => 0,
    };
    if task.name == "humaneval" {
        let completions: Vec<Vec<String>> = preds
            .iter()
            .map(|s| s.iter().map(|p| humaneval::filter_code(&humaneval::fix_indents(p))).collect())
            .collect();
        let mut r =
            score_humaneval(task, &completions, sandbox, log, &describe_sampling(&opts.sampling, opts.samples))?;
        r.past_context = past;
        return Ok(r);
    }
    let mut log = log;
    let mut per_sub: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut correct_total = 0usize;
    for (item, p) in task.items.iter().zip(&preds) {
        let pred = &p[0];
        let correct = py_strip(pred).starts_with(item.target.as_str());
        correct_total += correct as usize;
        let e = per_sub.entry(item.subtask.as_str()).or_default();
        e.0 += 1;
        e.1 += correct as usize;
        if let Some(w) = log.as_deref_mut() {
            let mut v = json!({
                "task": task.name, "subtask": item.subtask, "index": item.index,
                "prompt_tokens": item.tokens.len(), "shots": item.shots,
                "prediction": pred, "target": item.target, "correct": correct,
            });
            if let Some(id) = &item.id {
                v["query_id"] = json!(id);
            }
            humaneval::write_line(w, &v)?;
        }
    }
    let subtasks: Vec<SubtaskScore> = task
        .subtasks
        .iter()
        .filter_map(|s| {
            per_sub.get(s.as_str()).map(|&(n, c)| SubtaskScore { subtask: s.clone(), n, score: c as f64 / n as f64 })
        })
        .collect();
    let n = task.items.len();
    let score = if task.name == "bbh" {
        subtasks.iter().map(|s| s.score).sum::<f64>() / subtasks.len() as f64
    } else {
        correct_total as f64 / n as f64
    };
    Ok(GenResult {
        task: task.name.clone(),
        metric: "exact_match".into(),
        score,
        n,
        files: task.files.iter().map(|f| f.display().to_string()).collect(),
        subtasks: if task.name == "drop" { vec![] } else { subtasks },
        pass_at_k: BTreeMap::new(),
        shots: task.shots,
        shrunk_prompts: task.items.iter().filter(|i| i.shots < task.shots).count(),
        over_input_limit: task.items.iter().filter(|i| i.tokens.len() > task.input_limit).count(),
        past_context: past,
        excluded: (task.name == "drop").then(|| {
            json!({"answers_differ": task.excluded_ambiguous, "shares_a_shot_passage": task.excluded_shared_passage})
        }),
        sampling: describe_sampling(&opts.sampling, 1),
        sandbox: None,
        work: None,
        seconds: t0.elapsed().as_secs_f64(),
        items_per_s: n as f64 / t0.elapsed().as_secs_f64(),
    })
}

/// Runs every completion of every problem (`completions[item]`) and scores pass@k.
pub fn score_humaneval(
    task: &GenTask,
    completions: &[Vec<String>],
    sandbox: Option<&Sandbox>,
    log: Option<&mut dyn Write>,
    sampling: &str,
) -> Result<GenResult> {
    let sandbox = match sandbox {
        Some(s) => s.clone(),
        None => Sandbox::detect()?,
    };
    ensure!(
        completions.len() == task.items.len(),
        "{} completion lists for {} problems",
        completions.len(),
        task.items.len()
    );
    let problems: Vec<&super::instruct::Problem> = task
        .items
        .iter()
        .map(|i| i.problem.as_ref().with_context(|| format!("HumanEval item {} has no problem", i.index)))
        .collect::<Result<_>>()?;
    let jobs: Vec<(usize, usize)> =
        completions.iter().enumerate().flat_map(|(i, c)| (0..c.len()).map(move |s| (i, s))).collect();
    let t0 = std::time::Instant::now();
    let outcomes: Vec<Outcome> = jobs
        .par_iter()
        .map(|&(i, s)| sandbox.run(&humaneval::program(problems[i], &completions[i][s])))
        .collect::<Result<_>>()?;
    let mut log = log;
    let mut per_problem: Vec<(usize, usize)> = vec![(0, 0); completions.len()];
    for (&(i, s), o) in jobs.iter().zip(&outcomes) {
        per_problem[i].0 += 1;
        per_problem[i].1 += o.passed() as usize;
        if let Some(w) = log.as_deref_mut() {
            let item = &task.items[i];
            let v = json!({
                "task": task.name, "subtask": "", "index": item.index, "task_id": item.id, "sample": s,
                "prompt_tokens": item.tokens.len(), "shots": 0, "completion": completions[i][s],
                "passed": o.passed(), "result": o.describe(),
            });
            humaneval::write_line(w, &v)?;
        }
    }
    let mut pass_at_k = BTreeMap::new();
    for k in [1usize, 10, 100] {
        if per_problem.iter().all(|&(n, _)| n >= k) {
            let v =
                per_problem.iter().map(|&(n, c)| humaneval::pass_at_k(n, c, k)).sum::<f64>() / per_problem.len() as f64;
            pass_at_k.insert(format!("pass@{k}"), v);
        }
    }
    let n = task.items.len();
    let secs = t0.elapsed().as_secs_f64();
    Ok(GenResult {
        task: task.name.clone(),
        metric: "pass@1".into(),
        score: pass_at_k.get("pass@1").copied().unwrap_or(f64::NAN),
        n,
        files: task.files.iter().map(|f| f.display().to_string()).collect(),
        subtasks: vec![],
        pass_at_k,
        shots: 0,
        shrunk_prompts: 0,
        over_input_limit: task.items.iter().filter(|i| i.tokens.len() > task.input_limit).count(),
        past_context: 0,
        excluded: None,
        sampling: sampling.into(),
        sandbox: Some(sandbox.describe()),
        work: None,
        seconds: secs,
        items_per_s: n as f64 / secs,
    })
}

/// Matches human-eval `samples.jsonl` completions to the task's problems (every problem in
/// scope needs at least one; completions of problems outside `--limit` are ignored).
pub fn completions_for(task: &GenTask, given: &[(String, String)]) -> Result<Vec<Vec<String>>> {
    let known: std::collections::HashSet<&str> =
        task.items.iter().filter_map(|i| i.problem.as_ref().map(|p| p.task_id.as_str())).collect();
    let mut by_id: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (id, c) in given {
        by_id.entry(id.as_str()).or_default().push(c.clone());
    }
    if let Some(unknown) = by_id.keys().find(|id| !known.contains(*id) && !id.starts_with("HumanEval/")) {
        anyhow::bail!("completion for unknown task_id `{unknown}`");
    }
    task.items
        .iter()
        .map(|i| {
            let id = i.id.as_deref().unwrap_or_default();
            by_id.get(id).cloned().ok_or_else(|| anyhow::anyhow!("no completion for `{id}`"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Sampler;
    use crate::generate::generate;
    use crate::kernels::quant::Format;
    use crate::model::ModelDtype;

    fn item(subtask: &str, index: usize, tokens: Vec<u32>, shots: usize) -> GenItem {
        GenItem {
            subtask: subtask.into(),
            index,
            id: None,
            prompt: String::new(),
            tokens,
            shots,
            target: String::new(),
            problem: None,
        }
    }

    /// Items of two subtasks with shared few-shot prefixes (one shrunk), generated in batches
    /// from a copied prefix cache: each item's tokens equal generating its whole prompt alone —
    /// also where prompt plus new tokens run past the trained context, which must equal a model
    /// whose context is long enough to begin with.
    #[test]
    fn batched_prefix_generation_equals_each_prompt_alone() {
        let short = crate::model::test_model(300, 48, 11, 3.0);
        let mut long_cfg = short.cfg.clone();
        long_cfg.max_position_embeddings = 96;
        let mut long = crate::model::Llama::new_init(long_cfg, 11);
        long.params = short.params.clone();
        let shots_a: Vec<u32> = (0..36).map(|j| (j * 7 + 3) % 300).collect();
        let shots_b: Vec<u32> = (0..12).map(|j| (j * 13 + 1) % 300).collect();
        let mut items = vec![];
        for i in 0..6u32 {
            let keep = if i == 4 { 10 } else { 36 };
            let toks: Vec<u32> = [1]
                .into_iter()
                .chain(shots_a[..keep].iter().copied())
                .chain((0..(2 + i)).map(|j| (j * 5 + i) % 300))
                .collect();
            items.push(item("a", i as usize, toks, if i == 4 { 1 } else { 3 }));
        }
        for i in 0..3u32 {
            let toks: Vec<u32> = [1]
                .into_iter()
                .chain(shots_b.iter().copied())
                .chain((0..(3 + i)).map(|j| (j * 17 + i) % 300))
                .collect();
            items.push(item("b", i as usize, toks, 3));
        }
        let task = GenTask {
            name: "bbh".into(),
            files: vec![],
            max_new: 12,
            input_limit: 2048,
            shots: 3,
            items,
            subtasks: vec!["a".into(), "b".into()],
            excluded_shared_passage: 0,
            excluded_ambiguous: 0,
        };
        let tok = crate::tokenizer::Tokenizer::llama2();
        let eos = tok.eos_id;
        for dtype in [ModelDtype::Uniform(Format::F32), ModelDtype::Uniform(Format::Q8_0)] {
            let mut model = InferenceModel::from_llama(&short, dtype).unwrap();
            let reference = InferenceModel::from_llama(&long, dtype).unwrap();
            assert!(
                generate_items(&model, &tok, &task, &GenOptions::default(), &mut |_| {}).is_err(),
                "needs positions"
            );
            model.extend_positions(task.positions_needed());
            let opts = GenOptions { max_batch: 4, ..Default::default() };
            let mut seen = 0;
            let (got, work) = generate_items(&model, &tok, &task, &opts, &mut |i| seen = i).unwrap();
            // two subtasks' prefixes computed once; item 4 (one shot) reuses only BOS + 10 tokens
            assert_eq!(work.prefix_tokens, 37 + 13);
            let own: usize = task.items.iter().map(|i| i.tokens.len()).sum::<usize>() - 5 * 37 - 11 - 3 * 13;
            assert_eq!(work.item_prompt_tokens, own);
            assert_eq!(work.generated_tokens, got.iter().map(|g| g[0].len()).sum::<usize>());
            assert_eq!(seen, task.items.len());
            let mut past = 0;
            for (it, g) in task.items.iter().zip(&got) {
                let mut s = Sampler::new(SamplingOptions::default());
                let alone = generate(&reference, &it.tokens, task.max_new, &[eos], &mut s, &mut |_| Ok(())).unwrap();
                assert_eq!(g[0], alone, "{dtype:?} item {}/{}", it.subtask, it.index);
                past += (it.tokens.len() + g[0].len() > 48) as usize;
            }
            assert!(past >= 2, "the test must run past the context: {past}");
        }
    }
}
