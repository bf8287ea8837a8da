//! The zero-shot tasks TinyLlama reports, built as lm-evaluation-harness v0.4 builds them, from
//! local JSONL files in the Hugging Face datasets' field layout. Each item becomes one
//! (context, continuation) request per choice.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const TASKS: &[&str] =
    &["hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "piqa", "mmlu"];

#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// One (context, continuation) per choice.
    pub requests: Vec<(String, String)>,
    /// The choice strings whose character length normalises `acc_norm`.
    pub choices: Vec<String>,
    pub gold: usize,
}

#[derive(Debug)]
pub struct Task {
    pub name: String,
    pub file: PathBuf,
    pub items: Vec<Item>,
    /// Whether lm-eval reports `acc_norm` for it.
    pub has_acc_norm: bool,
}

/// The files a task reads from `--data-dir`, first found wins (lm-eval's split first).
pub fn task_files(task: &str) -> &'static [&'static str] {
    match task {
        "hellaswag" => &["hellaswag_validation.jsonl"],
        "piqa" => &["piqa_validation.jsonl"],
        "boolq" => &["boolq_validation.jsonl"],
        "winogrande" => &["winogrande_xl_validation.jsonl"],
        "arc_easy" => &["arc_easy_test.jsonl", "arc_easy_test_from_requests.jsonl", "arc_easy_validation.jsonl"],
        "arc_challenge" => {
            &["arc_challenge_test.jsonl", "arc_challenge_test_from_requests.jsonl", "arc_challenge_validation.jsonl"]
        }
        "openbookqa" => {
            &["openbookqa_test.jsonl", "openbookqa_test_from_requests.jsonl", "openbookqa_validation.jsonl"]
        }
        "mmlu" => &["mmlu_test.jsonl"],
        _ => &[],
    }
}

/// lm-eval's HellaSwag `preprocess`: strip, " [title]" → ". ", drop `[...]`, "  " → " ".
pub fn hellaswag_preprocess(text: &str) -> String {
    let t = text.trim().replace(" [title]", ". ");
    // re.sub("\\[.*?\\]", "", t): shortest bracketed run without a newline
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
    while let Some(i) = rest.find('[') {
        let after = &rest[i + 1..];
        match after.find(']') {
            Some(j) if !after[..j].contains('\n') => {
                out.push_str(&rest[..i]);
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str(&rest[..i + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// Python's `str.capitalize()`: first character upper case, the rest lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(|x| x.to_lowercase())).collect(),
        None => String::new(),
    }
}

fn field<'a>(v: &'a Value, k: &str, at: &str) -> Result<&'a Value> {
    v.get(k).filter(|x| !x.is_null()).with_context(|| format!("{at}: missing field `{k}`"))
}

fn string(v: &Value, k: &str, at: &str) -> Result<String> {
    field(v, k, at)?.as_str().map(str::to_string).with_context(|| format!("{at}: field `{k}` is not a string"))
}

fn strings(v: &Value, at: &str, what: &str) -> Result<Vec<String>> {
    let arr = v.as_array().with_context(|| format!("{at}: `{what}` is not a list"))?;
    arr.iter()
        .map(|x| x.as_str().map(str::to_string).with_context(|| format!("{at}: `{what}` holds a non-string")))
        .collect()
}

/// Multiple choice with a shared context: continuation = " " + choice.
fn mc(context: String, choices: Vec<String>, gold: usize, at: &str) -> Result<Item> {
    if choices.iter().any(|c| c.is_empty()) {
        bail!("{at}: empty choice");
    }
    if gold >= choices.len() {
        bail!("{at}: label {gold} out of range for {} choices", choices.len());
    }
    Ok(Item { requests: choices.iter().map(|c| (context.clone(), format!(" {c}"))).collect(), choices, gold })
}

fn letter_index(labels: &[String], key: &str, at: &str) -> Result<usize> {
    labels
        .iter()
        .position(|l| l == key)
        .with_context(|| format!("{at}: answerKey `{key}` is not among the labels {labels:?}"))
}

/// One task item from one JSON line (`at` names file and line for errors).
pub fn build_item(task: &str, v: &Value, at: &str) -> Result<Item> {
    match task {
        "hellaswag" => {
            let ctx = format!("{} {}", string(v, "ctx_a", at)?, py_capitalize(&string(v, "ctx_b", at)?));
            let query = hellaswag_preprocess(&format!("{}: {ctx}", string(v, "activity_label", at)?));
            let endings = strings(field(v, "endings", at)?, at, "endings")?;
            let label = field(v, "label", at)?;
            let gold = label
                .as_str()
                .and_then(|s| s.parse().ok())
                .or(label.as_u64().map(|x| x as usize))
                .with_context(|| format!("{at}: label `{label}` is not an integer"))?;
            mc(query, endings.iter().map(|e| hellaswag_preprocess(e)).collect(), gold, at)
        }
        "piqa" => {
            let q = format!("Question: {}\nAnswer:", string(v, "goal", at)?);
            let gold = field(v, "label", at)?.as_u64().with_context(|| format!("{at}: label is not an integer"))?;
            mc(q, vec![string(v, "sol1", at)?, string(v, "sol2", at)?], gold as usize, at)
        }
        "boolq" => {
            let q = format!("{}\nQuestion: {}?\nAnswer:", string(v, "passage", at)?, string(v, "question", at)?);
            let gold = field(v, "answer", at)?.as_bool().with_context(|| format!("{at}: answer is not a boolean"))?;
            mc(q, vec!["no".into(), "yes".into()], gold as usize, at)
        }
        "winogrande" => {
            // partial scoring: the option goes into the context, the rest of the sentence is shared
            let sentence = string(v, "sentence", at)?;
            let idx = sentence.find('_').with_context(|| format!("{at}: sentence without `_`"))?;
            let options = [string(v, "option1", at)?, string(v, "option2", at)?];
            let gold = match string(v, "answer", at)?.as_str() {
                "1" => 0,
                "2" => 1,
                a => bail!("{at}: answer `{a}` is not 1 or 2"),
            };
            let rest = format!(" {}", sentence[idx + 1..].trim());
            Ok(Item {
                requests: options.iter().map(|o| (format!("{}{o}", &sentence[..idx]), rest.clone())).collect(),
                choices: options.to_vec(),
                gold,
            })
        }
        "arc_easy" | "arc_challenge" | "openbookqa" => {
            if v.get("query").is_some() {
                // a test split recovered from prompt-formatted requests: query, choices, gold
                let mut q = string(v, "query", at)?;
                if task == "openbookqa" {
                    // lm-eval prompts OpenBookQA with the bare question_stem
                    q = q.strip_prefix("Question: ").unwrap_or(&q).strip_suffix("\nAnswer:").unwrap_or(&q).to_string();
                }
                let gold = field(v, "gold", at)?.as_u64().with_context(|| format!("{at}: gold is not an integer"))?;
                return mc(q, strings(field(v, "choices", at)?, at, "choices")?, gold as usize, at);
            }
            let choices = field(v, "choices", at)?;
            let texts = strings(field(choices, "text", at)?, at, "choices.text")?;
            let labels = strings(field(choices, "label", at)?, at, "choices.label")?;
            let key = string(v, "answerKey", at)?;
            if task == "openbookqa" {
                let gold = letter_index(&labels, key.trim(), at)?;
                mc(string(v, "question_stem", at)?, texts, gold, at)
            } else {
                let gold = letter_index(&labels, &key, at)?;
                mc(format!("Question: {}\nAnswer:", string(v, "question", at)?), texts, gold, at)
            }
        }
        other => bail!("unknown task `{other}`"),
    }
}

fn mmlu_text(v: &Value, at: &str) -> Result<(String, usize)> {
    let choices = strings(field(v, "choices", at)?, at, "choices")?;
    if choices.len() != 4 {
        bail!("{at}: {} choices, MMLU has 4", choices.len());
    }
    let q = string(v, "question", at)?;
    let text =
        format!("{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:", q.trim(), choices[0], choices[1], choices[2], choices[3]);
    let gold = field(v, "answer", at)?.as_u64().with_context(|| format!("{at}: answer is not an integer"))? as usize;
    if gold >= 4 {
        bail!("{at}: answer {gold} out of range");
    }
    Ok((text, gold))
}

fn read_lines(path: &Path) -> Result<Vec<(String, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let at = format!("{}:{}", path.display(), i + 1);
            let v = serde_json::from_str(l).with_context(|| format!("{at}: not valid JSON"))?;
            Ok((at, v))
        })
        .collect()
}

/// Loads a task's items from `data_dir` (all of them; `limit` keeps the first N — of each
/// subject for MMLU).
pub fn load_task(task: &str, data_dir: &Path, limit: Option<usize>) -> Result<Task> {
    let files = task_files(task);
    if files.is_empty() {
        let hint = crate::config::suggest(task, TASKS).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
        bail!("unknown task `{task}`{hint}; tasks: {}", TASKS.join(", "));
    }
    let file = files
        .iter()
        .map(|f| data_dir.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("task `{task}`: none of {files:?} in {}", data_dir.display()))?;
    let lines = read_lines(&file)?;
    let take = limit.unwrap_or(usize::MAX);
    let items = if task == "mmlu" {
        // 5-shot: the first five dev questions of the same subject, lm-eval's `first_n` sampler
        let dev_path = data_dir.join("mmlu_dev.jsonl");
        let dev = read_lines(&dev_path)?;
        let mut items = vec![];
        // `limit` counts per subject, as lm-eval's does for each of MMLU's 57 subtasks
        let mut per_subject: std::collections::HashMap<String, usize> = Default::default();
        for (at, v) in &lines {
            let subject = string(v, "subject", at)?;
            let n = per_subject.entry(subject.clone()).or_default();
            if *n >= take {
                continue;
            }
            *n += 1;
            let mut ctx = format!(
                "The following are multiple choice questions (with answers) about {}.\n\n",
                subject.replace('_', " ")
            );
            let shots: Vec<&(String, Value)> =
                dev.iter().filter(|(_, d)| d["subject"].as_str() == Some(&subject)).take(5).collect();
            ensure!(
                shots.len() == 5,
                "{at}: subject `{subject}` has {} dev examples in {}, 5-shot MMLU needs 5",
                shots.len(),
                dev_path.display()
            );
            for (dat, d) in shots {
                let (t, g) = mmlu_text(d, dat)?;
                ctx += &format!("{t} {}\n\n", ["A", "B", "C", "D"][g]);
            }
            let (text, gold) = mmlu_text(v, at)?;
            ctx += &text;
            let letters: Vec<String> = ["A", "B", "C", "D"].map(String::from).to_vec();
            items.push(mc(ctx, letters, gold, at)?);
        }
        items
    } else {
        lines.iter().take(take).map(|(at, v)| build_item(task, v, at)).collect::<Result<Vec<_>>>()?
    };
    Ok(Task { name: task.to_string(), file, items, has_acc_norm: !matches!(task, "boolq" | "winogrande" | "mmlu") })
}
