//! `tinyllama eval` as a library: which tasks a `--suite` or `--tasks` list names, every task read
//! and checked before any scoring, zero-shot and generative tasks run in order with a progress
//! bar, and the result tables (Markdown, as lm-eval and InstructEval print them).

use super::generative::{self, GenOptions, GenResult};
use super::harness::TaskResult;
use super::{humaneval, instruct, tasks};
use crate::model::InferenceModel;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Result};
use std::fmt::Write as _;
use std::path::Path;

/// TinyLlama's commonsense suite (the paper's Table 2), in its order.
pub const COMMONSENSE: [&str; 7] =
    ["hellaswag", "openbookqa", "winogrande", "arc_easy", "arc_challenge", "boolq", "piqa"];

/// The tasks of `suite` (`instructeval`, `commonsense`) or of a comma-separated list, each known.
pub fn task_names(suite: Option<&str>, list: &str) -> Result<Vec<String>> {
    let names: Vec<String> = match suite {
        Some("instructeval") => instruct::GEN_TASKS.iter().map(|s| s.to_string()).collect(),
        Some("commonsense") => COMMONSENSE.map(String::from).to_vec(),
        Some(other) => bail!("unknown suite `{other}`: instructeval or commonsense"),
        None => list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
    };
    ensure!(!names.is_empty(), "no tasks given (--tasks a,b,… or --suite instructeval|commonsense)");
    for n in &names {
        if !instruct::GenTask::is_generative(n) && tasks::task_files(n).is_empty() {
            let all: Vec<&str> = tasks::TASKS.iter().chain(instruct::GEN_TASKS).copied().collect();
            let hint = crate::config::suggest(n, &all).map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default();
            bail!("unknown task `{n}`{hint}; tasks: {}", all.join(", "));
        }
    }
    Ok(names)
}

/// Called after each task with the results so far.
pub type AfterEachTask<'a> = dyn FnMut(&[TaskResult], &[GenResult]) -> Result<()> + 'a;

enum Loaded {
    ZeroShot(tasks::Task),
    Generative(instruct::GenTask),
}

impl Loaded {
    fn name(&self) -> &str {
        match self {
            Loaded::ZeroShot(t) => &t.name,
            Loaded::Generative(t) => &t.name,
        }
    }
}

/// Runs `names` on `model`: every task is loaded and checked first (a bad file fails before
/// hours of scoring), then each is scored; `after_each` sees the results so far (to write them
/// as they come).
#[allow(clippy::too_many_arguments)]
pub fn run_tasks(
    model: &mut InferenceModel,
    tok: &Tokenizer,
    names: &[String],
    data_dir: &Path,
    limit: Option<usize>,
    opts: &GenOptions,
    mut log: Option<&mut dyn std::io::Write>,
    after_each: &mut AfterEachTask,
) -> Result<(Vec<TaskResult>, Vec<GenResult>)> {
    let mut loaded = vec![];
    let mut missing = vec![];
    for name in names {
        let task = if instruct::GenTask::is_generative(name) {
            instruct::load_gen_task(name, data_dir, limit, Some(tok)).map(Loaded::Generative)
        } else {
            tasks::load_task(name, data_dir, limit).map(Loaded::ZeroShot)
        };
        match task {
            Ok(t) => loaded.push(t),
            Err(e) => missing.push(format!("task {name}: {e:#}")),
        }
    }
    if !missing.is_empty() {
        let ready: Vec<&str> = loaded.iter().map(Loaded::name).collect();
        let hint = match ready.is_empty() {
            true => String::new(),
            false => format!("\nto run the tasks whose files are there: --tasks {}", ready.join(",")),
        };
        anyhow::bail!("{}{hint}", missing.join("\n"));
    }
    for t in &loaded {
        if let Loaded::Generative(g) = t {
            model.extend_positions(g.positions_needed());
        }
    }
    let sandbox = if names.iter().any(|n| n == "humaneval") { Some(humaneval::Sandbox::detect()?) } else { None };
    let (mut results, mut gen_results) = (vec![], vec![]);
    let ctx = model.cfg.max_position_embeddings;
    for task in &loaded {
        let (name, n) = match task {
            Loaded::ZeroShot(t) => (t.name.clone(), t.items.len()),
            Loaded::Generative(t) => (t.name.clone(), t.items.len()),
        };
        let bar = progress_bar(&name, n);
        match task {
            Loaded::ZeroShot(task) => {
                let r = super::harness::evaluate_task(
                    model,
                    tok,
                    task,
                    log.as_mut().map(|w| &mut **w as &mut dyn std::io::Write),
                    &mut |i| bar.set_position(i as u64),
                )?;
                results.push(r);
            }
            Loaded::Generative(task) => {
                let t0 = std::time::Instant::now();
                let (new, work) =
                    generative::generate_items(model, tok, task, opts, &mut |i| bar.set_position(i as u64))?;
                if task.name == "humaneval" {
                    bar.set_message("humaneval: running");
                }
                let mut r = generative::score_task(
                    Some(ctx),
                    tok,
                    task,
                    &new,
                    opts,
                    sandbox.as_ref(),
                    log.as_mut().map(|w| &mut **w as &mut dyn std::io::Write),
                )?;
                r.work = Some(work);
                r.seconds = t0.elapsed().as_secs_f64();
                r.items_per_s = task.items.len() as f64 / r.seconds;
                gen_results.push(r);
            }
        }
        bar.finish_and_clear();
        if let Some(w) = log.as_mut() {
            w.flush()?;
        }
        after_each(&results, &gen_results)?;
    }
    Ok((results, gen_results))
}

fn progress_bar(name: &str, n: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:18} {bar:30} {pos}/{len} items, ETA {eta}") {
        bar.set_style(style);
    }
    bar.set_message(name.to_string());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// lm-eval's table: acc and acc_norm in percent with their standard errors.
pub fn zero_shot_table(results: &[TaskResult]) -> String {
    let mut s = String::from("| task | n | acc | ± | acc_norm | ± | items/s |\n|---|---|---|---|---|---|---|\n");
    let norm = |x: Option<f64>| x.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "—".into());
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.2} | {} | {} | {:.2} |",
            r.task,
            r.n,
            100.0 * r.acc,
            100.0 * r.acc_stderr,
            norm(r.acc_norm),
            norm(r.acc_norm_stderr),
            r.items_per_s
        );
    }
    s
}

/// InstructEval-style table: one line per task, then pass@k, the sandbox, exclusions, prompts
/// over the input limit and BBH's subtasks.
pub fn generative_table(rs: &[GenResult]) -> String {
    let mut s = String::from(
        "| task | n | metric | score | items/s | shrunk prompts | past context |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {} | {} |",
            r.task,
            r.n,
            r.metric,
            100.0 * r.score,
            r.items_per_s,
            r.shrunk_prompts,
            r.past_context
        );
    }
    for r in rs {
        for (k, v) in r.pass_at_k.iter().filter(|(k, _)| k.as_str() != "pass@1") {
            let _ = writeln!(s, "{}: {k} {:.2}", r.task, 100.0 * v);
        }
        if let Some(sb) = &r.sandbox {
            let _ = writeln!(s, "{}: {}; {}", r.task, r.sampling, sb);
        }
        if let Some(e) = &r.excluded {
            let n = |k: &str| e.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let _ = writeln!(
                s,
                "{}: excluded {} items whose annotators' answers differ and {} whose passage a shot shows",
                r.task,
                n("answers_differ"),
                n("shares_a_shot_passage")
            );
        }
        if r.over_input_limit > 0 {
            let _ = writeln!(
                s,
                "{}: {} prompts longer than the input limit even without shots",
                r.task, r.over_input_limit
            );
        }
        if r.task == "bbh" {
            for st in &r.subtasks {
                let _ = writeln!(s, "  bbh/{:42} n {:4}  {:6.2}", st.subtask, st.n, 100.0 * st.score);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_and_unknown_tasks() {
        assert_eq!(task_names(Some("commonsense"), "").unwrap(), COMMONSENSE);
        assert_eq!(task_names(Some("instructeval"), "").unwrap(), instruct::GEN_TASKS);
        assert_eq!(task_names(None, " piqa, boolq ,").unwrap(), ["piqa", "boolq"]);
        let e = task_names(None, "hellaswa").unwrap_err().to_string();
        assert!(e.contains("unknown task `hellaswa`") && e.contains("did you mean `hellaswag`"), "{e}");
        assert!(task_names(Some("x"), "").is_err() && task_names(None, ",").is_err());
    }

    #[test]
    fn zero_shot_table_in_percent() {
        let r = TaskResult {
            task: "piqa".into(),
            file: "f".into(),
            n: 10,
            acc: 0.5,
            acc_stderr: 0.1,
            acc_norm: None,
            acc_norm_stderr: None,
            seconds: 5.0,
            items_per_s: 2.0,
        };
        let t = zero_shot_table(&[r]);
        assert!(t.ends_with("| piqa | 10 | 50.00 | 10.00 | — | — | 2.00 |\n"), "{t}");
    }
    /// DROP's exclusions in words, not as the JSON object the results file keeps.
    #[test]
    fn drop_exclusions_read_as_a_sentence() {
        let r = GenResult {
            task: "drop".into(),
            metric: "exact_match".into(),
            score: 0.25,
            n: 40,
            files: vec![],
            subtasks: vec![],
            pass_at_k: Default::default(),
            shots: 3,
            shrunk_prompts: 0,
            over_input_limit: 0,
            past_context: 0,
            excluded: Some(serde_json::json!({"answers_differ": 2, "shares_a_shot_passage": 1})),
            sampling: "greedy".into(),
            sandbox: None,
            work: None,
            seconds: 1.0,
            items_per_s: 40.0,
        };
        let t = generative_table(&[r]);
        assert!(
            t.contains("drop: excluded 2 items whose annotators' answers differ and 1 whose passage a shot shows"),
            "{t}"
        );
        assert!(!t.contains('{'), "{t}");
    }
}
