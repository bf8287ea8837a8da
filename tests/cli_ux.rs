//! `generate` and `chat` as llama.cpp users expect them: short flags, the prompt from stdin or a
//! file, `--stop`, a printed random seed that repeats the run, a tokens/s line; chat commands,
//! empty lines, and a piped conversation.

mod common;

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tinyllama");

use common::{stderr_of as err, stdout_of as out};

fn run(args: &[&str], stdin: &str) -> Output {
    let o = common::tinyllama(args, stdin);
    assert!(o.status.success(), "{args:?}: {}", err(&o));
    o
}

#[test]
fn generate_takes_the_prompt_every_way_and_stops_where_asked() {
    let d = common::tmpdir("ux-gen");
    let m = common::tiny_model(&d);
    let ms = m.to_str().unwrap();
    let prompt = "It is a truth universally acknowledged";
    let long = run(&["generate", "--model", ms, "--prompt", prompt, "--max-new-tokens", "12"], "");
    let text = out(&long);
    assert!(text.starts_with(prompt));
    assert!(err(&long).contains("12 generated tokens") && err(&long).contains("tokens/s"), "{}", err(&long));
    // short flags, stdin (`-p -` and piped with no prompt flag), a prompt file: the same output
    assert_eq!(out(&run(&["generate", "-m", ms, "-p", prompt, "-n", "12"], "")), text);
    assert_eq!(out(&run(&["generate", "-m", ms, "-p", "-", "-n", "12"], prompt)), text);
    assert_eq!(out(&run(&["generate", "-m", ms, "-n", "12"], prompt)), text);
    let f = d.join("prompt.txt");
    std::fs::write(&f, prompt).unwrap();
    assert_eq!(out(&run(&["generate", "-m", ms, "--prompt-file", f.to_str().unwrap(), "-n", "12"], "")), text);
    // --stop: the text up to the stop string, which is not printed
    let cont = text[prompt.len()..].trim_end_matches('\n').to_string();
    let cut = cont.char_indices().nth(cont.chars().count() / 2).unwrap().0;
    let stop: String = cont[cut..].chars().take(2).collect();
    let at = cont.find(&stop).unwrap();
    let o = run(&["generate", "-m", ms, "-p", prompt, "-n", "12", "--stop", &stop], "");
    assert_eq!(out(&o), format!("{prompt}{}\n", &cont[..at]), "stop {stop:?}");
    // sampling without --seed: a random seed, printed; the same seed repeats the run
    let a = run(&["generate", "-m", ms, "-p", prompt, "-n", "12", "--temperature", "0.9"], "");
    let seed =
        err(&a).lines().find_map(|l| l.strip_prefix("seed: ")).unwrap().split_whitespace().next().unwrap().to_string();
    let b = run(&["generate", "-m", ms, "-p", prompt, "-n", "12", "--temperature", "0.9", "--seed", &seed], "");
    assert_eq!(out(&a), out(&b));
    assert!(!err(&b).contains("seed: "), "a given seed is not announced");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn chat_commands_over_a_pipe() {
    let d = common::tmpdir("ux-chat");
    let m = common::tiny_model(&d);
    let ms = m.to_str().unwrap();
    let o = run(
        &["chat", "-m", ms, "-n", "4"],
        "/help\nHello!\n\n/bogus\n/system Be brief.\nAnd you?\n/reset\nBye\n/exit\nnot read\n",
    );
    let e = err(&o);
    for want in
        ["no chat template", "/reset: forget", "unknown command /bogus", "(new conversation)", "(conversation cleared)"]
    {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    // the first reply is what generate gives for the Zephyr prompt
    let zephyr = "<|user|>\nHello!</s>\n<|assistant|>\n";
    let g = run(&["generate", "-m", ms, "-p", zephyr, "-n", "4"], "");
    let want = out(&g)[zephyr.len()..].trim().to_string();
    assert!(out(&o).trim_start().starts_with(&want), "{:?} does not start with {want:?}", out(&o));
    std::fs::remove_dir_all(d).unwrap();
}

/// Ctrl-C in `chat` on a real terminal (tmux) stops the reply and keeps the session: the line
/// editor's own SIGINT handler must not swallow it. The model has a long context so that a reply
/// runs for many seconds unless stopped.
#[test]
fn ctrl_c_on_a_terminal_stops_the_reply() {
    let test = "ctrl_c_on_a_terminal_stops_the_reply";
    if Command::new("tmux").arg("-V").output().map(|o| !o.status.success()).unwrap_or(true) {
        return common::skip(test, "tmux not found (apt-get install tmux)");
    }
    let d = common::tmpdir("ux-ctrl-c");
    let tiny = common::tiny_model(&d);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 32768.into();
    let cfg_path = d.join("long.json");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let m = d.join("long");
    let o = Command::new(BIN)
        .args(["bench", "generate", "--config"])
        .arg(&cfg_path)
        .arg("--write-hf")
        .arg(&m)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", err(&o));
    let socket = format!("tinyllama-test-{}", std::process::id());
    let tmux = |args: &[&str]| Command::new("tmux").args(["-L", &socket]).args(args).output().unwrap();
    let cmd = format!("'{BIN}' chat -m '{}' -n 30000; echo CHAT-EXITED $?; sleep 60", m.display());
    assert!(tmux(&["new-session", "-d", "-s", "chat", "-x", "160", "-y", "40", &cmd]).status.success());
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "chat", "-S", "-200"]).stdout).into_owned();
    let wait_for = |what: &dyn Fn(&str) -> bool, secs: u64| -> Option<String> {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(secs) {
            let s = screen();
            if what(&s) {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    };
    let result = (|| {
        wait_for(&|s| s.lines().any(|l| l.starts_with('>')), 60).ok_or_else(|| format!("no prompt:\n{}", screen()))?;
        tmux(&["send-keys", "-t", "chat", "Hello there", "Enter"]);
        // the reply has begun: text after the line typed
        let started = |s: &str| s.split("Hello there").nth(1).is_some_and(|r| r.trim().len() > 20);
        wait_for(&started, 30).ok_or_else(|| format!("the reply did not start:\n{}", screen()))?;
        tmux(&["send-keys", "-t", "chat", "C-c"]);
        let s = wait_for(&|s| s.contains("(stopped)"), 20).ok_or_else(|| "Ctrl-C did not stop the reply".to_string());
        let s = s.map_err(|e| format!("{e}:\n{}", screen()))?;
        if s.contains("CHAT-EXITED") {
            return Err(format!("Ctrl-C ended the session:\n{s}"));
        }
        // the session goes on: a command is answered, /exit quits with 0
        tmux(&["send-keys", "-t", "chat", "/exit", "Enter"]);
        wait_for(&|s| s.contains("CHAT-EXITED 0"), 20).ok_or_else(|| format!("no clean exit:\n{}", screen()))?;
        Ok::<(), String>(())
    })();
    tmux(&["kill-server"]);
    std::fs::remove_dir_all(d).unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
}
